"""Saving what a method trained, and putting it back onto a fresh base.

    peft methods (lora, dora, qlora, ia3, prompt/prefix tuning)  adapter/ in peft's format
    freeze, bitfit, adapters, probe                              adapter/trained.safetensors
    full                                                         model/ (a whole transformers model)

Every folder also holds hone_method.json: the method and its settings, so a reload rebuilds the same
structure (bottleneck adapters, the quantize-dequantize round trip of a qlora base) before loading.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from hone import atomic
from hone.config import MethodSection
from hone.errors import UserError
from hone.methods.registry import METHODS
from hone.methods.structure import unwrap
from hone.registry.runs import read_record

METHOD_FILE = "hone_method.json"
TENSORS_FILE = "trained.safetensors"


def artifact_folder_name(cfg: MethodSection) -> str:
    """'model' for full fine-tuning (a whole model), 'adapter' for everything trained on top of a base."""
    return "model" if METHODS[cfg.name].saves == "model" else "adapter"


def save_tuned(model: nn.Module, cfg: MethodSection, folder: Path) -> None:
    """Write what `cfg.name` trained into `folder` (normally a temporary folder renamed by the caller)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    saves = METHODS[cfg.name].saves
    if saves in ("peft", "model"):
        model.save_pretrained(folder)  # type: ignore[operator]  # torch types module attributes as Tensor | Module
    else:
        trained = {name: p.detach().float().contiguous().cpu()
                   for name, p in model.named_parameters() if p.requires_grad}
        save_file(trained, folder / TENSORS_FILE)
    info = {"method": cfg.name, "saved": saves, "settings": cfg.model_dump(mode="json")}
    (folder / METHOD_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")


def read_method(folder: Path) -> dict:
    """The hone_method.json of a saved artifact; a bare peft adapter counts as lora."""
    folder = Path(folder)
    if (folder / METHOD_FILE).is_file():
        return json.loads((folder / METHOD_FILE).read_text(encoding="utf-8"))
    if (folder / "adapter_config.json").is_file():
        return {"method": "lora", "saved": "peft", "settings": {"name": "lora"}}
    if (folder / "config.json").is_file():
        return {"method": "full", "saved": "model", "settings": {"name": "full"}}
    raise UserError(f"{folder} holds no trained model (no {METHOD_FILE}, adapter or model files)")


def is_tuned_artifact(folder: Path) -> bool:
    folder = Path(folder)
    return any((folder / name).is_file() for name in (METHOD_FILE, "adapter_config.json", "config.json"))


def load_tuned(base, folder: Path, device: str = "cpu", attention: str | None = None,
               build: Callable[[], nn.Module] | None = None) -> nn.Module:
    """The tuned model in eval mode: `base` rebuilt as the method saw it, with `folder`'s weights on it.

    `build` makes the fresh base (default: the causal LM `base`); objectives with their own heads pass
    theirs (for full fine-tuning, `folder` is a whole model and `build` must load it from there).
    Mergeable adapters (LoRA, DoRA, IA3) are merged in fp32 into a plain model.
    """
    from hone.models.load import load_causal_lm, merged_copy

    folder = Path(folder)
    info = read_method(folder)
    cfg = MethodSection.model_validate(info["settings"])
    if info["saved"] == "model":
        return (build() if build else load_causal_lm(str(folder), device, attention=attention)).eval()
    model = build() if build else load_causal_lm(base, device, attention=attention)
    if cfg.name == "qlora":
        from hone.methods.quantized import round_trip_base

        round_trip_base(model, cfg.quantize)
    if info["saved"] == "peft":
        from peft import PeftModel

        from hone.methods.peft_methods import quiet_peft_warnings

        with quiet_peft_warnings():
            tuned = PeftModel.from_pretrained(model, str(folder))
        if tuned.active_peft_config.is_prompt_learning:
            return tuned.eval()  # virtual tokens cannot be merged into weights
        if type(unwrap(tuned)).__name__.endswith("ForCausalLM"):
            return merged_copy(tuned)
        return tuned.merge_and_unload().eval()
    if cfg.name == "adapters":
        from hone.methods.bottleneck import add_adapters

        add_adapters(model, cfg.adapter_size)
    _load_tensors(model, folder / TENSORS_FILE)
    return model.eval()


def load_trainable_adapter(model: nn.Module, folder: Path) -> nn.Module:
    """`model` with the peft adapter in `folder` on it, its weights trainable: training goes on from them
    (hone train --continue) instead of from a fresh adapter."""
    from peft import PeftModel

    from hone.methods.peft_methods import quiet_peft_warnings

    with quiet_peft_warnings():
        return PeftModel.from_pretrained(model, str(folder), is_trainable=True)


def _load_tensors(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    weights = load_file(str(path))
    params = dict(model.named_parameters())
    missing = [name for name in weights if name not in params]
    if missing:
        raise UserError(f"{path}: {len(missing)} trained tensors do not fit this base model "
                        f"(first: {missing[0]}); was it trained on another model?")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].dtype))


def load_run_model(run: Path, device: str = "cpu"):
    """(model, tokenizer) for a finished run: base + adapter merged, or the fully tuned model."""
    from hone.models.load import load_causal_lm, load_tokenizer

    run = Path(run)
    record = read_record(run)
    if is_tuned_artifact(run / "adapter"):  # any method but full: rebuilt per method onto a fresh base
        return load_tuned(record["base_model"], run / "adapter", device), load_tokenizer(record["base_model"])
    if (run / "model" / "config.json").is_file():
        return load_causal_lm(str(run / "model"), device), load_tokenizer(str(run / "model"))
    raise UserError(f"{run} has no trained model yet (status: {record.get('status', 'unknown')})")


def tuned_model_folder(run: Path) -> Path:
    """A plain model folder holding a finished run's tuned model, to train on top of it.

    A fully tuned run already has one (`model/`); an adapter run gets its adapter merged into a fresh
    copy of its base once, written atomically to `merged/`."""
    run = Path(run)
    for folder in (run / "model", run / "merged"):
        if (folder / "config.json").is_file():
            return folder
    model, tokenizer = load_run_model(run)
    with atomic.folder(run / "merged") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return run / "merged"
