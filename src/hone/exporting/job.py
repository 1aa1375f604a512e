"""What every format's writer and verifier is handed: the run, its own model, and the reference answers."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from hone.exporting.verify import Reference

if TYPE_CHECKING:
    from hone.exporting.formats import Format, Quant


@dataclass
class ExportJob:
    run: Path
    record: dict                  # run.json
    method: str                   # what the run trained (methods/registry.py)
    format: Format
    quant: Quant
    model: Any                    # the run's own model, fp32 (an adapter merged where the method merges)
    tokenizer: Any
    reference: Reference
    console: Console
    output: Path                  # where the export will stand once verified

    @property
    def name(self) -> str:
        """The run's name for file metadata: the id of its folder."""
        return self.run.name

    @property
    def base(self) -> str:
        return self.record.get("base_model") or ""

    @property
    def system_prompt(self) -> str | None:
        """The system message the run was trained with (hone adds it to prompts that bring none)."""
        return self.record.get("system_prompt")

    @property
    def artifact(self) -> Path:
        """What training saved: `adapter/`, or `model/` for full fine-tuning."""
        return self.run / ("model" if (self.run / "model" / "config.json").is_file() else "adapter")
