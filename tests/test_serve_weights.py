"""The transformers engine's `--weights` setting: the dtype each kind of served model loads in, the refusal of
bf16 for a merged adapter, and `auto` following the table in serve/engines/weights.py."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from test_serve_inference import HELLO, Source, answer_on, save_full, save_lora

pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """The tiny base, a LoRA adapter (served unmerged), an IA3 adapter (merged) and a full fine-tune."""
    from transformers import AutoModelForCausalLM

    from hone.config import MethodSection
    from hone.methods.artifact import save_tuned
    from hone.methods.registry import apply_method

    root = tmp_path_factory.mktemp("weights")
    cfg = MethodSection(name="ia3")
    save_tuned(apply_method(AutoModelForCausalLM.from_pretrained(tiny_model), cfg), cfg, root / "ia3")
    return {"base": tiny_model, "lora": save_lora(tiny_model, root / "lora", 1),
            "ia3": root / "ia3", "full": save_full(tiny_model, root / "full")}


def loaded_dtypes(engine, served) -> dict[str, set]:
    """Parameter dtypes of what the engine holds: the shared base's own weights, the adapter's, the full model's."""
    base = engine._bases[str(served["base"])].model
    params = dict(base.named_parameters())
    own = {name: entry.model for name, entry in engine._tuned.items() if entry.model is not None}
    full = own[str(served["full"].resolve())]
    return {"base": {p.dtype for n, p in params.items() if "lora_" not in n},
            "adapter": {p.dtype for n, p in params.items() if "lora_" in n},
            "full": {p.dtype for p in full.parameters()}}


def ask(engine, served, name: str) -> str:
    tuned = None if name == "base" else str(served[name])
    return answer_on(engine, Source(name, str(served["base"]), tuned, "acme", 0), HELLO, 4)


def refusal(engine, served, name: str) -> Exception:
    """The error a greedy request for `name` ends with."""
    import threading

    from hone.data.render import prompt_for_generation
    from hone.serve.generation import Job, Sampling

    source = Source(name, str(served["base"]), str(served[name]), "acme", 0)
    done, events = threading.Event(), []
    prompt = engine.encode(source, prompt_for_generation(engine.tokenizer(source), HELLO))
    engine.submit(Job(source, [prompt], 1, [4], [], Sampling(0.0),
                      lambda e: (events.append(e), e[0] in ("done", "error") and done.set())))
    assert done.wait(120) and events[-1][0] == "error", events
    return events[-1][1]


@pytest.mark.parametrize("weights", ["fp32", "bf16", "fp16"])
def test_weights_setting_reaches_the_loaded_models(served, weights):
    """Base and full fine-tune load in the asked dtype; the unmerged adapter stays fp32 on a bf16/fp16 base."""
    from hone.serve.engine import Engine
    from hone.serve.engines.weights import DTYPES

    engine = Engine(max_tuned=4, batch_window=0.0, threads=1, weights=weights)
    try:
        for name in ("base", "lora", "full"):
            assert isinstance(ask(engine, served, name), str)
        dtypes = loaded_dtypes(engine, served)
        assert dtypes == {"base": {DTYPES[weights]}, "adapter": {torch.float32}, "full": {DTYPES[weights]}}
    finally:
        engine.close()


def test_bf16_for_a_merged_adapter_is_refused_in_one_line_and_fp16_is_served(served):
    from hone.serve.engine import Engine

    refused = Engine(batch_window=0.0, threads=1, weights="bf16")
    served_fp16 = Engine(batch_window=0.0, threads=1, weights="fp16")
    try:
        error = str(refusal(refused, served, "ia3"))
        assert error.startswith("--weights bf16 (HONE_SERVE_WEIGHTS) cannot serve an adapter merged")
        assert "choose auto, fp32, fp16" in error and "\n" not in error
        assert refused.loaded() == []                       # nothing half-loaded
        assert isinstance(ask(served_fp16, served, "ia3"), str)
        (entry,) = served_fp16._tuned.values()
        assert {p.dtype for p in entry.model.parameters()} == {torch.float16}
    finally:
        refused.close()
        served_fp16.close()


@pytest.mark.parametrize("table", ["as measured", "bf16 and fp16 rows"])
def test_auto_follows_the_table_per_case_and_device(served, monkeypatch, table):
    """`auto` loads each case in its row's dtype for this device: the table as it stands, and one whose CPU
    rows say bf16 (shared) and fp16 (whole), so the check holds whatever the measured rows are."""
    from dataclasses import replace

    from hone.serve.engine import Engine
    from hone.serve.engines.weights import DTYPES, WEIGHTS, device_kind, pick_weights, weights_case

    here = device_kind("cpu")   # this machine's column: cpu_bf16 where the CPU has native bf16, else cpu
    if table != "as measured":
        monkeypatch.setitem(WEIGHTS, "shared", replace(WEIGHTS["shared"], **{here: "bf16"}))
        monkeypatch.setitem(WEIGHTS, "whole", replace(WEIGHTS["whole"], **{here: "fp16"}))

    assert weights_case(None) == "shared" and weights_case(served["lora"], shared=True) == "shared"
    assert weights_case(served["ia3"]) == "merged" and weights_case(served["full"]) == "whole"
    for case, row in WEIGHTS.items():
        assert pick_weights("auto", case, "cuda") == row.cuda
        assert pick_weights("auto", case, "cpu") == getattr(row, here)
        assert not any(row.refusal(d) for d in (row.cpu, row.cpu_bf16, row.cuda))   # auto never picks a refused one
    engine = Engine(max_tuned=4, batch_window=0.0, threads=1)   # auto
    try:
        for name in ("base", "lora", "full", "ia3"):
            ask(engine, served, name)
        dtypes = loaded_dtypes(engine, served)
        assert dtypes["base"] == {DTYPES[getattr(WEIGHTS["shared"], here)]} and dtypes["adapter"] == {torch.float32}
        assert dtypes["full"] == {DTYPES[getattr(WEIGHTS["whole"], here)]}
        merged = engine._tuned[str(served["ia3"].resolve())].model
        assert {p.dtype for p in merged.parameters()} == {DTYPES[getattr(WEIGHTS["merged"], here)]}
    finally:
        engine.close()


def test_the_setting_comes_from_the_option_or_environment_and_a_bad_value_is_refused(cli, monkeypatch):
    from hone.serve.engines.table import EngineRouter
    from hone.serve.settings import ServeSettings

    monkeypatch.setenv("HONE_SERVE_WEIGHTS", "bf16")
    settings = ServeSettings.from_env()
    assert settings.weights == "bf16" and settings.to_env()["HONE_SERVE_WEIGHTS"] == "bf16"
    assert EngineRouter(ServeSettings.from_env(weights="fp16", engine="transformers")).engine("transformers").weights \
        == "fp16"
    result = cli("serve", "--weights", "bf8")
    assert result.returncode == 2
    assert "--weights bf8 (HONE_SERVE_WEIGHTS): choose one of auto, fp32, bf16, fp16" in result.stderr
