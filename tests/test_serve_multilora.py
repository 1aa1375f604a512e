"""Many LoRA adapters in one batch (serve/engines/multilora.py): a mixed batch through the stacked LoRA step
gives each row what its own adapter gives alone, and the stacks follow adapters loaded and deleted."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

# rank, alpha, targets, rslora: different ranks (padded to the largest), scalings and layer sets in one batch
SHAPES = {"r4": (4, 8, ["q_proj", "v_proj"], False),
          "r8": (8, 32, "all-linear", False),
          "r16": (16, 16, ["q_proj", "k_proj", "o_proj", "gate_proj", "down_proj"], True)}


def save_adapter(base: Path, folder: Path, seed: int, r: int, alpha: int, targets, rslora: bool,
                 dora: bool = False) -> Path:
    """A LoRA adapter with random non-zero weights (B included), saved as training saves it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, use_rslora=rslora, use_dora=dora,
                        init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("multilora")
    found = {name: save_adapter(tiny_model, root / name, seed, *shape)
             for seed, (name, shape) in enumerate(SHAPES.items(), start=1)}
    found["dora"] = save_adapter(tiny_model, root / "dora", 9, 8, 16, ["q_proj", "v_proj"], False, dora=True)
    return found


def shared_base(tiny_model: Path, adapters: dict[str, Path], names: list[str]):
    """The base with `names` loaded onto it as the engine loads them (one PeftModel), stacks in sync."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from hone.serve.engines import multilora

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(adapters[names[0]]),
                                      adapter_name=names[0]).eval()
    for name in names[1:]:
        model.load_adapter(str(adapters[name]), adapter_name=name)
    multilora.sync(model)
    return model


def alone(model, ids: torch.Tensor, name: str | None) -> torch.Tensor:
    """Logits of one row through peft's own path with only `name` active (None: adapters off)."""
    from hone.serve.generation import adapter_scope

    with torch.inference_mode(), adapter_scope(model, name):
        return model(input_ids=ids[None]).logits[0]


def stacked(model, ids: torch.Tensor, names: list[str | None]) -> torch.Tensor:
    from hone.serve.engines.multilora import stacked_rows

    context = stacked_rows(model, names)
    assert context is not None
    with torch.inference_mode(), context:
        return model(input_ids=ids).logits


def test_mixed_batch_rows_equal_each_adapter_alone(tiny_model, adapters):
    model = shared_base(tiny_model, adapters, ["r4", "r8", "r16"])
    names = [None, "r4", "r8", "r16", "r8", None]
    ids = torch.randint(3, 1000, (len(names), 7), generator=torch.Generator().manual_seed(0))
    got = stacked(model, ids, names)
    expected = torch.stack([alone(model, row, name) for row, name in zip(ids, names)])
    assert len({round(float(expected[i].sum()), 3) for i in range(4)}) == 4   # every adapter changes the logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # batches that use some of the loaded adapters (all columns masked; the used columns selected, masked or
    # not: multilora.SELECT_BELOW), and one adapter for every row
    for subset in (["r16", None, "r4"], ["r8", None], ["r8", "r8"]):
        torch.testing.assert_close(stacked(model, ids[:len(subset)], subset),
                                   torch.stack([alone(model, ids[i], n) for i, n in enumerate(subset)]),
                                   rtol=1e-5, atol=1e-5)
    # outside the stacked block, peft's own path is back: the active adapter applies again
    torch.testing.assert_close(alone(model, ids[2], "r8"), expected[2])


def test_decode_step_with_cache_through_the_stacked_path(tiny_model, adapters):
    from transformers import DynamicCache

    from hone.serve.engines.multilora import stacked_rows

    model = shared_base(tiny_model, adapters, ["r4", "r8", "r16"])
    names = ["r16", None, "r4"]
    ids = torch.randint(3, 1000, (3, 6), generator=torch.Generator().manual_seed(1))
    cache = DynamicCache()
    with torch.inference_mode():
        with stacked_rows(model, names):
            model(input_ids=ids[:, :5], cache=cache, use_cache=True)
            step = model(input_ids=ids[:, 5:], cache=cache, use_cache=True).logits[:, -1]
    expected = torch.stack([alone(model, ids[i], n)[-1] for i, n in enumerate(names)])
    torch.testing.assert_close(step, expected, rtol=1e-5, atol=1e-5)


def test_stacks_follow_loaded_and_deleted_adapters_and_dora_keeps_peft(tiny_model, adapters):
    from hone.serve.engines import multilora

    model = shared_base(tiny_model, adapters, ["r4", "r8"])
    assert multilora.installed(model).names == ["r4", "r8"]
    model.load_adapter(str(adapters["r16"]), adapter_name="r16")
    assert multilora.stacked_rows(model, ["r16", "r4"]) is None    # not synced yet: not stacked
    multilora.sync(model)
    model.delete_adapter("r4")
    multilora.sync(model)
    assert multilora.installed(model).names == ["r8", "r16"]
    ids = torch.randint(3, 1000, (2, 5), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(stacked(model, ids, ["r16", "r8"]),
                               torch.stack([alone(model, ids[0], "r16"), alone(model, ids[1], "r8")]),
                               rtol=1e-5, atol=1e-5)
    model.load_adapter(str(adapters["dora"]), adapter_name="dora")
    multilora.sync(model)
    assert multilora.installed(model).names == ["r8", "r16"]       # DoRA is not stacked
    assert multilora.stacked_rows(model, ["dora", "r8"]) is None    # a batch with it keeps peft's path


@pytest.mark.parametrize("continuous", [True, False], ids=["continuous", "window"])
def test_engine_mixed_batch_takes_the_stacked_path(tiny_model, adapters, monkeypatch, continuous):
    """Through the engine (continuous batching, or one generate() call), a base row and three adapters in one
    batch answer as each model alone, and peft's per-adapter loop never runs."""
    from peft.tuners.lora import Linear as LoraLinear

    from hone.serve.engine import Engine
    from test_serve_inference import HELLO, Source, answer_on, reference_answer, together

    base = str(tiny_model)
    sources = [Source("base", base, None, "system", 0)] + [Source(n, base, str(adapters[n]), "acme", 0) for n in SHAPES]
    expected = [reference_answer(tiny_model, None, HELLO, 8)] + \
        [reference_answer(tiny_model, adapters[n], HELLO, 8) for n in SHAPES]
    assert len(set(expected)) == 4
    engine = Engine(max_tuned=3, batch_window=2.0, threads=1, continuous=continuous)   # all land in the window
    try:
        def refuse(*args, **kwargs):
            raise AssertionError("peft's mixed-batch loop ran")
        monkeypatch.setattr(LoraLinear, "_mixed_batch_forward", refuse)
        assert [answer_on(engine, s, HELLO) for s in sources] == expected
        assert together(engine, sources) == expected
    finally:
        engine.close()
