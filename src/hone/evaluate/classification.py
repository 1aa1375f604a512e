"""Classification metrics: accuracy, macro-F1, the confusion matrix, and entity-level F1 for BIO tags.

Macro-F1 averages the per-class F1 with equal weight, so a model that always predicts the majority
class scores low on it even when its accuracy looks fine. Entity F1 (as seqeval and CoNLL score NER)
counts an entity as found only when its type and its exact span match.
"""
from __future__ import annotations

from collections import Counter


def accuracy(predictions: list[str], references: list[str]) -> float:
    return sum(p == r for p, r in zip(predictions, references)) / max(1, len(references))


def _f1(true_positive: int, predicted: int, actual: int) -> float:
    precision = true_positive / predicted if predicted else 0.0
    recall = true_positive / actual if actual else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def per_class_f1(predictions: list[str], references: list[str], labels: list[str] | None = None) -> dict[str, float]:
    labels = labels or sorted(set(references))
    predicted, actual = Counter(predictions), Counter(references)
    hits = Counter(r for p, r in zip(predictions, references) if p == r)
    return {label: _f1(hits[label], predicted[label], actual[label]) for label in labels}


def macro_f1(predictions: list[str], references: list[str], labels: list[str] | None = None) -> float:
    """Mean F1 over the classes that occur in `references` (or `labels`)."""
    scores = per_class_f1(predictions, references, labels)
    return sum(scores.values()) / max(1, len(scores))


def confusion_matrix(predictions: list[str], references: list[str], labels: list[str]) -> list[list[int]]:
    """rows: the true label, columns: the predicted label, both in the order of `labels`."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for p, r in zip(predictions, references):
        if p in index and r in index:
            matrix[index[r]][index[p]] += 1
    return matrix


def entity_spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """(type, start, end) of each entity in a BIO (or IOB2) tag sequence; a stray I- starts an entity."""
    spans, kind, start = set(), None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, name = tag.partition("-")
        continues = prefix == "I" and name == kind
        if kind is not None and not continues:
            spans.add((kind, start, i))
            kind = None
        if prefix in ("B", "I") and not continues:
            kind, start = name, i
    return spans


def entity_f1(predictions: list[list[str]], references: list[list[str]]) -> float:
    """Micro-averaged F1 over exact entity matches across all sentences."""
    hits = predicted = actual = 0
    for p, r in zip(predictions, references):
        found, gold = entity_spans(p), entity_spans(r)
        hits, predicted, actual = hits + len(found & gold), predicted + len(found), actual + len(gold)
    return _f1(hits, predicted, actual)


def classification_scores(predictions: list[str], references: list[str], labels: list[str]) -> dict:
    """The scores run.json records for a classifier on one split."""
    return {"accuracy": round(accuracy(predictions, references), 4),
            "macro_f1": round(macro_f1(predictions, references, [l for l in labels if l in set(references)]), 4),
            "confusion_matrix": {"labels": labels, "rows": confusion_matrix(predictions, references, labels)}}
