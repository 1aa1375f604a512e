"""/v1/files: upload (checked with hone's data validator), list, retrieve, delete, content.

Bytes live under <home>/serve/files/<file id><ext>: the id is generated, the extension comes from a
fixed list (hone's readers choose the parser by it), so a client's filename never becomes a path.
A file with any bad record is refused with a 400 that names its line and field, the way
`hone data check` reports it, so a job never starts on data that would be silently skipped.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Literal, Optional

from fastapi import APIRouter, Depends, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from hone.errors import UserError
from hone.serve import db
from hone.serve.auth import current_org
from hone.serve.errors import APIError, error_responses, not_found

EXTENSIONS = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
PURPOSES = ("fine-tune",)
router = APIRouter(prefix="/v1", tags=["files"], responses=error_responses())
MIN_EXPIRY, MAX_EXPIRY = 3600, 2592000   # OpenAI's expires_after range: an hour to 30 days
log = logging.getLogger("hone.serve")


def file_object(row: db.File) -> dict:
    return {"id": row.id, "object": "file", "bytes": row.bytes, "created_at": row.created_at,
            "filename": row.filename, "purpose": row.purpose, "status": "processed",
            "expires_at": row.expires_at, "status_details": None}


def stored_path(row: db.File) -> Path:
    return db.state_dir("files") / row.stored


def get_file(s: Session, org: str, file_id: str, param: str = "id") -> db.File:
    """The org's file, or 404 (also when it belongs to another org or has expired)."""
    row = s.scalar(select(db.File).where(db.File.id == file_id, db.File.org == org))
    if row is None or (row.expires_at is not None and row.expires_at <= db.now()):
        raise not_found("File", file_id, param)
    return row


def _extension(filename: str | None) -> str:
    suffix = Path(filename or "").suffix.lower()
    return suffix if suffix in EXTENSIONS else ".jsonl"


def _copy_limited(upload: UploadFile, target: Path, limit: int) -> int:
    """Copy the upload to `target`, stopping with a 413 as soon as it passes `limit` bytes."""
    size = 0
    with target.open("wb") as out:
        while chunk := upload.file.read(1 << 20):
            size += len(chunk)
            if size > limit:
                raise APIError(413, f"File is larger than this server's limit of {limit / 2**20:g} MB.",
                               param="file", code="file_too_large")
            out.write(chunk)
    return size


def check_training_data(path: Path, filename: str) -> tuple[str | None, int]:
    """(shape, examples) of a data file, or a 400 naming the first bad line and field."""
    from hone.data.load import iter_records
    from hone.data.problems import ValidationReport

    report = ValidationReport()
    try:
        n = sum(1 for _ in iter_records(path, report=report))
    except UserError as exc:
        message = str(exc).replace(str(path), filename)
        raise APIError(400, f"Invalid file format. {message}", param="file", code="invalid_file_format") from None
    except (ValueError, RecursionError) as exc:
        # A file the reader cannot take apart (a 5,000-digit integer passes Python's int-string limit,
        # nesting its recursion limit) is the client's to fix: a 400 saying how far it read, never a 500.
        log.warning("upload %s: the data reader raised %s", filename, type(exc).__name__, exc_info=exc)
        raise APIError(400, f"Invalid file format. The data cannot be read after its first {report.records} "
                       f"record(s): {type(exc).__name__}: {str(exc)[:200]}", param="file",
                       code="invalid_file_format") from None
    if report.problems:
        first = report.first()
        assert first is not None  # report.problems > 0
        field = f", field {first.field!r}" if first.field else ""
        more = (f" ({report.problems - 1} more problems; `hone data check` lists them all)"
                if report.problems > 1 else "")
        raise APIError(400, f"Invalid file format. Line {first.line}{field}: {first.message}{more}",
                       param="file", code="invalid_file_format")
    if n == 0:
        raise APIError(400, "Invalid file format. The file holds no examples.", param="file",
                       code="invalid_file_format")
    return report.shape, n


def absent_not_null(schema: dict) -> None:
    """A form field left out is None; a multipart form has no null to send, so the schema offers none."""
    options = [option for option in schema.pop("anyOf", []) if option.get("type") != "null"]
    if options:
        schema.update(options[0])


@router.post("/files", responses=error_responses(413))
def upload_file(request: Request, file: UploadFile,
                purpose: str = Form(..., json_schema_extra={"enum": list(PURPOSES)}),
                expires_anchor: Optional[Literal["created_at"]] = Form(None, alias="expires_after[anchor]",
                                                                       json_schema_extra=absent_not_null),
                expires_seconds: Optional[int] = Form(None, alias="expires_after[seconds]", ge=MIN_EXPIRY,
                                                      le=MAX_EXPIRY, json_schema_extra=absent_not_null),
                org: str = Depends(current_org)) -> dict:
    """Upload a training or validation file; it is validated before it is stored."""
    if purpose not in PURPOSES:
        raise APIError(400, f"purpose {purpose!r} is not supported here; hone serve stores 'fine-tune' files.",
                       param="purpose")
    created, expires_at = db.now(), None
    if expires_seconds is not None:   # anchor and range: checked by FastAPI from the signature
        expires_at = created + expires_seconds
    settings = request.app.state.settings
    file_id = db.new_id("file-")
    stored = file_id + _extension(file.filename)
    folder = db.state_dir("files")
    # The temporary copy keeps the extension: hone's readers pick the parser by it.
    tmp = folder / f".upload-{file_id}{_extension(file.filename)}"
    try:
        size = _copy_limited(file, tmp, int(settings.max_upload_mb * 2**20))
        shape, examples = check_training_data(tmp, file.filename or "upload")
        shutil.move(tmp, folder / stored)
    finally:
        tmp.unlink(missing_ok=True)
    row = db.File(id=file_id, org=org, filename=Path(file.filename or "upload").name[:255], stored=stored,
                  purpose=purpose, bytes=size, created_at=created, expires_at=expires_at, shape=shape,
                  examples=examples)
    with db.session(settings.db) as s:
        s.add(row)
        s.commit()
    return file_object(row)


@router.get("/files", responses=error_responses(404))
def list_files(request: Request, after: Optional[str] = None, limit: int = Query(10000, ge=1, le=10000),
               order: str = Query("desc", pattern="^(asc|desc)$"), purpose: Optional[str] = None,
               org: str = Depends(current_org)) -> dict:
    with db.session(request.app.state.settings.db) as s:
        query = select(db.File).where(db.File.org == org)
        query = query.where((db.File.expires_at.is_(None)) | (db.File.expires_at > db.now()))
        if purpose:
            query = query.where(db.File.purpose == purpose)
        if after:
            cursor = get_file(s, org, after, "after")
            query = query.where(db.File.seq < cursor.seq if order == "desc" else db.File.seq > cursor.seq)
        query = query.order_by(db.File.seq.desc() if order == "desc" else db.File.seq.asc()).limit(limit + 1)
        rows = s.scalars(query).all()
    data = [file_object(r) for r in rows[:limit]]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(rows) > limit}


@router.get("/files/{file_id}", responses=error_responses(404))
def retrieve_file(request: Request, file_id: str, org: str = Depends(current_org)) -> dict:
    with db.session(request.app.state.settings.db) as s:
        return file_object(get_file(s, org, file_id))


@router.delete("/files/{file_id}", responses=error_responses(404))
def delete_file(request: Request, file_id: str, org: str = Depends(current_org)) -> dict:
    with db.session(request.app.state.settings.db) as s:
        row = get_file(s, org, file_id)
        stored_path(row).unlink(missing_ok=True)
        s.delete(row)
        s.commit()
    return {"id": file_id, "object": "file", "deleted": True}


@router.get("/files/{file_id}/content", responses=error_responses(404, 500))
def file_content(request: Request, file_id: str, org: str = Depends(current_org)):
    with db.session(request.app.state.settings.db) as s:
        row = get_file(s, org, file_id)
    path = stored_path(row)
    if not path.is_file():
        raise APIError(500, f"the bytes of {file_id} are missing from the server's storage", "server_error")
    return FileResponse(path, media_type="application/octet-stream", filename=row.filename)
