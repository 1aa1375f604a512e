"""`hf` (a whole transformers model folder) and `peft` (the adapter alone), each with a model card.

`hf` is what transformers' `from_pretrained` and vLLM's `--model` load: the run's model with adapters
merged in fp32, saved as safetensors in fp32 or fp16 with the tokenizer, its chat template and the
generation config. bf16 is refused for a merged delta: it keeps a LoRA delta with relative error 0.64
(fp16: 0.09), max |Δlogit| 2.4 against 0.11 (field notes §7). Prompt and prefix tuning have nothing to
merge: their `hf` folder is the base model with the virtual tokens beside it in `adapter/` (peft).
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch

from hone.exporting.job import ExportJob
from hone.exporting.verify import Verification, compare_model, tokenizer_checks
from hone.version import __version__

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}


def save_model_folder(job: ExportJob, folder: Path, dtype: torch.dtype = torch.float32) -> None:
    """The run's model as a transformers folder in `dtype` (the base only, for virtual-token methods)."""
    model = job.model.get_base_model() if hasattr(job.model, "get_base_model") else job.model
    if dtype != torch.float32:
        model = copy.deepcopy(model).to(dtype)  # the fp32 model stays the reference
    if job.tokenizer.eos_token_id is not None:   # generation stops where training taught it to
        model.generation_config.eos_token_id = job.tokenizer.eos_token_id
        model.generation_config.pad_token_id = job.tokenizer.pad_token_id
    model.save_pretrained(folder)
    job.tokenizer.save_pretrained(folder)


def write_hf(job: ExportJob, folder: Path) -> list[Path]:
    with job.console.status(f"  writing the model as safetensors ({job.quant.name})"):
        save_model_folder(job, folder, DTYPES[job.quant.name])
        if hasattr(job.model, "get_base_model"):  # virtual tokens: the peft adapter beside the base
            job.model.save_pretrained(folder / "adapter")
    (folder / "README.md").write_text(model_card(job, HF_USAGE), encoding="utf-8")
    return sorted(folder.glob("*.safetensors")) + sorted((folder / "adapter").glob("*.safetensors"))


def verify_hf(job: ExportJob, folder: Path) -> Verification:
    """Loaded back by transformers (weights as written, computed in fp32), and peft for virtual tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with job.console.status("  loading the export back with transformers"):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        if (folder / "adapter" / "adapter_config.json").is_file():
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(folder / "adapter")).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
    checks = tokenizer_checks(tokenizer, job.tokenizer, job.reference)
    return compare_model(job.reference, model, job.tokenizer, "transformers", job.quant, job.console, checks)


def write_peft(job: ExportJob, folder: Path) -> list[Path]:
    """The adapter folder as training saved it (peft's format; hone's own tensors for bottleneck adapters)."""
    for path in job.artifact.iterdir():
        target = folder / path.name
        shutil.copytree(path, target) if path.is_dir() else shutil.copy2(path, target)
    (folder / "README.md").write_text(model_card(job, PEFT_USAGE), encoding="utf-8")
    return sorted(folder.glob("*.safetensors"))


def verify_peft(job: ExportJob, folder: Path) -> Verification:
    """Loaded back onto a fresh base as hone loads any adapter (peft's `PeftModel` for peft methods)."""
    from hone.methods.artifact import load_tuned

    with job.console.status("  loading the adapter back onto a fresh base model"):
        model = load_tuned(job.base, folder)
    return compare_model(job.reference, model, job.tokenizer, "peft on the base model", job.quant, job.console)


HF_USAGE = """```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{folder}")
tokenizer = AutoTokenizer.from_pretrained("{folder}")
```
vLLM: `vllm serve {folder}`. hone: `hone chat {folder}` works on any model folder too."""

PEFT_USAGE = """```python
from transformers import AutoModelForCausalLM
from peft import PeftModel
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("BASE"), "{folder}")
```
BASE is the base model below (for hone's catalogue models, its safetensors folder under the hone home).
Bottleneck adapters (method `adapters`) are hone's own format: load them with
`hone.methods.load_tuned(BASE, "{folder}")`."""


def model_card(job: ExportJob, usage: str) -> str:
    """README.md for a model folder: where it came from, how it was checked, how to load it."""
    results = job.record.get("results") or {}
    scores = "".join(f"| {key} | {results[key]:.4g} |\n" for key in ("base_score", "tuned_score", "val_loss")
                     if isinstance(results.get(key), (int, float)))
    library = "peft" if job.format.name == "peft" else "transformers"
    return (f"---\nlibrary_name: {library}\nbase_model: {job.base}\ntags: [hone, {job.method}]\n---\n\n"
            f"# {job.name}\n\nTuned with hone {__version__}: method `{job.method}`, objective "
            f"`{job.record.get('objective', '?')}`, base model `{job.base}`; exported as `{job.format.name}` "
            f"({job.quant.name}).\n\n"
            + (f"| metric | value |\n| --- | --- |\n{scores}\n" if scores else "")
            + "The export was checked against the run's own model before it was written: see `export.json`.\n\n"
            + "## Load it\n\n" + usage.format(folder=job.output) + "\n")
