"""LoRA adapters per request in the llama.cpp engine: one base GGUF, each run's adapter GGUF applied to its own
rows only (skipped, with the engine's name, where llama.cpp or its LoRA converter is not installed)."""
from __future__ import annotations

from pathlib import Path

import pytest

from test_eval_engine import lively_model  # noqa: F401 - a fixture: the tiny shape with weights that answer
from test_serve_engines import submit
from test_serve_inference import HELLO, Source, reference_answer, save_lora

pytest.importorskip("fastapi")
PROMPTS = ["Say hello", "Name a colour", "Count to three", "Say hello to the whole wide world, please"]


def needs_llamacpp_lora():
    from hone.exporting.gguf import tool_missing

    if missing := tool_missing("llamacpp"):
        pytest.skip(f"engine llamacpp with LoRA adapters is not installed: {missing}")


def adapter_gguf(base: Path, adapter: Path) -> Path:
    """A peft adapter folder as llama.cpp's adapter GGUF (f32), by llama.cpp's own converter."""
    import sys

    from rich.console import Console

    from hone.exporting.gguf import LORA_CONVERTER, run_tool

    out = adapter / "adapter-f32.gguf"
    run_tool([sys.executable, str(LORA_CONVERTER), str(adapter), "--base", str(base), "--outtype", "f32",
              "--outfile", str(out)], "converting a LoRA adapter", Console(quiet=True))
    return out


def greedy(base: Path, adapter: Path | None, prompts: list[list[int]], tokens: int = 10) -> list[list[int]]:
    """transformers' fp32 greedy tokens of each prompt, the adapter applied unmerged by peft: the reference."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    out = []
    for prompt in prompts:
        ids = model.generate(torch.tensor([prompt]), max_new_tokens=tokens, do_sample=False, eos_token_id=2,
                             pad_token_id=2)[0, len(prompt):].tolist()
        out.append(ids)
    return out


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """One hone home for the module, so the base model is converted to GGUF once."""
    return tmp_path_factory.mktemp("lora-home")


@pytest.fixture(scope="module")
def adapters(lively_model, home, tmp_path_factory):  # noqa: F811 - the imported fixture
    """The lively tiny model's GGUF and two random LoRA adapters over it (folders, and GGUFs)."""
    needs_llamacpp_lora()
    from rich.console import Console

    from hone.exporting.gguf import converted_base

    root = tmp_path_factory.mktemp("lora-ggufs")
    with pytest.MonkeyPatch.context() as patch:   # the converted base goes to this module's home
        patch.setenv("HONE_HOME", str(home))
        out = {"gguf": converted_base(lively_model, "f32", Console(quiet=True)), "base": (None, None)}
        for name, seed in (("a1", 1), ("a2", 2)):
            lora = save_lora(lively_model, root / name, seed, scale=20.0)
            out[name] = (lora, adapter_gguf(lively_model, lora))
    return out


def chat_prompts(model: Path) -> list[list[int]]:
    from hone.data.render import prompt_for_generation
    from hone.models.load import load_tokenizer

    tokenizer = load_tokenizer(str(model))
    return [tokenizer(prompt_for_generation(tokenizer, [{"role": "user", "content": p}]),
                      add_special_tokens=False)["input_ids"] for p in PROMPTS]


def decode(model: Path, rows: list[tuple[list[int], str | None]], slots: int, tokens: int = 10) -> list[list[int]]:
    """Greedy tokens of each (prompt, adapter GGUF or None) row through one BatchDecoder over `model`."""
    from hone.llamacpp.batch import BatchDecoder, Sequence

    decoder = BatchDecoder(str(model), threads=1, slots=slots, n_ctx=2048)
    answers: list[list[int]] = [[] for _ in rows]
    try:
        for i, (prompt, adapter) in enumerate(rows):
            decoder.add(Sequence(i, prompt, tokens, frozenset({2}), adapter=adapter))
        while decoder:
            for i, token in decoder.step()[0]:
                answers[i].append(token)
    finally:
        decoder.close()
    return answers


def test_rows_of_three_models_in_one_decoder_answer_as_each_model_alone(adapters, lively_model):  # noqa: F811
    """Base rows and two adapters' rows interleaved through 4 slots of one decoder over the base GGUF (rows join as
    others leave, cached prompts of one adapter beside another's) give, row for row, the greedy tokens of
    transformers fp32 with that adapter (peft, unmerged); the adapters do change the answers."""
    prompts = chat_prompts(lively_model)
    names = ["base", "a1", "a2"]
    rows = [(i % len(prompts), names[i % 3]) for i in range(12)]
    mixed = decode(adapters["gguf"], [(prompts[p], str(adapters[n][1]) if adapters[n][1] else None)
                                      for p, n in rows], slots=4)
    alone = {n: greedy(lively_model, adapters[n][0], prompts) for n in names}
    assert mixed == [alone[n][p] for p, n in rows]
    # Each adapter answers differently from the base and from the other (else the test proves nothing).
    assert sum(alone["a1"][i] != alone["base"][i] for i in range(len(prompts))) >= 3, alone
    assert sum(alone["a1"][i] != alone["a2"][i] for i in range(len(prompts))) >= 3, alone


def test_a_cached_prompt_is_reused_by_its_own_adapter_only(adapters, lively_model):  # noqa: F811
    """One slot: the same prompt under the base, then a1, then a1 again, then the base: each answers as its own
    model, so a prefix computed under one adapter never serves another (the second a1 row reuses the first's)."""
    prompt = chat_prompts(lively_model)[3]
    a1 = str(adapters["a1"][1])
    got = decode(adapters["gguf"], [(prompt, None), (prompt, a1), (prompt, a1), (prompt, None)], slots=1)
    base, tuned = (greedy(lively_model, adapters[n][0], [prompt])[0] for n in ("base", "a1"))
    assert base != tuned and got == [base, tuned, tuned, base]


# -- through the engine, on hone runs ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_run(lively_model, home, tmp_path_factory) -> Path:  # noqa: F811
    """A finished LoRA run on the lively tiny model (2 steps at a high learning rate: it changed the answers)."""
    needs_llamacpp_lora()
    from test_export import tiny_run

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HONE_HOME", str(home))
        return tiny_run(tmp_path_factory.mktemp("lora-run"), lively_model, "lora", lora_r=4, lora_alpha=8)


def test_only_a_plain_lora_run_is_served_as_an_adapter(lora_run, tmp_path):
    import json
    import shutil

    from hone.llamacpp.gguf import lora_applies

    assert lora_applies(lora_run) is None
    dora = Path(shutil.copytree(lora_run, tmp_path / "dora", ignore=shutil.ignore_patterns("exports")))
    method = dora / "adapter" / "hone_method.json"
    method.write_text(json.dumps({**json.loads(method.read_text()), "method": "dora"}))
    assert lora_applies(dora) == "a dora run is served merged (llama.cpp applies plain LoRA adapters only)"


def test_a_lora_run_is_served_as_its_adapter_over_the_shared_base_beside_base_traffic(
        lora_run, home, lively_model, monkeypatch):  # noqa: F811
    """The LoRA run runs on the base's GGUF with its gguf-lora export applied. Interleaved requests for the base
    and the run each get their own model's greedy answer (transformers fp32, peft unmerged)."""
    from hone.serve.engines.llamacpp import LlamaCppEngine

    monkeypatch.setenv("HONE_HOME", str(home))   # the base converted once for the module
    base = Source("base", str(lively_model), None, "system", 0)
    lora = Source("lora", str(lively_model), str(lora_run), "acme", 0)
    expected = {"base": reference_answer(lively_model, None, HELLO, 8),
                "lora": reference_answer(lively_model, lora_run / "adapter", HELLO, 8)}
    assert expected["lora"] != expected["base"]   # the run changed the answer, so a missed adapter shows
    engine = LlamaCppEngine(threads=1, quant="f32")
    try:
        served = {name: engine.gguf(source) for name, source in (("base", base), ("lora", lora))}
        assert served["lora"].model == served["base"].model and served["base"].adapter is None
        assert served["lora"].adapter == lora_run / "exports" / "gguf-lora-f32" / "adapter-f32.gguf"
        finished: list[str] = []
        jobs = [(name, submit(engine, source, HELLO, 8, finished, f"{name}{i}"))
                for i in range(3) for name, source in (("lora", lora), ("base", base))]
        texts: dict[str, set] = {}
        for name, (done, events) in jobs:
            assert done.wait(120) and events[-1][0] == "done", events[-1]
            texts.setdefault(name, set()).add(events[-1][1][0].text)
        assert texts == {name: {text} for name, text in expected.items()}
    finally:
        engine.close()
