"""`hone monitor MODEL`: the served model's daily health, its input drift against its training data, alarms.

    captured exchanges (traffic.py) -> health per day (health.py)
    -> the training data (the tuned model's run folder, or --training-data) -> embed both (MiniLM)
    -> MMD test, furthest inputs, label shift (drift.py) -> alarms (alarms.py) -> MonitorResult

Training embeddings are cached under <hone home>/monitor/embeddings/, keyed by the file's content and the
encoder, so a daily monitor embeds only the day's traffic.
"""
from __future__ import annotations

import functools
import hashlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from hone.errors import UserError
from hone.home import hone_home
from hone.models.catalogue import DEFAULT_ENCODER
from hone.monitor import traffic
from hone.monitor.alarms import Thresholds, alarms
from hone.monitor.drift import furthest_inputs, is_label_task, label_shift, mmd_test
from hone.monitor.health import by_day, health

# Embedding is the slow part (MiniLM on CPU: 1,000 demo inputs in 27 s on this loaded 2-core machine), so at most
# this many of each side are embedded, a seeded sample; the MMD test itself uses at most 1,000 of each.
MAX_INPUTS = 2000
MAX_TRAINING = 5000


def _sample(texts: list[str], limit: int) -> list[str]:
    if len(texts) <= limit:
        return texts
    picked = np.random.default_rng(0).choice(len(texts), limit, replace=False)
    return [texts[i] for i in sorted(picked)]


@dataclass
class TrainingData:
    """What the model was taught: each example's input and answer, and where they came from."""
    path: Path
    inputs: list[str]
    answers: list[str]
    test: Path | None = None          # its held-out test split, when the run had one


@dataclass
class MonitorResult:
    model: str
    since: float | None
    requests: int
    totals: dict
    days: list[dict]
    drift: dict                           # p_value, mmd2, ... or {"skipped": reason}
    outliers: list[dict] = field(default_factory=list)
    labels: dict | None = None            # label tasks: the predicted-label shift
    alarms: list[dict] = field(default_factory=list)
    training_data: str | None = None
    generated_at: float = field(default_factory=time.time)

    def to_json(self) -> dict:
        return asdict(self)


def training_data_of(run_dir: str | Path) -> TrainingData:
    """The training examples of a run folder (its config.yaml's data.train, as the run read them)."""
    from hone.config import load_config

    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise UserError(f"{run} is not a run folder (no config.yaml): pass --training-data FILE")
    config = load_config(run / "config.yaml")
    if not config.data.train:
        raise UserError(f"{run}/config.yaml names no data.train: pass --training-data FILE")
    data = read_examples(Path(config.data.train), config.data.format)
    data.test = Path(config.data.test) if config.data.test else None
    return data


def read_examples(path: Path, shape: str | None = None) -> TrainingData:
    """(input, answer) of each record: a chat's last user message and its reply, a label example's text
    and label, a prompt and its completion."""
    from hone.data.load import load_records
    from hone.data.records import ChatExample, LabelExample

    if not path.is_file():
        raise UserError("training data not found (moved or deleted?): pass --training-data FILE", file=str(path))
    inputs, answers = [], []
    for record in load_records(path, shape):
        if isinstance(record, ChatExample):
            turns = record.messages
            last = max((i for i, m in enumerate(turns) if m["role"] == "assistant"), default=None)
            users = [m for m in turns[:last] if m["role"] == "user"] if last is not None else []
            if users and last is not None:
                inputs.append(str(users[-1]["content"] or ""))
                answers.append(str(turns[last]["content"] or ""))
        elif isinstance(record, LabelExample):
            inputs.append(record.text)
            answers.append(record.label)
    if not inputs:
        raise UserError("no chat or label examples to compare traffic with", file=str(path))
    return TrainingData(path, inputs, answers)


def embed_cached(texts: list[str], encoder, source: Path | None = None) -> np.ndarray:
    """Embeddings of `texts`, cached on disk when they are a training file's (`source`)."""
    if source is None:
        return encoder.embed(texts)
    key = hashlib.sha256("\n".join([encoder.spec, *texts]).encode("utf-8")).hexdigest()[:32]
    cache = hone_home() / "monitor" / "embeddings" / f"{key}.npy"
    if cache.is_file():
        return np.load(cache)
    vectors = encoder.embed(texts)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(f".{cache.stem}.{os.getpid()}.tmp.npy")   # written beside it, renamed into place
    np.save(partial, vectors)
    os.replace(partial, cache)
    return vectors


@functools.lru_cache(maxsize=2)
def loaded_encoder(spec: str):
    """The sentence encoder, loaded once per process (a load takes seconds; a scheduler may monitor many models)."""
    from hone.kb.embed import Encoder

    return Encoder(spec)


def monitor_model(model: str, since: float | None = None, org: str | None = None, url: str | None = None,
                  thresholds: Thresholds | None = None, training_data: Path | None = None,
                  encoder: str = DEFAULT_ENCODER, console: Console | None = None) -> MonitorResult:
    """Health, drift and alarms of `model`'s captured traffic (as clients named it, or its served id)."""
    limits = thresholds or Thresholds()
    console = console or Console(stderr=True)
    exchanges = traffic.read_exchanges(model, since, org, url)
    if not exchanges:
        known = traffic.models_with_traffic(url)
        hint = f"; models with traffic: {', '.join(known[:8])}" if known else \
            "; nothing is captured yet (start the server with hone serve --capture)"
        raise UserError(f"no captured traffic for model {model!r}{' in this window' if since else ''}{hint}",
                        field="model")
    totals = health(exchanges)
    result = MonitorResult(model, since, len(exchanges), totals, by_day(exchanges), {})
    data = _training_data(exchanges, training_data, result)
    if data is not None:
        result.training_data = str(data.path)
        _drift(result, exchanges, data, limits, encoder, console)
    result.alarms = alarms(totals, result.drift, result.labels, limits)
    return result


def _training_data(exchanges: list[traffic.Exchange], given: Path | None, result: MonitorResult) -> TrainingData | None:
    if given is not None:
        return read_examples(given)
    runs = [e.run_dir for e in exchanges if e.run_dir]
    if not runs:
        result.drift = {"skipped": "a base model: no training data to compare with (pass --training-data FILE)"}
        return None
    return training_data_of(runs[-1])   # the newest: what is served now


def _drift(result: MonitorResult, exchanges: list[traffic.Exchange], data: TrainingData, limits: Thresholds,
           encoder_spec: str, console: Console) -> None:
    inputs = _sample([e.prompt for e in exchanges if e.prompt.strip()], MAX_INPUTS)
    if len(set(inputs)) < limits.min_inputs:
        result.drift = {"skipped": f"{len(set(inputs))} distinct inputs, fewer than min_inputs={limits.min_inputs}"}
    else:
        with console.status(f"embedding {len(inputs)} inputs and {len(data.inputs)} training examples"):
            encoder = loaded_encoder(encoder_spec)
            taught = _sample(data.inputs, MAX_TRAINING)
            reference = embed_cached(taught, encoder, data.path)
            served = encoder.embed(inputs)
            test = mmd_test(reference, served)
        result.drift = {"p_value": round(test.p_value, 5), "mmd2": round(test.mmd2, 6),
                        "bandwidth": round(test.bandwidth, 4), "inputs": test.n_inputs,
                        "training_examples": test.n_reference, "encoder": encoder_spec,
                        "drifted": test.p_value < limits.drift_p}
        result.outliers = [asdict(o) for o in furthest_inputs(inputs, served, taught, reference)]
    if is_label_task(data.answers):
        predicted = [e.answer.strip() for e in exchanges]
        shift = label_shift([a.strip() for a in data.answers], predicted)
        result.labels = asdict(shift) | {"shifted": shift.p_value < limits.label_shift_p}
