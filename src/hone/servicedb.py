"""The service database's address and sessions, shared by the tables that live in it: the server's own (keys, files,
jobs: serve/db.py) and its traffic (captures, feedback: monitor/traffic.py, a stage below the server).

SQLite under the hone home by default (`<home>/serve.db`), any SQLAlchemy URL with `--db` / `HONE_DB`.
"""
from __future__ import annotations

import importlib.util
import os

from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from hone.errors import UserError
from hone.home import hone_home

_makers: dict[tuple[str, int], sessionmaker] = {}


def database_url(url: str | None = None) -> str:
    """`--db`, else HONE_DB, else SQLite in the hone home (the run registry's rule; its own file)."""
    url = url or os.environ.get("HONE_DB") or f"sqlite:///{hone_home() / 'serve.db'}"
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg2") is None:
        # SQLAlchemy's default driver is psycopg2; hone ships psycopg 3
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as given
        return url


def open_session(url: str | None, metadata: MetaData) -> Session:
    """A session on the service database at `url` (database_url's rule); `metadata`'s tables are created on first
    use. One engine per URL and table set; a database that cannot be opened is a one-line UserError."""
    url = database_url(url)
    key = (url, id(metadata))
    if key not in _makers:
        try:
            engine = create_engine(url, **({"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {}))
            if url.startswith("sqlite"):
                event.listen(engine, "connect", _sqlite_pragmas)
            try:
                metadata.create_all(engine)
            except OperationalError as exc:
                # two processes starting at once (two `hone worker`s) both found no table, one created it first:
                # looking again finds it
                if "already exists" not in str(exc):
                    raise
                metadata.create_all(engine)
        except (SQLAlchemyError, ImportError) as exc:
            raise UserError(f"cannot open the service database at {safe_url(url)}: {exc.__class__.__name__}: "
                            f"{str(exc).splitlines()[0]}", field="db") from None
        _makers[key] = sessionmaker(engine, expire_on_commit=False)
    return _makers[key]()


def _sqlite_pragmas(connection, _record) -> None:
    # WAL: the server reads while workers write captures and `hone monitor` reads them; busy_timeout makes
    # writers wait instead of failing.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
