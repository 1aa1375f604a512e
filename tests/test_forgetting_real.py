"""The forgetting probe on the real embedded model (SmolLM2-135M-Instruct), kept to a few seconds."""
import pytest

from hone.evaluation.forgetting import load_probe, score_probe

pytestmark = pytest.mark.slow


def test_embedded_model_knows_capitals_well_above_chance():
    from hone.models.catalogue import resolve_model
    from hone.models.load import load_causal_lm, load_tokenizer

    base = resolve_model("smollm2-135m-instruct")
    capitals = [item for item in load_probe() if item.prompt.startswith("What is the capital of")]
    assert len(capitals) == 30 and all(len(item.choices) == 4 for item in capitals)
    scores = score_probe(load_causal_lm(base, "cpu", attention="eager"), load_tokenizer(base), capitals)
    # Measured: 20 of 30 (chance is 7.5); 15 or more by luck has probability ~2e-4.
    assert sum(scores.correct) >= 15
    assert all(lp < 0 for lp in scores.gold_logprob)
