"""The `method` object of a job: parsed, range-checked, and its "auto" values resolved.

OpenAI's rules (reference/openai_ft_api.md §2.4): every hyperparameter is "auto" or a number;
n_epochs 1-50, batch_size 1-256, learning_rate_multiplier > 0, beta in (0, 2]. A missing `method`
means supervised with the deprecated top-level `hyperparameters`.
"""
from __future__ import annotations

import math
from typing import Any

from hone.serve.errors import APIError

RANGES = {"n_epochs": (int, 1, 50), "batch_size": (int, 1, 256),
          "learning_rate_multiplier": (float, 0.0, None), "beta": (float, 0.0, 2.0)}
FIELDS = {"supervised": ("n_epochs", "batch_size", "learning_rate_multiplier"),
          "dpo": ("n_epochs", "batch_size", "learning_rate_multiplier", "beta")}

MAX_FINITE = 1e300   # a learning_rate_multiplier past this is no number a run can use (and overflows float)

# The cookbook's n_epochs="auto" rule (reference §4.4): aim for ~100 examples seen, 3 epochs by default.
TARGET_EPOCHS, MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES, MIN_EPOCHS, MAX_EPOCHS = 3, 100, 25000, 1, 25


def hyperparameters_schema(kind: str) -> dict:
    """The JSON schema of `kind`'s hyperparameters object, from RANGES (for the OpenAPI schema)."""
    properties = {}
    for name in FIELDS[kind]:
        read, low, high = RANGES[name]
        number = {"type": "integer", "minimum": low, "maximum": high} if read is int else \
            {"type": "number", "exclusiveMinimum": low, "maximum": high or MAX_FINITE}
        properties[name] = {"anyOf": [{"type": "string", "const": "auto"}, number, {"type": "null"}]}
    return {"type": ["object", "null"], "properties": properties, "additionalProperties": False}


def method_schema() -> dict:
    """The JSON schema of a job's `method` (null: supervised with the top-level hyperparameters)."""
    sections = {kind: {"type": ["object", "null"], "properties": {"hyperparameters": hyperparameters_schema(kind)}}
                for kind in FIELDS}
    return {"type": ["object", "null"], "required": ["type"],
            "properties": {"type": {"type": "string", "enum": list(FIELDS)}, **sections}}


def parse_method(method: Any, hyperparameters: Any) -> dict:
    """The job's method as OpenAI echoes it: type plus every hyperparameter ("auto" where unset).

    Every part of `method` is JSON of any shape: each is checked to be the object or string it should be,
    so a malformed method is a 400 naming the part, never a TypeError (a 500)."""
    hyperparameters = _object(hyperparameters, "hyperparameters")
    if method is None:
        method = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
    method = _object(method, "method")
    kind = method.get("type")
    if not isinstance(kind, str) or kind not in FIELDS:
        raise APIError(400, f"method.type {kind!r} is not supported; use 'supervised' or 'dpo'"
                       + (" (reinforcement fine-tuning is not implemented by hone serve)"
                          if kind == "reinforcement" else ""),
                       param="method.type")
    section = _object(method.get(kind), f"method.{kind}")
    given = _object(section.get("hyperparameters"), f"method.{kind}.hyperparameters")
    if hyperparameters and any(given.get(k, v) != v for k, v in hyperparameters.items()):
        raise APIError(400, "hyperparameters disagree with method.*.hyperparameters; pass them under method only.",
                       param="hyperparameters", code="conflicting_hyperparameters")
    unknown = sorted(set(given) - set(FIELDS[kind]))
    if unknown:
        raise APIError(400, f"unknown {kind} hyperparameter {unknown[0]!r}; expected {', '.join(FIELDS[kind])}",
                       param=f"method.{kind}.hyperparameters.{unknown[0]}")
    values = {name: _check(kind, name, given.get(name, "auto")) for name in FIELDS[kind]}
    return {"type": kind, kind: {"hyperparameters": values}}


def _object(value: Any, param: str) -> dict:
    """`value` as a JSON object ({} when missing or null), or a 400 naming `param`."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise APIError(400, f"{param} must be an object, got {type(value).__name__} {value!r:.60}", param=param)
    return value


def _check(kind: str, name: str, value: Any) -> Any:
    if value is None or value == "auto":
        return "auto"
    read, low, high = RANGES[name]
    param = f"method.{kind}.hyperparameters.{name}"
    # JSON may carry NaN and Infinity (Python's json reads them): neither is a usable hyperparameter
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or (isinstance(value, float) and not math.isfinite(value)) or (read is int and value != int(value)):
        raise APIError(400, f"{name} must be 'auto' or {'an integer' if read is int else 'a finite number'}, "
                       f"got {value!r:.60}", param=param)
    # compared before converting: int(1e300) and float(10**400) are legal JSON and convert badly
    if (read is int and value < low) or (read is float and value <= low) or (high is not None and value > high) \
            or abs(value) > MAX_FINITE:
        bounds = f"{low}-{high}" if read is int else f"> {low:g}" + (f" and <= {high:g}" if high else "")
        raise APIError(400, f"{name} must be {bounds}, got {value!r:.40}", param=param)
    return read(value)


def auto_epochs(n_examples: int) -> int:
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_EPOCHS, MIN_TARGET_EXAMPLES // max(1, n_examples))
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


def resolve(method: dict, n_examples: int) -> dict:
    """The method with every "auto" replaced by the number the job trains with."""
    from hone.config import PreferenceSection, TrainSection

    kind = method["type"]
    values = dict(method[kind]["hyperparameters"])
    auto = {"n_epochs": auto_epochs(n_examples),
            # hone's default effective batch, but never more than the data holds
            "batch_size": max(1, min(TrainSection().batch_size, n_examples)),
            "learning_rate_multiplier": 1.0,  # x hone's per-method default rate (lora 2e-4)
            "beta": PreferenceSection().beta}
    for name, value in values.items():
        if value == "auto":
            values[name] = auto[name]
    return {"type": kind, kind: {"hyperparameters": values}}


def top_level(method: dict) -> dict:
    """The job's top-level `hyperparameters`: supervised's values, and an empty object otherwise."""
    if method["type"] != "supervised":
        return {}
    return dict(method["supervised"]["hyperparameters"])


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return math.ceil(n_examples / batch_size)
