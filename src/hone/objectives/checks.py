"""Everything about a run that can be refused before any work: one line each, naming the setting.

Read from the objectives table (objectives/registry.py) and the methods table (methods/registry.py):
the objective's name, the method/objective pair, the method against the model's structure (on a
weightless copy), the data's record type in every file, settings that cannot apply to the objective,
and the launch (sharding, accelerate configs).
"""
from __future__ import annotations

import difflib
from pathlib import Path

from hone.config import DistillSection, RunConfig
from hone.data.load import iter_records
from hone.data.records import ChatExample, LabelExample, PreferenceExample, TagExample, TextExample
from hone.errors import ConfigError
from hone.evaluation.engine import check_engine
from hone.launch import check_launch
from hone.methods.registry import METHODS, check_method, check_pair, meta_model
from hone.models.catalogue import resolve_model
from hone.objectives.distill import check_distill
from hone.objectives.grpo import reward_function
from hone.objectives.registry import OBJECTIVES, Objective, objectives_for

DESCRIBE = {ChatExample: "chat or instruction data (messages, prompt/completion, ...)",
            TextExample: "raw text (`text`)", LabelExample: "labelled text (`text` + `label`)",
            TagExample: "tagged tokens (`tokens` + `tags`)",
            PreferenceExample: "preference pairs (`prompt` + `chosen` + `rejected`)"}


def objective_entry(config: RunConfig) -> Objective:
    """The table's entry for `config.objective`, or a one-line error naming the choices."""
    entry = OBJECTIVES.get(config.objective)
    if entry is None:
        close = difflib.get_close_matches(config.objective, list(OBJECTIVES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise config.error(f"unknown objective {config.objective!r}{hint} (choose auto or one of "
                           f"{', '.join(OBJECTIVES)}; `hone objectives` describes them)", "objective")
    return entry


def check_config(config: RunConfig, check_data: bool = True) -> Objective:
    """Every check that needs no training: returns the objective's table entry."""
    entry = objective_entry(config)
    fits = [o.name for o in OBJECTIVES.values() if _method(config).applies(o.head is not None, o.own_loop)]
    check_pair(config.method, entry.name, entry.head is not None, entry.own_loop, fits)
    check_settings(config, entry)
    check_launch(entry.name, entry.own_loop, config.train.sharding)
    if entry.name == "mixture":
        if len(config.mixture) < 2:
            raise config.error("objective mixture needs at least two datasets under `mixture:` "
                               "([{train: a.jsonl, weight: 0.7}, {train: b.jsonl, weight: 0.3}])", "mixture")
        for source in config.mixture:
            if not Path(source.train).is_file():
                raise ConfigError("mixture file not found", file=str(source.train), field="mixture.train")
    elif config.data.train is None:
        raise config.error(f"no training data for objective {entry.name!r}: pass --data FILE (or data.train)",
                           "data.train")
    if entry.name == "grpo":
        check_grpo(config)
    if entry.name == "distill":
        check_distill(config)
    if check_data:
        for role in ("train", "validation", "test"):
            path = getattr(config.data, role)
            if path is not None and entry.needs:
                require_records(path, entry, config.data.format)
    check_method(config.method, meta_model(resolve_model(config.model.name).path, entry.model_class))
    return entry


def _method(config: RunConfig):
    return METHODS[config.method.name]


def check_settings(config: RunConfig, entry: Objective) -> None:
    """A safeguard the user set that this objective cannot honour is refused, with the reason; so is a
    teacher (distill.*) for any objective but distill."""
    for setting, why in entry.refuses.items():
        if config.is_set(setting) and _active(config, setting):
            raise config.error(f"{setting} does not apply to objective {entry.name}: {why}", setting)
    if config.is_set("eval.engine") and config.eval.engine != "auto":
        if entry.name != "sft":
            raise config.error(f"eval.engine applies only to objective sft, whose evaluation generates answers, not "
                               f"{entry.name} (drop it)", "eval.engine")
        try:
            check_engine(config.eval.engine, "eval.engine")
        except ConfigError as exc:
            raise config.error(str(exc), "eval.engine") from None
    if config.train.replay_data is not None:
        if "train.replay" in entry.refuses:
            raise config.error(f"train.replay_data does not apply to objective {entry.name}: "
                               f"{entry.refuses['train.replay']}", "train.replay_data")
        if not config.train.replay:
            raise config.error("train.replay_data is replayed at the train.replay share, which is 0: set "
                               "train.replay (e.g. 0.25) or drop train.replay_data", "train.replay_data")
        if not Path(config.train.replay_data).is_file():
            raise ConfigError("replay data not found", file=str(config.train.replay_data), field="train.replay_data")
    if config.model.continue_from and entry.name != "sft":
        raise config.error(f"--continue trains chat models (objective sft), not {entry.name}: train on top of "
                           "the run with --model REF instead", "model.continue_from")
    if config.data.mask_reasoning and entry.name != "sft":
        raise config.error(f"data.mask_reasoning applies only to objective sft, not {entry.name}: its loss is not "
                           "built from hone's chat rendering (drop it)", "data.mask_reasoning")
    if entry.name != "distill":
        for name in DistillSection.model_fields:
            if config.is_set(f"distill.{name}") and getattr(config.distill, name) not in (None, 0):
                flag = "--teacher" if name == "teacher" else f"distill.{name}"
                raise config.error(f"{flag} applies only to objective distill, not {entry.name}: add "
                                   "--objective distill (or drop it)", f"distill.{name}")


def _active(config: RunConfig, setting: str) -> bool:
    """Set to something that asks for the safeguard (kl_to_base: 0 or replay: 0 ask for nothing)."""
    section, name = setting.split(".")
    value = getattr(getattr(config, section), name)
    return value not in (0, 0.0, None, False)


def check_grpo(config: RunConfig) -> None:
    grpo = config.grpo
    if bool(grpo.reward_function) == bool(grpo.reward_model):
        raise config.error("objective grpo needs exactly one of grpo.reward_function (`package.module:function`) "
                           "or grpo.reward_model (a reward run folder)", "grpo.reward_function")
    if config.train.batch_size % grpo.num_generations:
        raise config.error(f"train.batch_size ({config.train.batch_size}) must be a multiple of "
                           f"grpo.num_generations ({grpo.num_generations}): each step scores whole groups",
                           "train.batch_size")
    if grpo.reward_function:
        reward_function(grpo.reward_function)
    elif not Path(grpo.reward_model or "").expanduser().is_dir():  # set: exactly one of the two is (above)
        raise ConfigError("reward model folder not found", file=grpo.reward_model, field="grpo.reward_model")


def require_records(path: Path, entry: Objective, data_format: str | None = None) -> None:
    """The file's first record must be of a type the objective trains on (read before any work)."""
    first = next(iter(iter_records(Path(path), data_format)), None)
    if first is None:
        return  # an empty file: the loader's own error says so
    have = type(first)
    if have not in entry.needs:
        fits = " or ".join(objectives_for(have)) or "none"
        raise ConfigError(f"objective {entry.name!r} needs {DESCRIBE[entry.needs[0]]}, but this file holds "
                          f"{DESCRIBE[have]}; it fits objective {fits}", file=str(path), field="objective")
