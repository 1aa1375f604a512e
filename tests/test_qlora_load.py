"""qlora's NF4 base quantized while loading computes exactly what quantizing after an fp32 load does."""
from __future__ import annotations

import pytest
import torch
from test_methods import tiny_biased_model  # noqa: F401 (fixture)

from hone.config import MethodSection
from hone.methods import load_base
from hone.methods.quantized import is_quantized, load_quantized, quantize_base
from hone.models.load import load_causal_lm

IDS = torch.tensor([[1, 500, 600, 700, 800, 900]])


@pytest.mark.parametrize("which", ["llama", "qwen2_with_biases"])
def test_streamed_nf4_base_equals_quantizing_after_load(which, tiny_model, tiny_biased_model):
    pytest.importorskip("bitsandbytes")
    folder = tiny_model if which == "llama" else tiny_biased_model
    streamed = load_quantized(folder)
    after = quantize_base(load_causal_lm(str(folder)), "nf4")
    assert is_quantized(streamed)
    assert not any(p.device.type == "meta" for p in streamed.parameters())
    assert streamed.get_output_embeddings().weight is streamed.get_input_embeddings().weight  # still tied
    with torch.no_grad():
        assert torch.equal(streamed(input_ids=IDS).logits, after(input_ids=IDS).logits)


def test_only_qlora_nf4_loads_quantized(tiny_model):
    pytest.importorskip("bitsandbytes")
    assert is_quantized(load_base(str(tiny_model), MethodSection(name="qlora")))
    assert not is_quantized(load_base(str(tiny_model), MethodSection(name="qlora", quantize="int8")))
    assert not is_quantized(load_base(str(tiny_model), MethodSection(name="lora")))
