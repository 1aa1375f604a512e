"""Score models on test examples and compare base and tuned item by item, with a bootstrap interval.

The interval is a paired bootstrap (Koehn 2004; Efron & Tibshirani ch. 13): resample the test
items with replacement, recompute both corpus scores on the same resample, take the percentiles of
the difference. Paired, because base and tuned answered the same items: that cancels most of the
item-difficulty noise an unpaired comparison would carry. Seeded, so a report is reproducible.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import cast

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hone.data.records import ChatExample
from hone.evaluation.engine import Generation
from hone.evaluation.generate import generate_batch
from hone.evaluation.metrics import METRICS, Metric

BOOTSTRAP_SAMPLES = 1000


@dataclass
class Evaluation:
    metric: str
    answers: list[str]
    scores: list[float]
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def score(self) -> float:
        return sum(self.scores) / max(1, len(self.scores))


def default_max_new_tokens(tokenizer, examples: list[ChatExample]) -> int:
    """Room for the longest reference answer plus a margin (and its end-of-turn token)."""
    longest = max(len(tokenizer(e.answer or "", add_special_tokens=False)["input_ids"]) for e in examples)
    return int(longest * 1.25) + 8


def generate_answers(model, tokenizer, examples: list[ChatExample], max_new_tokens: int, batch_size: int,
                     label: str, console: Console | None = None, prefill: str = "",
                     generation: Generation | None = None) -> list[str]:
    """Greedy answers to each example's prompt (the conversation before its last assistant turn)."""
    console = console or Console(stderr=True)
    with Progress(TextColumn(f"[bold]{label}[/bold]"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(label, total=len(examples))
        return generate_batch(model, tokenizer, [e.prompt_messages for e in examples], max_new_tokens,
                              batch_size, on_batch=lambda n: bar.advance(task, n), tools=[e.tools for e in examples],
                              prefill=prefill, generation=generation)


def evaluate_answers(model, tokenizer, examples: list[ChatExample], metric: str, max_new_tokens: int,
                     batch_size: int, label: str, console: Console | None = None,
                     generation: Generation | None = None) -> Evaluation:
    """Generate an answer for each example's prompt and score it against its last assistant message."""
    started = time.monotonic()
    answers = generate_answers(model, tokenizer, examples, max_new_tokens, batch_size, label, console,
                               generation=generation)
    scorer = METRICS[metric]
    scores = [scorer(a, e.answer or "") for a, e in zip(answers, examples)]
    return Evaluation(metric, answers, scores, time.monotonic() - started)


def item_outcomes(base: Evaluation, tuned: Evaluation) -> dict[str, int]:
    """How many items the tuned model improved, regressed or left unchanged."""
    outcome = {"improved": 0, "regressed": 0, "unchanged": 0}
    for b, t in zip(base.scores, tuned.scores):
        outcome["improved" if t > b else "regressed" if t < b else "unchanged"] += 1
    return outcome


def paired_bootstrap(metric: Metric, base: np.ndarray, tuned: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                     seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of score(tuned) - score(base) over item resamples shared by both."""
    n = len(base)
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(samples, n))
    if metric.mean:
        diffs = tuned[picks, 0].mean(axis=1) - base[picks, 0].mean(axis=1)
    else:
        diffs = np.array([metric.aggregate(tuned[p]) - metric.aggregate(base[p]) for p in picks])
    tail = (1 - confidence) / 2
    low, high = np.nanquantile(diffs, [tail, 1 - tail])  # a resample where a metric applies to no item is nan
    return float(low), float(high)


@dataclass
class MetricComparison:
    """One metric for base and tuned on the same items."""
    name: str
    description: str
    tuned: float
    base: float | None = None
    difference: float | None = None
    interval: tuple[float, float] | None = None   # bootstrap interval of the difference
    higher_is_better: bool = True
    percent: bool = True
    improved: int = 0
    regressed: int = 0
    unchanged: int = 0

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return self.interval is not None and (self.interval[0] > 0 or self.interval[1] < 0)


def compare_metric(metric: Metric, tuned: np.ndarray, base: np.ndarray | None = None,
                   seed: int = 0, samples: int = BOOTSTRAP_SAMPLES) -> MetricComparison:
    """Scores, difference, bootstrap interval and item outcomes for one metric's statistics rows."""
    result = MetricComparison(metric.name, metric.description, metric.score(tuned),
                              higher_is_better=metric.higher_is_better, percent=metric.percent)
    if base is None:
        return result
    result.base = metric.score(base)
    result.difference = result.tuned - result.base
    result.interval = paired_bootstrap(metric, base, tuned, samples, seed)
    sign = 1.0 if metric.higher_is_better else -1.0
    delta = sign * (metric.item_score(tuned) - metric.item_score(base))
    result.improved = int((delta > 1e-12).sum())
    result.regressed = int((delta < -1e-12).sum())
    result.unchanged = len(delta) - result.improved - result.regressed
    return result


@dataclass
class Comparison:
    """Base against tuned on one test set: every metric, the primary one's per-item scores."""
    n: int
    primary: str
    metrics: list[MetricComparison]
    tuned_items: list[float]                      # primary metric, per item
    base_items: list[float] | None = None
    seed: int = 0
    per_item: dict = field(default_factory=dict)  # metric -> {"tuned": [...], "base": [...] or None}

    def scores(self, which: str) -> dict[str, float] | None:
        """metric -> value for 'base' or 'tuned' (None when that model was not scored)."""
        if which == "base" and self.base_items is None:
            return None
        return {m.name: getattr(m, which) for m in self.metrics}

    def to_json(self) -> dict:
        return {"n": self.n, "primary": self.primary, "seed": self.seed,
                "base": self.scores("base"), "tuned": self.scores("tuned"),
                "metrics": [asdict(m) for m in self.metrics],
                "tuned_items": self.tuned_items, "base_items": self.base_items, "per_item": self.per_item}

    @classmethod
    def from_json(cls, data: dict) -> "Comparison":
        metrics = [MetricComparison(**{**m, "interval": tuple(m["interval"]) if m.get("interval") else None})
                   for m in data["metrics"]]
        return cls(data["n"], data["primary"], metrics, data["tuned_items"], data.get("base_items"),
                   data.get("seed", 0), data.get("per_item", {}))


def compare_answers(metrics: list[Metric], primary: str, references: list[str], tuned_answers: list[str],
                    base_answers: list[str] | None = None, extra: dict | None = None,
                    seed: int = 0) -> Comparison:
    """Score tuned (and base) answers against references with every metric; `extra` adds metrics whose
    statistics were computed elsewhere (perplexity): name -> (Metric, tuned rows, base rows or None)."""
    results, items = [], {}
    for metric in metrics:
        assert metric.statistics is not None  # metrics without them come through `extra`
        tuned = metric.statistics(tuned_answers, references)
        base = metric.statistics(base_answers, references) if base_answers is not None else None
        results.append(compare_metric(metric, tuned, base, seed))
        items[metric.name] = (metric.item_score(tuned), None if base is None else metric.item_score(base))
    for metric, tuned, base in (extra or {}).values():
        results.append(compare_metric(metric, tuned, base, seed))
        items[metric.name] = (metric.item_score(tuned), None if base is None else metric.item_score(base))
    per_item = {name: {"tuned": [float(v) for v in t], "base": None if b is None else [float(v) for v in b]}
                for name, (t, b) in items.items()}
    tuned_items = cast("list[float]", per_item[primary]["tuned"])  # only "base" may be None
    return Comparison(len(tuned_items), primary, results, tuned_items,
                      per_item[primary]["base"], seed, per_item)
