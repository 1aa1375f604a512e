"""Task metrics: per-item scores for generated answers, corpus metrics, classification metrics.

Every metric is a `Metric`: per-item *statistics* (one row per test item) and a function that turns
any set of rows into the corpus score. Means are the common case (a row is the item's score); BLEU
and chrF keep sacrebleu's n-gram counts per row, so the corpus score is sacrebleu's own and a
bootstrap can resample items and re-aggregate exactly (Koehn 2004). `item_score` gives one number
per item for "improved / regressed / unchanged".
"""
from __future__ import annotations

import importlib
import json
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from hone.errors import UserError

_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalise(text: str) -> str:
    return " ".join(text.split())


# --- per-item text metrics: (prediction, reference) -> float in [0, 1] ---

def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the texts are equal up to surrounding and repeated whitespace."""
    return float(normalise(prediction) == normalise(reference))


def _answer_tokens(text: str) -> list[str]:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, split on whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return _ARTICLES.sub(" ", text).split()


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 of the bag of normalised words shared by prediction and reference."""
    pred, ref = _answer_tokens(prediction), _answer_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


_ROUGE = None


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of words), via Google's rouge-score."""
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"])
    return _ROUGE.score(reference, prediction)["rougeL"].fmeasure


def parse_json_answer(text: str) -> Any | None:
    """The first JSON value in `text` (code fences and chatter around it allowed), else None."""
    text = _FENCE.sub("", text.strip())
    decoder = json.JSONDecoder()
    for start, char in enumerate(text):
        if char in "{[":
            try:
                return decoder.raw_decode(text, start)[0]
            except json.JSONDecodeError:
                continue
    return None


def json_valid(prediction: str, reference: str = "") -> float:
    """1.0 when the answer holds a JSON object or array."""
    return float(parse_json_answer(prediction) is not None)


def json_match(prediction: str, reference: str) -> float:
    """1.0 when the answer parses as JSON equal to the reference's JSON (every field exact)."""
    expected = parse_json_answer(reference)
    return float(expected is not None and parse_json_answer(prediction) == expected)


def _leaves(value: Any, path: tuple = ()) -> dict[tuple, Any]:
    """Every scalar inside nested objects and arrays, keyed by its path."""
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items() for k, v in _leaves(item, path + (key,)).items()}
    if isinstance(value, list) and value:
        return {k: v for i, item in enumerate(value) for k, v in _leaves(item, path + (i,)).items()}
    return {path: value}


def json_field_accuracy(prediction: str, reference: str) -> float:
    """Share of the reference's JSON fields (leaves, by path) that the answer gets exactly right."""
    expected = parse_json_answer(reference)
    if expected is None:
        return 0.0
    got = parse_json_answer(prediction)
    if got is None:
        return 0.0
    want, have = _leaves(expected), _leaves(got)
    return sum(path in have and have[path] == value for path, value in want.items()) / len(want)


def json_schema_check(schema: dict, source: str = "schema") -> Callable[..., float]:
    """A per-item metric: 1.0 when the answer holds JSON that validates against `schema`."""
    import jsonschema

    validator_class = jsonschema.validators.validator_for(schema)
    try:
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise UserError(f"not a valid JSON schema: {exc.message}", file=source) from None
    validator = validator_class(schema)

    def json_schema_valid(prediction: str, reference: str = "") -> float:
        value = parse_json_answer(prediction)
        return float(value is not None and validator.is_valid(value))

    return json_schema_valid


# --- classification: labels in, numbers out (also used by the classification objectives) ---

def normalise_label(text: str) -> str:
    """A generated label compared loosely: case, surrounding space and a trailing full stop ignored."""
    return normalise(text).rstrip(".").casefold()


def accuracy(y_true: list, y_pred: list) -> float:
    return sum(t == p for t, p in zip(y_true, y_pred)) / max(1, len(y_true))


def macro_f1(y_true: list, y_pred: list, labels: list | None = None) -> float:
    """Mean of per-class F1 = 2TP / (2TP + FP + FN) over `labels` (default: every label seen)."""
    classes = labels if labels is not None else sorted(set(y_true) | set(y_pred), key=str)
    if not classes:
        return 0.0
    scores = []
    for c in classes:
        tp = sum(t == c and p == c for t, p in zip(y_true, y_pred))
        fp = sum(t != c and p == c for t, p in zip(y_true, y_pred))
        fn = sum(t == c and p != c for t, p in zip(y_true, y_pred))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / len(scores)


def confusion_matrix(y_true: list, y_pred: list, labels: list | None = None) -> tuple[list, list[list[int]]]:
    """(labels, counts) with counts[i][j] = items of true label i predicted as label j."""
    classes = labels if labels is not None else sorted(set(y_true) | set(y_pred), key=str)
    index = {c: i for i, c in enumerate(classes)}
    counts = [[0] * len(classes) for _ in classes]
    for t, p in zip(y_true, y_pred):
        if t in index and p in index:
            counts[index[t]][index[p]] += 1
    return classes, counts


def looks_like_labels(references: list[str]) -> bool:
    """Short answers from a small set (at most 20, and at most a third of the items): a label task."""
    if len(references) < 6:
        return False
    distinct = {normalise_label(r) for r in references}
    return (len(distinct) <= min(20, len(references) // 3)
            and all(len(r.split()) <= 4 and parse_json_answer(r) is None for r in references))


# --- the Metric type: per-item statistics + aggregation ---

@dataclass(frozen=True)
class Metric:
    name: str
    description: str
    aggregate: Callable[[np.ndarray], float]           # rows of statistics -> corpus score
    item_score: Callable[[np.ndarray], np.ndarray]     # rows -> one score per item
    statistics: Callable[[list[str], list[str]], np.ndarray] | None = None  # None: computed elsewhere
    higher_is_better: bool = True
    percent: bool = True                               # a share in [0, 1], shown as %
    mean: bool = True                                  # aggregate is the mean of column 0 (fast bootstrap)

    def score(self, rows: np.ndarray) -> float:
        return float(self.aggregate(rows)) if len(rows) else float("nan")


def mean_metric(name: str, fn: Callable[[str, str], float], description: str = "") -> Metric:
    """A metric that is the mean of a per-item score."""
    def statistics(predictions: list[str], references: list[str]) -> np.ndarray:
        return np.array([[fn(p, r)] for p, r in zip(predictions, references)], dtype=float).reshape(-1, 1)

    doc = (fn.__doc__ or "").strip().splitlines()
    return Metric(name, description or (doc[0] if doc else name),
                  aggregate=lambda rows: rows[:, 0].mean(), item_score=lambda rows: rows[:, 0],
                  statistics=statistics)


def _sacrebleu_metric(name: str, make: Callable, description: str) -> Metric:
    """BLEU or chrF from sacrebleu's own per-segment statistics, on its 0-100 scale."""
    corpus, sentence = make(False), make(True)

    def statistics(predictions: list[str], references: list[str]) -> np.ndarray:
        return np.array(corpus._extract_corpus_statistics(predictions, [references]), dtype=float)

    def aggregate(rows: np.ndarray) -> float:
        return corpus._compute_score_from_stats([int(v) for v in rows.sum(axis=0)]).score

    def item_score(rows: np.ndarray) -> np.ndarray:
        return np.array([sentence._compute_score_from_stats([int(v) for v in row]).score for row in rows])

    return Metric(name, description, aggregate, item_score, statistics, percent=False, mean=False)


def bleu() -> Metric:
    from sacrebleu.metrics import BLEU

    # Sentence-level BLEU (per-item outcomes) needs effective order, or one missing 4-gram zeroes it.
    return _sacrebleu_metric("bleu", lambda sentence: BLEU(effective_order=sentence),
                             "corpus BLEU (sacrebleu, 0-100)")


def chrf() -> Metric:
    from sacrebleu.metrics import CHRF

    return _sacrebleu_metric("chrf", lambda sentence: CHRF(), "chrF character n-gram F-score (sacrebleu, 0-100)")


def label_metrics(references: list[str]) -> list[Metric]:
    """Accuracy and macro-F1 over the reference labels; a generated answer outside them counts as wrong."""
    classes = sorted({normalise_label(r) for r in references})
    index = {c: i for i, c in enumerate(classes)}
    other = len(classes)  # every answer that is no known label

    def statistics(predictions: list[str], refs: list[str]) -> np.ndarray:
        return np.array([[index.get(normalise_label(r), other), index.get(normalise_label(p), other)]
                         for p, r in zip(predictions, refs)], dtype=float).reshape(-1, 2)

    def correct(rows: np.ndarray) -> np.ndarray:
        return (rows[:, 0] == rows[:, 1]).astype(float)

    def f1(rows: np.ndarray) -> float:
        return macro_f1(rows[:, 0].tolist(), rows[:, 1].tolist(), labels=sorted(set(rows[:, 0].tolist())))

    return [Metric("accuracy", "share of items whose answer is the reference label",
                   lambda rows: correct(rows).mean(), correct, statistics, mean=False),
            Metric("macro_f1", "F1 per reference label, averaged over labels", f1, correct, statistics,
                   mean=False)]


def custom_metric(dotted: str) -> Metric:
    """A user's per-item function `f(prediction, reference) -> float`, as `package.module:function`
    or `package.module.function`; the corpus score is its mean."""
    module_name, _, attr = dotted.partition(":") if ":" in dotted else dotted.rpartition(".")
    if not module_name or not attr:
        raise UserError(f"custom metric {dotted!r}: expected package.module:function", field="metric")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"custom metric {dotted!r} cannot be imported: {exc}", field="metric") from None
    if not callable(fn):
        raise UserError(f"custom metric {dotted!r} is not a function", field="metric")

    def checked(prediction: str, reference: str) -> float:
        value = fn(prediction, reference)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"custom metric {dotted!r} returned {value!r}; expected a number", field="metric")
        return float(value)

    return mean_metric(attr, checked, f"custom metric {dotted}")


TEXT_METRICS: dict[str, Callable[[], Metric]] = {
    "exact_match": lambda: mean_metric("exact_match", exact_match),
    "token_f1": lambda: mean_metric("token_f1", token_f1),
    "rouge_l": lambda: mean_metric("rouge_l", rouge_l),
    "bleu": bleu,
    "chrf": chrf,
    "json_valid": lambda: mean_metric("json_valid", json_valid),
    "json_match": lambda: mean_metric("json_match", json_match),
    "json_field_accuracy": lambda: mean_metric("json_field_accuracy", json_field_accuracy),
}

# Per-item functions by name: what the SFT run scores its test split with.
METRICS: dict[str, Callable[[str, str], float]] = {"exact_match": exact_match, "json_match": json_match}


def pick_metric(references: list[str]) -> str:
    """json_match when every reference is a JSON object or array, exact_match otherwise."""
    is_json = all(r.strip()[:1] in "{[" and parse_json_answer(r) is not None for r in references)
    return "json_match" if references and is_json else "exact_match"


def pick_metrics(references: list[str], names: list[str] | None = None,
                 schema: dict | None = None) -> tuple[list[Metric], str]:
    """The metrics for these references and the primary one (item outcomes are counted on it).

    `names` are built-in metric names or dotted paths to custom functions; by default: exact match,
    token F1, ROUGE-L, BLEU, chrF, plus the JSON metrics for JSON answers and accuracy/macro-F1 for
    label answers.
    """
    is_json = pick_metric(references) == "json_match"
    is_labels = looks_like_labels(references)
    if names:
        chosen = []
        for name in names:
            if name in TEXT_METRICS:
                chosen.append(TEXT_METRICS[name]())
            elif name in ("accuracy", "macro_f1"):
                chosen.extend(m for m in label_metrics(references) if m.name == name)
            elif "." in name or ":" in name:
                chosen.append(custom_metric(name))
            else:
                known = ", ".join([*TEXT_METRICS, "accuracy", "macro_f1"])
                raise UserError(f"unknown metric {name!r}; built-in: {known}, or a dotted path "
                                "package.module:function", field="metric")
        primary = chosen[0].name
    else:
        base = ["exact_match", "token_f1", "rouge_l", "bleu", "chrf"]
        if is_json:
            base = ["json_match", "json_field_accuracy", "json_valid"] + base
        if references and not is_json and np.median([len(r.split()) for r in references]) > 8:
            base = ["rouge_l", "token_f1", "exact_match", "bleu", "chrf"]  # free text: exact match is ~0
        chosen = [TEXT_METRICS[name]() for name in base]
        if is_labels:
            chosen = label_metrics(references) + chosen
        primary = chosen[0].name
    if schema is not None:
        chosen.append(mean_metric("json_schema_valid", json_schema_check(schema),
                                  "answer is JSON that validates against the given schema"))
    return chosen, primary
