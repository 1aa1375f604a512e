"""`hone train --continue RUN --data new.jsonl`: the next version of a tuned model, from where it stopped.

    the parent run (folder, NAME:VERSION, NAME@TAG) -> its base model, method and settings -> its trained
    weights as the start (a peft adapter loaded trainable; a full fine-tune's model/ as the base) -> its
    training data replayed at CONTINUE_REPLAY of the mix -> its test split kept as the test -> the new run
    registered as the next version of its name, with the parent as its parent.

The base scores in the new run are the parent's (its adapter is on before step 4 of objectives/sft.py),
so "base vs tuned" and the forgetting probe measure this version against the one it continues.
"""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from hone.config import MethodSection, RunConfig, load_config
from hone.errors import UserError
from hone.methods.artifact import read_method
from hone.registry import store
from hone.registry.runs import find_run, read_record

# Share of the training mix drawn from the parent's own training data. Measured on the demo task
# (docs/decisions.md, "Continue training"): at 0, 0.25, 0.5 on 40 held-out Spanish orders: 0.70, 0.725, 0.525;
# on 40 original test items: 0.85, 0.825, 0.85 (the parent: 0.275 and 0.70).
CONTINUE_REPLAY = 0.25


# How the parent was trained carries over unless the command says otherwise: the next version learns at the
# rate and batch the last one did (the demo trains its LoRA at lr 1e-3, 5x LoRA's default).
INHERITED_TRAINING = ("lr", "batch_size", "micro_batch_size", "precision")


def on_continued_run(config: RunConfig, console: Console) -> RunConfig:
    """`model.continue_from` resolved into the settings of a run that starts from the parent's weights.
    A config that already names its parent (a resumed run) passes unchanged."""
    ref = config.model.continue_from
    if not ref or config.model.parent:
        return config
    if config.is_set("model.name"):
        raise config.error(f"--continue {ref} starts from that run's own base and weights; drop --model "
                           f"{config.model.name}", "model.name")
    parent = find_run(ref)
    record = read_record(parent)
    if record.get("status") != "succeeded":
        raise UserError(f"--continue {ref}: the run {parent} has not succeeded (status: "
                        f"{record.get('status', 'unknown')}); finish it first (hone train --resume {parent})")
    parent_config = load_config(parent / "config.yaml")
    if record.get("objective") not in (None, "sft"):
        raise UserError(f"--continue {ref}: the run trained objective {record.get('objective')}; --continue "
                        "trains chat models (sft): train on top of it with --model REF instead")
    if config.objective not in ("auto", "sft"):
        raise config.error(f"--continue trains chat models (objective sft), not {config.objective}",
                           "objective")
    method, base = _start(parent, record, ref)
    if config.is_set("method.name") and config.method.name != method.name:
        raise config.error(f"--continue {ref}: the run was trained with {method.name}, so its next version is "
                           f"too (drop --method {config.method.name})", "method.name")
    data = config.data.model_copy(update={
        "test": config.data.test if config.is_set("data.test") else parent_config.data.test,
        "system_prompt": config.data.system_prompt if config.is_set("data.system_prompt")
        else parent_config.data.system_prompt,
        "max_length": config.data.max_length if config.is_set("data.max_length") else parent_config.data.max_length})
    replay = config.train.replay if config.is_set("train.replay") else CONTINUE_REPLAY
    inherited = {key: getattr(parent_config.train, key) for key in INHERITED_TRAINING
                 if not config.is_set(f"train.{key}")}
    train = config.train.model_copy(update={**inherited, "replay": replay, "replay_data": config.train.replay_data if (
        config.is_set("train.replay_data") or not replay) else parent_config.data.train})
    if train.replay and train.replay_data is not None and not Path(train.replay_data).is_file():
        raise UserError(f"--continue {ref}: the parent's training data {train.replay_data} is gone, and it is what "
                        "replay rehearses; pass --set train.replay_data=FILE, or --set train.replay=0")
    updated = config.model_copy(update={
        "name": config.name or _registered_name(parent, parent_config),
        "objective": "sft",
        "model": config.model.model_copy(update={"name": base, "parent": str(parent.resolve())}),
        "method": method, "data": data, "train": train,
        "eval": config.eval.model_copy(update={"metric": parent_config.eval.metric})
        if not config.is_set("eval.metric") else config.eval})
    updated._source, updated._text = config._source, config._text
    replayed = f"replay {train.replay:.0%} from {train.replay_data or 'general chats'}" if replay else "no replay"
    console.print(f"  continue: {ref} ({parent}) -> base {base}, method {method.name} from its trained weights; "
                  f"{replayed}", highlight=False)
    return updated


def _start(parent: Path, record: dict, ref: str) -> tuple[MethodSection, str]:
    """(the parent's method settings, the base model to load): the root base under an adapter, or the
    parent's own model/ folder for a full fine-tune."""
    if (parent / "model" / "config.json").is_file():
        return MethodSection(name="full"), str(parent / "model")
    adapter = parent / "adapter"
    info = read_method(adapter) if adapter.is_dir() else None
    if info is None or info["saved"] != "peft":
        method = info["method"] if info else record.get("method", "unknown")
        raise UserError(f"--continue {ref}: {method} runs save trained tensors that hone cannot load back as "
                        "trainable yet; train on top of the run with --model REF instead (a fresh method on its "
                        "merged weights)")
    method = MethodSection.model_validate(info["settings"])
    if method.name == "qlora":  # its base is quantized before peft wraps it: not wired for a loaded adapter yet
        raise UserError(f"--continue {ref}: qlora runs cannot be continued yet; train on top of the run with "
                        "--model REF instead")
    return method, str(record["base_model"])


def _registered_name(parent: Path, parent_config: RunConfig) -> str:
    """The parent's name in the registry, so the new run is its next version."""
    try:
        row = store.find_by_path(parent)
    except UserError:
        row = None
    if row is not None:
        return row.name
    return parent_config.name or (Path(parent_config.data.train).stem if parent_config.data.train else parent.name)


def continued_adapter(config: RunConfig) -> Path | None:
    """The parent's adapter folder that a --continue run loads trainable (None: not a continued adapter run)."""
    if not config.model.continue_from or not config.model.parent:
        return None
    folder = Path(config.model.parent) / "adapter"
    return folder if (folder / "adapter_config.json").is_file() else None
