"""Export a finished run to the runtimes people already use, each artifact verified against the run's model.

    formats.py    FORMATS: every format, its quants and tolerances, the runs it takes, writer and verifier
    run.py        export_run: the procedure, top to bottom
    verify.py     check prompts, the run's reference answers, the comparison and its table
    hf.py         `hf` (merged safetensors) and `peft` (the adapter), with model cards
    gguf.py       `gguf` and `gguf-lora` through llama.cpp's converter (and its compiled quantizer)
    ollama.py     `ollama`: the GGUF and a Modelfile whose TEMPLATE is proved against the chat template
    gotemplate.py the small Go-template evaluator that proof runs on
"""
import sys
import types

from hone.export.formats import FORMATS, Format, Quant
from hone.export.run import ExportRejected, ExportResult, export, export_run

__all__ = ["FORMATS", "ExportRejected", "ExportResult", "Format", "Quant", "export", "export_run"]


class _CallableStage(types.ModuleType):
    """Importing this package sets `hone.export` to the package, hiding the front door's `hone.export(...)`
    function of the same name; so the package answers the same call with the same function."""

    def __call__(self, *args, **kwargs) -> ExportResult:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableStage
