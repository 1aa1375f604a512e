"""The vLLM engine (`hone serve --engine vllm`): vLLM's server as a child process, a LoRA run loaded into it
through its dynamic-adapter endpoint; skipped, with its name, where vLLM is not installed (`make vllm`)."""
from __future__ import annotations

import pytest

from test_serve_engines import submit
from test_serve_inference import HELLO, Source, reference_answer, save_lora

pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def vllm_model(tmp_path_factory):
    """A random Llama vLLM's CPU attention takes (head size 64; the tiny model's 16 it does not), fp32."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hone.models.catalogue import CATALOGUE, catalogue_file

    gguf = catalogue_file(CATALOGUE["smollm2-135m-instruct"])
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                         initializer_range=0.2)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vllm-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vllm(vllm_model):
    from hone.serve.engines.table import ENGINES

    if not ENGINES["vllm"].installed():
        pytest.skip(f"engine vllm is not installed ({ENGINES['vllm'].install})")
    from hone.serve.engines.vllm import VllmEngine

    engine = VllmEngine(extra_args=("--dtype", "float32", "--max-model-len", "512"))
    yield engine
    engine.close()


def test_vllm_answers_greedy_like_transformers_for_the_base_and_a_lora_loaded_on_demand(vllm, vllm_model, tmp_path):
    adapter = save_lora(vllm_model, tmp_path / "a1", 1, scale=30.0)
    base = Source("base", str(vllm_model), None, "system", 0)
    tuned = Source("ft:a1", str(vllm_model), str(adapter), "acme", 0)
    finished: list[str] = []
    answers = {}
    for name, source, folder in (("base", base, None), ("tuned", tuned, adapter)):
        done, events = submit(vllm, source, HELLO, 8, finished, name)
        assert done.wait(600) and events[-1][0] == "done", events[-1]
        answers[name] = events[-1][1][0]
        assert "".join(e[2] for e in events if e[0] == "delta") == answers[name].text   # streamed as it came
        assert answers[name].text == reference_answer(vllm_model, folder, HELLO, 8)
    assert answers["base"].text != answers["tuned"].text   # the adapter was applied
    assert vllm.loaded() == [vllm._key(tuned)]
    stop = answers["base"].text[2:4]
    done, events = submit(vllm, base, HELLO, 8, finished, "stop", stop=[stop])
    assert done.wait(120) and (events[-1][1][0].text, events[-1][1][0].finish_reason) == \
        (answers["base"].text[:answers["base"].text.find(stop)], "stop")


def test_vllm_settings_are_refused_for_other_engines(vllm_model):
    from hone.errors import ConfigError
    from hone.serve.engines.table import EngineRouter
    from hone.serve.settings import ServeSettings

    with pytest.raises(ConfigError, match="^--tensor-parallel, --pipeline-parallel and --vllm-arg apply only to the "
                                          "vllm engine"):
        EngineRouter(ServeSettings(engine="transformers", tensor_parallel=2, base_models={"m": str(vllm_model)}))
