"""Which objective fits which method and which data: one-line errors before any work starts."""
from __future__ import annotations

import importlib
from pathlib import Path

from hone.config import RunConfig
from hone.data.records import ChatExample, LabelExample, PreferenceExample, TagExample, TextExample
from hone.errors import ConfigError
from hone.methods.registry import check_pair

# The record type each objective trains on (data/records.py).
NEEDS = {"sft": ChatExample, "pretrain": TextExample, "classify": LabelExample, "ner": TagExample,
         "dpo": PreferenceExample, "orpo": PreferenceExample, "simpo": PreferenceExample,
         "reward": PreferenceExample, "grpo": ChatExample}
DESCRIBE = {ChatExample: "chat or instruction data (messages, prompt/completion, ...)",
            TextExample: "raw text (`text`)", LabelExample: "labelled text (`text` + `label`)",
            TagExample: "tagged tokens (`tokens` + `tags`)",
            PreferenceExample: "preference pairs (`prompt` + `chosen` + `rejected`)"}
FITS = {ChatExample: "sft (or grpo)", TextExample: "pretrain", LabelExample: "classify", TagExample: "ner",
        PreferenceExample: "dpo, orpo, simpo or reward"}

# Objectives that put a new head on the model (sequence or token classification, a scalar reward).
HEAD_OBJECTIVES = {"classify", "ner", "reward"}
def check_config(config: RunConfig) -> None:
    """Everything about the objective that can be checked without reading data or loading a model."""
    objective, method = config.objective, config.method.name
    check_pair(config.method, objective)  # the methods registry knows where each method applies
    if objective == "mixture":
        if len(config.mixture) < 2:
            raise ConfigError("objective mixture needs at least two datasets under `mixture:` "
                              "([{train: a.jsonl, weight: 0.7}, {train: b.jsonl, weight: 0.3}])", field="mixture")
        for source in config.mixture:
            if not Path(source.train).is_file():
                raise ConfigError("mixture file not found", file=str(source.train), field="mixture.train")
    elif config.data.train is None:
        raise ConfigError(f"no training data for objective {objective!r}: pass --data FILE (or data.train)",
                          field="data.train")
    if objective == "grpo":
        grpo = config.grpo
        if bool(grpo.reward_function) == bool(grpo.reward_model):
            raise ConfigError("objective grpo needs exactly one of grpo.reward_function "
                              "(`package.module:function`) or grpo.reward_model (a reward run folder)",
                              field="grpo.reward_function")
        if config.train.batch_size % grpo.num_generations:
            raise ConfigError(f"train.batch_size ({config.train.batch_size}) must be a multiple of "
                              f"grpo.num_generations ({grpo.num_generations}): each step scores whole groups",
                              field="train.batch_size")
        if grpo.reward_function:
            reward_function(grpo.reward_function)
        elif not Path(grpo.reward_model).expanduser().is_dir():
            raise ConfigError("reward model folder not found", file=grpo.reward_model, field="grpo.reward_model")


def reward_function(path: str):
    """The callable named by `package.module:function`, or a ConfigError saying what is wrong."""
    module_name, _, name = path.partition(":")
    if not module_name or not name:
        raise ConfigError(f"reward function {path!r} must look like package.module:function",
                          field="grpo.reward_function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for the reward function: {exc}",
                          field="grpo.reward_function") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(f"{module_name} has no function {name!r}", field="grpo.reward_function")
    return function


def require_records(records: list, objective: str, path) -> None:
    """The data's record type must be what the objective trains on."""
    wanted = NEEDS[objective]
    have = type(records[0])
    if have is not wanted:
        raise ConfigError(f"objective {objective!r} needs {DESCRIBE[wanted]}, but this file holds "
                          f"{DESCRIBE[have]}; it fits objective {FITS[have]}", file=str(path), field="objective")
