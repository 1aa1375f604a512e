"""The export stage (`hone export`, `hone.export(...)`): a finished run to the runtimes people already use,
each artifact verified against the run's model. Named `exporting`, not `export`, so that importing it does
not replace the front door's `hone.export` function (docs/decisions.md, as with training/ and evaluation/).

    formats.py    FORMATS: every format, its quants and tolerances, the runs it takes, writer and verifier
    run.py        export_run: the procedure, top to bottom
    verify.py     check prompts, the run's reference answers, the comparison and its table
    hf.py         `hf` (merged safetensors) and `peft` (the adapter), with model cards
    gguf.py       `gguf` and `gguf-lora` through llama.cpp's converter (and its compiled quantizer)
    ollama.py     `ollama`: the GGUF and a Modelfile whose TEMPLATE is proved against the chat template
    gotemplate.py the small Go-template evaluator that proof runs on
"""
from hone.exporting.formats import FORMATS, Format, Quant
from hone.exporting.run import ExportRejected, ExportResult, export_run

__all__ = ["FORMATS", "ExportRejected", "ExportResult", "Format", "Quant", "export_run"]
