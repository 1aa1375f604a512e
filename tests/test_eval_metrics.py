"""Every metric against values computed by hand (the arithmetic is in the comments)."""
import math

import numpy as np
import pytest
import sacrebleu

from hone.errors import UserError
from hone.evaluation.metrics import (TEXT_METRICS, accuracy, confusion_matrix, custom_metric, json_field_accuracy,
                                   json_match, json_schema_check, json_valid, label_metrics, looks_like_labels,
                                   macro_f1, pick_metrics, rouge_l, token_f1)


def corpus(name, predictions, references):
    metric = TEXT_METRICS[name]()
    return metric.score(metric.statistics(predictions, references))


def test_token_f1_counts_shared_normalised_words():
    # pred words {cat, sat} ("The" is an article, "." punctuation); ref {cat, sat, on, mat}:
    # precision 2/2, recall 2/4 -> F1 = 2 * 1 * 0.5 / 1.5 = 2/3
    assert token_f1("The cat sat.", "a cat sat on the mat") == pytest.approx(2 / 3)
    assert token_f1("Paris", "paris!") == 1.0
    assert token_f1("Rome", "Paris") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("", "x") == 0.0


def test_rouge_l_is_the_f_measure_of_the_longest_common_subsequence():
    # LCS("the cat sat", "the cat sat on") = 3: precision 3/3, recall 3/4 -> F = 1.5 / 1.75 = 6/7
    assert rouge_l("the cat sat", "the cat sat on") == pytest.approx(6 / 7)
    # LCS("b a c", "a b c") = 2: precision = recall = 2/3
    assert rouge_l("b a c", "a b c") == pytest.approx(2 / 3)


def test_bleu_matches_the_hand_computed_geometric_mean_of_clipped_precisions():
    hyp, ref = "the cat sat on the mat", "the cat sat on a mat"
    # clipped n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths so no brevity penalty
    one = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25 * 100
    assert corpus("bleu", [hyp], [ref]) == pytest.approx(one, abs=1e-6)
    # corpus BLEU sums n-gram counts over sentences: with an exact 6-word match added,
    # precisions are 11/12, 8/10, 6/8, 4/6
    two = (11 / 12 * 8 / 10 * 6 / 8 * 4 / 6) ** 0.25 * 100
    assert corpus("bleu", [hyp, "a b c d e f"], [ref, "a b c d e f"]) == pytest.approx(two, abs=1e-6)


def test_chrf_and_bleu_equal_sacrebleus_public_corpus_scores():
    hyps = ["The order is for two pens.", "Ship it to Lisbon tomorrow", "no idea"]
    refs = ["The order is for 2 pens.", "Ship it to Lisbon on Monday", "Three chairs"]
    assert corpus("chrf", hyps, refs) == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert corpus("bleu", hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert corpus("chrf", ["abc def"], ["abc def"]) == pytest.approx(100.0)


def test_json_metrics_parse_compare_and_count_fields():
    ref = '{"name": "Ana", "date": "2024-01-02", "item": "pen", "quantity": 3}'
    pred = 'Here: {"name": "Ana", "date": "2024-01-02", "item": "pens", "quantity": "3"}'
    assert json_valid(pred) == 1.0 and json_valid("name: Ana") == 0.0
    assert json_match(pred, ref) == 0.0
    assert json_field_accuracy(pred, ref) == 0.5  # name and date right, item and quantity wrong
    # nested leaves (a.b), (a.c.0), (a.c.1): two of three right
    assert json_field_accuracy('{"a": {"b": 1, "c": [1, 3]}}', '{"a": {"b": 1, "c": [1, 2]}}') == pytest.approx(2 / 3)
    assert json_field_accuracy("not json", ref) == 0.0


def test_json_schema_check_validates_and_rejects_bad_schemas():
    check = json_schema_check({"type": "object", "required": ["name"], "properties": {"quantity": {"type": "integer"}}})
    assert check('{"name": "x", "quantity": 2}') == 1.0
    assert check('{"name": "x", "quantity": "2"}') == 0.0
    assert check('{"quantity": 2}') == 0.0 and check("nope") == 0.0
    with pytest.raises(UserError, match="not a valid JSON schema"):
        json_schema_check({"type": "objekt"})


def test_classification_metrics_by_hand():
    y_true = ["a", "a", "b", "b", "c"]
    y_pred = ["a", "b", "b", "b", "a"]
    assert accuracy(y_true, y_pred) == pytest.approx(3 / 5)
    # F1 per class: a 2*1/(2+1+1)=0.5, b 2*2/(4+1+0)=0.8, c 0 -> mean 1.3/3
    assert macro_f1(y_true, y_pred) == pytest.approx(1.3 / 3)
    labels, counts = confusion_matrix(y_true, y_pred)
    assert labels == ["a", "b", "c"]
    assert counts == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_generated_labels_are_compared_loosely_and_unknown_answers_count_wrong():
    refs = ["positive", "negative", "positive", "negative"]
    preds = ["Positive.", "negative", "I think negative", "positive"]
    acc, f1 = label_metrics(refs)
    rows = acc.statistics(preds, refs)
    assert acc.score(rows) == pytest.approx(0.5)
    # positive: tp 1, fp 1, fn 1 -> 0.5; negative: tp 1, fp 0, fn 1 -> 2/3
    assert f1.score(rows) == pytest.approx((0.5 + 2 / 3) / 2)


def test_metric_choice_follows_the_references():
    metrics, primary = pick_metrics(['{"a": 1}', '{"a": 2}'])
    assert primary == "json_match" and {"json_valid", "json_field_accuracy", "bleu", "chrf"} <= {m.name for m in metrics}
    _, primary = pick_metrics(["yes", "no", "yes", "no", "no", "yes"])
    assert primary == "accuracy" and looks_like_labels(["yes", "no", "yes", "no", "no", "yes"])
    long = ["this is a long free text answer with many more words than eight"] * 3
    assert pick_metrics(long)[1] == "rouge_l"
    with pytest.raises(UserError, match="unknown metric 'bleurt'"):
        pick_metrics(["x"], ["bleurt"])


def test_custom_metric_by_dotted_path(tmp_path, monkeypatch):
    (tmp_path / "my_metrics.py").write_text("def starts_same(p, r):\n    return float(p[:1] == r[:1])\n"
                                            "def broken(p, r):\n    return 'yes'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    metric = custom_metric("my_metrics:starts_same")
    assert metric.score(metric.statistics(["abc", "xbc"], ["axx", "abc"])) == 0.5
    assert custom_metric("my_metrics.starts_same").name == "starts_same"
    with pytest.raises(UserError, match="cannot be imported"):
        custom_metric("my_metrics:missing")
    bad = custom_metric("my_metrics:broken")
    with pytest.raises(UserError, match="expected a number"):
        bad.statistics(["a"], ["b"])


def test_perplexity_aggregates_token_weighted():
    from hone.evaluation.perplexity import perplexity_metric

    rows = np.array([[2.0, 2], [4.0, 2]])  # 6 nats over 4 tokens
    assert perplexity_metric().score(rows) == pytest.approx(math.exp(1.5))
    assert perplexity_metric().item_score(rows).tolist() == pytest.approx([math.e, math.exp(2)])
