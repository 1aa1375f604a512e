"""`hone export`: a finished run in a runtime's format, verified before it is called done.

find the run -> check the format and quant fit it (one-line refusals, before any model loads) -> load the
run's own model -> its greedy answers on check prompts -> write into a temporary folder beside the target
-> load the artifact back with its runtime and compare -> export.json -> rename into place -> record the
export on the run. An artifact that fails its verification is never put in place: it is moved to
`<target>.rejected` for inspection and the export fails with the figures that failed.
"""
from __future__ import annotations

import importlib.metadata
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from hone import atomic
from hone.config import load_config
from hone.errors import UserError
from hone.exporting.formats import Format, Quant, pick_format, why_not
from hone.exporting.gguf import CONVERTER, tool_missing
from hone.exporting.job import ExportJob
from hone.exporting.verify import PROMPTS, Verification, check_prompts, print_verification, reference_outputs
from hone.methods.artifact import is_tuned_artifact, load_run_model, read_method
from hone.registry.fingerprint import file_sha256, folder_files
from hone.registry.runs import find_run, read_record, update_record
from hone.version import __version__


class ExportRejected(UserError):
    """The artifact was written but does not answer like the run's model, so it was not put in place."""


@dataclass
class ExportResult:
    run: Path
    format: str
    quant: str
    folder: Path
    manifest: dict                 # export.json
    verification: Verification

    @property
    def files(self) -> list[dict]:
        return self.manifest["files"]

    def to_json(self) -> dict:
        return {"run": str(self.run), "folder": str(self.folder), **self.manifest}


def export_run(ref: str | Path, format: str = "gguf", quant: str | None = None, output: str | Path | None = None,
               force: bool = False, prompts: int = PROMPTS, console: Console | None = None) -> ExportResult:
    """Export the run `ref` (folder, id, NAME:VERSION, NAME@TAG or 'latest') as `format`/`quant`."""
    console = console or Console(stderr=True)
    started = time.monotonic()
    # 1. The run, the format, and whether one fits the other.
    run = find_run(ref)
    fmt, q = pick_format(format, quant)
    record = read_record(run)
    method = trained_method(run, record)
    if reason := why_not(fmt, q, method, record.get("head")):
        raise UserError(f"cannot export {run.name} ({method}) as {fmt.name} {q.name}: {reason}")
    if q.tool != "torch" and (missing := tool_missing(q.tool)):
        raise UserError(f"cannot export {run.name} as {fmt.name} {q.name}: {missing}")
    target = output_folder(run, fmt, q, output, force)
    console.print(f"[bold]hone export[/bold] {run.name} ({method}) as {fmt.name} {q.name} -> {target}",
                  highlight=False)

    # 2. The run's own model and its greedy answers: what the artifact must reproduce.
    with console.status("  loading the run's model (an adapter is merged in fp32)"):
        model, tokenizer = load_run_model(run)
    labels, texts = check_prompts(load_config(run / "config.yaml"), record.get("system_prompt"), tokenizer, prompts)
    reference = reference_outputs(model, tokenizer, labels, texts, console)
    job = ExportJob(run, record, method, fmt, q, model, tokenizer, reference, console, target)

    # 3. Write beside the target, load it back and compare; only a verified artifact is put in place.
    with atomic.folder(target) as tmp:
        written = time.monotonic()
        files = fmt.write(job, tmp)
        verified = time.monotonic()
        verification = fmt.verify(job, tmp)
        print_verification(verification, console)
        seconds = {"write": round(verified - written, 1), "verify": round(time.monotonic() - verified, 1),
                   "total": round(time.monotonic() - started, 1)}
        manifest = export_manifest(job, tmp, files, verification, seconds)
        atomic.write_json(tmp / "export.json", manifest)
        if not verification.passed:
            rejected = target.with_name(target.name + ".rejected")
            with atomic.folder(rejected) as holder:
                os.replace(tmp, holder / "artifact")
            raise ExportRejected(f"{fmt.name} {q.name} export of {run.name} failed verification: "
                                 f"{verification.why()}; nothing was written to {target} (the rejected files "
                                 f"are in {rejected}/artifact for inspection)")

    # 4. On the run's record, so `hone runs show` lists it.
    record_export(run, target, manifest)
    console.print(f"  exported to {target} ({_size(manifest)}) in {seconds['total']:.0f} s", highlight=False)
    return ExportResult(run, fmt.name, q.name, target, manifest, verification)


def trained_method(run: Path, record: dict) -> str:
    """The method that trained the run, from its saved artifact; a one-line error when there is none."""
    if is_tuned_artifact(run / "adapter"):
        return read_method(run / "adapter")["method"]
    if (run / "model" / "config.json").is_file():
        return "full"
    raise UserError(f"{run.name} has no trained model to export (status: {record.get('status', 'unknown')}); "
                    "finish or resume it first: hone train --resume " + run.name)


def output_folder(run: Path, fmt: Format, quant: Quant, output: str | Path | None, force: bool) -> Path:
    """Where the export goes (default RUN/exports/FORMAT-QUANT); an existing, non-empty folder needs --force."""
    target = Path(output).expanduser() if output else run / "exports" / f"{fmt.name}-{quant.name}"
    if target.resolve() == run.resolve() or run.resolve().is_relative_to(target.resolve()):
        raise UserError(f"--output {target} would replace the run folder itself; give the export a folder of its own")
    if target.exists() and not force and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target} exists and is not empty; pass --force to replace it, or another --output")
    return target


def export_manifest(job: ExportJob, folder: Path, files: list[Path], verification: Verification,
                    seconds: dict) -> dict:
    """export.json: what was written (every file with size and sha256), from what, and how it compared."""
    main = [p.relative_to(folder).as_posix() for p in files]
    return {
        "format": job.format.name, "quant": job.quant.name, "runtime": job.format.runtime,
        "run": job.run.name, "run_path": str(job.run.resolve()), "method": job.method, "base_model": job.base,
        "objective": job.record.get("objective"), "hone_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "main_files": main,
        "files": [{"path": p.relative_to(folder).as_posix(), "bytes": p.stat().st_size, "sha256": file_sha256(p)}
                  for p in folder_files(folder)],
        "verification": verification.to_json(),
        "tolerance": {"max_logit_delta": job.quant.max_logit_delta, "greedy_share": job.quant.greedy_share},
        "seconds": seconds, "libraries": _libraries(),
    }


def record_export(run: Path, target: Path, manifest: dict) -> None:
    """Add (or replace, for the same folder) the export in run.json's `exports` list."""
    main = next((f for f in manifest["files"] if f["path"] == manifest["main_files"][0]), manifest["files"][0])
    entry = {"format": manifest["format"], "quant": manifest["quant"], "path": str(target.resolve()),
             "file": main["path"], "bytes": sum(f["bytes"] for f in manifest["files"]), "sha256": main["sha256"],
             "verification": {k: manifest["verification"][k] for k in ("runtime", "max_logit_delta", "greedy_agree",
                                                                       "near_ties", "prompts", "tolerance", "passed")},
             "created_at": manifest["created_at"]}
    exports = [e for e in read_record(run).get("exports", []) if e.get("path") != entry["path"]]
    update_record(run, exports=exports + [entry])


def _size(manifest: dict) -> str:
    return f"{sum(f['bytes'] for f in manifest['files']) / 1e6:,.1f} MB"


def _libraries() -> dict:
    found = {}
    for name in ("torch", "transformers", "peft", "gguf", "llama-cpp-python"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    for dist in importlib.metadata.distributions(path=[str(CONVERTER.parent)]):  # outside hone's import path
        found[dist.metadata["Name"]] = dist.version
    return found
