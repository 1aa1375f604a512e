"""Scores for the classify and ner objectives: the run.json block of a classifier, and entity-level F1.

Accuracy, macro-F1 and the confusion matrix live in evaluation/metrics.py. Entity F1 (as seqeval and
CoNLL score NER) counts an entity as found only when its type and its exact span match.
"""
from __future__ import annotations

from hone.evaluation.generate import generate_batch
from hone.evaluation.metrics import accuracy, confusion_matrix, macro_f1, normalise_label


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
    """Micro-averaged F1 over exact entity matches across all sentences: 2TP / (2TP + FP + FN)."""
    hits = predicted = actual = 0
    for p, r in zip(predictions, references):
        found, gold = entity_spans(p), entity_spans(r)
        hits, predicted, actual = hits + len(found & gold), predicted + len(found), actual + len(gold)
    return 2 * hits / (predicted + actual) if predicted + actual else 0.0


def classification_scores(predictions: list[str], references: list[str], labels: list[str]) -> dict:
    """The scores run.json records for a classifier on one split."""
    present = [label for label in labels if label in set(references)]
    return {"accuracy": round(accuracy(references, predictions), 4),
            "macro_f1": round(macro_f1(references, predictions, present), 4),
            "confusion_matrix": {"labels": labels, "rows": confusion_matrix(references, predictions, labels)[1]}}


def zero_shot_labels(model, tokenizer, conversations: list[list[dict]], labels: list[str],
                     batch_size: int = 16) -> list[str]:
    """A base model's generated answers read as labels (equal up to case, spacing and a final full stop),
    as `hone eval` scores a model that has no classification head."""
    longest = max(len(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels)
    answers = generate_batch(model, tokenizer, conversations, longest + 4, batch_size)
    loose = {normalise_label(label): label for label in labels}
    return [loose.get(normalise_label(a), a) for a in answers]
