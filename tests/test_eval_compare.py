"""The paired bootstrap on constructed cases, item outcomes, and perplexity against transformers' loss."""
import math

import numpy as np
import pytest

from hone.evaluation.compare import compare_answers, compare_metric, paired_bootstrap
from hone.evaluation.metrics import TEXT_METRICS, mean_metric


def rows(values):
    return np.array(values, dtype=float).reshape(-1, 1)


EXACT = mean_metric("exact_match", lambda p, r: float(p == r))


def test_interval_matches_the_normal_approximation_on_a_constructed_case():
    # 200 items: base always wrong; tuned right on 100 of them. Difference 0.5; the item differences
    # are 0/1 with sd 0.5, so the standard error is 0.5/sqrt(200) = 0.0354 and a 95% interval
    # is about 0.5 +- 1.96 * 0.0354 = [0.431, 0.569].
    base, tuned = rows([0] * 200), rows([1] * 100 + [0] * 100)
    low, high = paired_bootstrap(EXACT, base, tuned, samples=4000, seed=1)
    assert low == pytest.approx(0.431, abs=0.015) and high == pytest.approx(0.569, abs=0.015)


def test_interval_is_paired_so_a_constant_gain_has_no_width():
    # Every item gains exactly 0.25 whatever its difficulty: an unpaired bootstrap would be wide
    # (the scores vary from 0 to 0.75); the paired difference is 0.25 in every resample.
    base = rows(np.linspace(0, 0.5, 50))
    low, high = paired_bootstrap(EXACT, base, base + 0.25, seed=3)
    assert low == pytest.approx(0.25) and high == pytest.approx(0.25)


def test_interval_is_seeded():
    base, tuned = rows([0, 1, 0, 1, 1, 0, 0, 1]), rows([1, 1, 0, 1, 0, 1, 1, 1])
    assert paired_bootstrap(EXACT, base, tuned, seed=7) == paired_bootstrap(EXACT, base, tuned, seed=7)
    assert paired_bootstrap(EXACT, base, tuned, seed=7) != paired_bootstrap(EXACT, base, tuned, seed=8)


def test_two_item_case_has_the_enumerable_interval():
    # diffs (1, 0): a resample's mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4,
    # so the 2.5% and 97.5% percentiles are 0 and 1.
    assert paired_bootstrap(EXACT, rows([0, 0]), rows([1, 0]), samples=2000) == (0.0, 1.0)


def test_comparison_counts_item_outcomes_and_flags_significance():
    result = compare_metric(EXACT, rows([1, 0, 1, 0] * 25), rows([0, 0, 1, 1] * 25))
    assert (result.improved, result.regressed, result.unchanged) == (25, 25, 50)
    assert result.difference == 0 and not result.significant
    clear = compare_metric(EXACT, rows([1] * 40 + [0] * 10), rows([0] * 50))
    assert clear.significant and clear.interval[0] > 0.6


def test_corpus_metrics_resample_statistics_not_sentence_scores():
    bleu = TEXT_METRICS["bleu"]()
    refs = [f"the parcel number {i} goes to house {i} today" for i in range(30)]
    base = [f"parcel {i} to house" for i in range(30)]
    comparison = compare_answers([bleu], "bleu", refs, refs, base, seed=0)
    metric = comparison.metrics[0]
    assert metric.tuned == pytest.approx(100.0)
    assert metric.interval[0] <= metric.difference <= metric.interval[1]
    assert comparison.tuned_items == pytest.approx([100.0] * 30)
    assert comparison.scores("base")["bleu"] == pytest.approx(metric.base)


def test_lower_is_better_metrics_count_a_drop_as_improvement():
    from hone.evaluation.perplexity import perplexity_metric

    tuned = np.array([[1.0, 1], [1.0, 1]])
    base = np.array([[2.0, 1], [1.0, 1]])
    result = compare_metric(perplexity_metric(), tuned, base)
    assert (result.improved, result.regressed, result.unchanged) == (1, 0, 1)
    assert result.difference == pytest.approx(math.e - math.exp(1.5))


def test_perplexity_statistics_match_transformers_loss(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hone.data.records import ChatExample, TextExample
    from hone.data.render import tokenize_chat
    from hone.evaluation.perplexity import perplexity_statistics

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    chat = ChatExample([{"role": "user", "content": "Reverse apple"}, {"role": "assistant", "content": "elppa"}])
    text = TextExample("Rivers carry stones to the ocean over many years.")
    stats = perplexity_statistics(model, tokenizer, [chat, text, chat], batch_size=2)
    assert stats[0].tolist() == pytest.approx(stats[2].tolist(), rel=1e-5)  # batching and padding change nothing
    encoded = tokenize_chat(tokenizer, chat.messages, 64)
    with torch.no_grad():
        loss = model(torch.tensor([encoded.input_ids]), labels=torch.tensor([encoded.labels])).loss
    assert stats[0][1] == encoded.trained_tokens
    assert stats[0][0] / stats[0][1] == pytest.approx(float(loss), rel=1e-4)
