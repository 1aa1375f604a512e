"""Alarm thresholds for `hone monitor`: one pydantic model, each field's description its documentation.

Defaults are below; a YAML file (`hone monitor MODEL --thresholds alarms.yaml`) overrides any of them.
"""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hone.errors import ConfigError


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    drift_p: float = Field(0.01, ge=0, le=1, description="alarm when the inputs' MMD p-value against the training "
                           "data is below this")
    label_shift_p: float = Field(0.01, ge=0, le=1, description="label tasks: alarm when the predicted-label "
                                 "distribution's p-value against the training labels is below this")
    min_inputs: int = Field(20, ge=2, description="fewest distinct inputs drift is measured on (fewer: skipped)")
    bad_feedback: float = Field(0.2, ge=0, le=1, description="alarm when the share of rated answers rated bad is above")
    min_rated: int = Field(5, ge=1, description="fewest ratings before the bad-feedback alarm can fire")
    empty: float = Field(0.05, ge=0, le=1, description="alarm when the share of empty answers is above this")
    refusal: float = Field(0.05, ge=0, le=1, description="alarm when the share of refusals is above this")
    never_stops: float = Field(0.1, ge=0, le=1, description="alarm when the share of answers cut at max_tokens "
                                "is above this")
    latency_p95_ms: float | None = Field(None, gt=0, description="alarm when the p95 latency is above this (ms); "
                                         "none: no latency alarm")


def load_thresholds(path: Path | None) -> Thresholds:
    """Defaults, overridden by the YAML mapping in `path`; a bad key or value names the file and line."""
    if path is None:
        return Thresholds()
    from hone.config import _suggest, _yaml_line

    try:
        text = Path(path).read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read the thresholds: {exc.strerror}", file=str(path)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {getattr(exc, 'problem', exc)}", file=str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping of thresholds (drift_p: 0.01, ...)", file=str(path))
    try:
        return Thresholds.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        line = _yaml_line(text, err["loc"])
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"unknown threshold {key!r}{_suggest(key, list(Thresholds.model_fields))}",
                              file=str(path), line=line, field=key) from None
        raise ConfigError(f"{key}: {err['msg']} (got {err.get('input')!r})", file=str(path), line=line,
                          field=key) from None


def alarms(totals: dict, drift: dict | None, labels: dict | None, limits: Thresholds) -> list[dict]:
    """The alarms the window's figures raise, each with its value, threshold and a one-line message."""
    found = []

    def check(name: str, value, threshold, above: bool, message: str) -> None:
        if value is not None and threshold is not None and (value > threshold if above else value < threshold):
            found.append({"name": name, "value": value, "threshold": threshold, "message": message})

    if drift and drift.get("p_value") is not None:
        check("drift", drift["p_value"], limits.drift_p, False,
              f"inputs differ from the training data (MMD p={drift['p_value']:.3g} < {limits.drift_p:g})")
    if labels and labels.get("p_value") is not None:
        check("label_shift", labels["p_value"], limits.label_shift_p, False,
              f"predicted labels shifted (total variation {labels['total_variation']:.3f}, "
              f"p={labels['p_value']:.3g} < {limits.label_shift_p:g})")
    if totals.get("rated", 0) >= limits.min_rated:
        check("bad_feedback", totals.get("bad_share"), limits.bad_feedback, True,
              f"{totals.get('bad_share', 0):.0%} of {totals['rated']} rated answers are bad")
    for name, what in (("empty", "empty"), ("refusal", "refusals"), ("never_stops", "cut at max_tokens (never stop)")):
        key = f"{name}_rate"
        check(name, totals.get(key), getattr(limits, name), True, f"{(totals.get(key) or 0):.1%} of answers are {what}")
    check("latency", totals.get("latency_p95_ms"), limits.latency_p95_ms, True,
          f"p95 latency {totals.get('latency_p95_ms')} ms")
    return found
