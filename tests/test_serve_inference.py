"""hone serve's inference endpoints, called with the official `openai` client against a real uvicorn
server on loopback: a tiny Llama as the base, two LoRA adapters over it and a fully tuned copy."""
from __future__ import annotations

import socket
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
fastapi = pytest.importorskip("fastapi")
from fastapi import Request  # noqa: E402 - FastAPI reads the dependency's annotation by name


@dataclass(frozen=True)
class Source:   # the fields of hone.serve.catalog.ModelSource
    id: str
    base: str
    tuned: str | None
    owned_by: str
    created: int


class FakeCatalog:
    def __init__(self, models: dict[str, list[Source]]):
        self.models = models

    def list(self, org: str) -> list[Source]:
        return list(self.models.get(org, []))

    def resolve(self, org: str, model_id: str) -> Source | None:
        return next((m for m in self.models.get(org, []) if m.id == model_id), None)

    def delete(self, org: str, model_id: str) -> bool:
        found = self.resolve(org, model_id)
        if found is not None:
            self.models[org].remove(found)
        return found is not None


def current_org(request) -> str:   # a key is "key-<org>"
    from hone.serve.errors import APIError

    key = request.headers.get("authorization", "").removeprefix("Bearer ")
    if not key.startswith("key-"):
        raise APIError(401, "Incorrect API key provided", code="invalid_api_key")
    return key.removeprefix("key-")


def save_lora(base: Path, folder: Path, seed: int, scale: float = 1.0) -> Path:
    """A LoRA adapter with random (non-zero) weights, saved as training would save it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=8, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(scale)
    model.save_pretrained(folder)
    return folder


def save_full(base: Path, folder: Path) -> Path:
    """A 'fully fine-tuned' model: the base with its weights nudged, as its own model folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder


BASE_ID = "tiny-base"
A1 = "ft:tiny-base:acme:one:ftjob-a1"
A2 = "ft:tiny-base:acme:two:ftjob-a2"
FULL = "ft:tiny-base:acme:full:ftjob-f1"
OTHER = "ft:tiny-base:globex:theirs:ftjob-g1"
BROKEN = "ft:tiny-base:acme:broken:ftjob-b1"   # listed, but its files are gone


@pytest.fixture(scope="module")
def models(tiny_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tuned")
    return {"base": tiny_model, "a1": save_lora(tiny_model, root / "a1", 1), "a2": save_lora(tiny_model, root / "a2", 2),
            "full": save_full(tiny_model, root / "full")}


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    """The inference router on a uvicorn server in a thread, on a free loopback port; an LRU of 1."""
    import uvicorn
    from fastapi import FastAPI

    from hone.serve.engine import Engine
    from hone.serve.errors import install_error_handlers
    from hone.serve.inference import make_inference_router

    base = str(models["base"])
    catalog = FakeCatalog({
        "acme": [Source(BASE_ID, base, None, "system", 1700000000),
                 Source(A1, base, str(models["a1"]), "acme", 1700000001),
                 Source(A2, base, str(models["a2"]), "acme", 1700000002),
                 Source(FULL, base, str(models["full"]), "acme", 1700000003),
                 Source("ft:tiny-base:acme:gone:ftjob-x", base, str(models["a1"]), "acme", 1700000004),
                 Source(BROKEN, base, str(models["base"].parent / "missing"), "acme", 1700000006)],
        "globex": [Source(BASE_ID, base, None, "system", 1700000000),
                   Source(OTHER, base, str(models["a2"]), "globex", 1700000005)]})
    started = threading.Event()

    @asynccontextmanager
    async def lifespan(app):
        started.set()
        yield

    app = FastAPI(lifespan=lifespan)
    install_error_handlers(app)
    engine = Engine(max_tuned=1, batch_window=0.05, max_batch=8, threads=1)

    def org(request: Request) -> str:
        return current_org(request)

    router = make_inference_router(catalog, org, engine)
    app.include_router(router)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert started.wait(30)
    yield {"url": f"http://127.0.0.1:{sock.getsockname()[1]}/v1", "engine": engine, "catalog": catalog}
    server.should_exit = True
    thread.join(10)
    engine.close()


def client(server, org: str = "acme", strict: bool = True):
    return openai.OpenAI(base_url=server["url"], api_key=f"key-{org}", max_retries=0, timeout=120,
                         _strict_response_validation=strict)


HELLO = [{"role": "user", "content": "Say hello"}]


def reference_answer(base: Path, adapter: Path | None, messages, max_tokens: int) -> str:
    """Greedy text from a model loaded on its own (no engine, no server, no other adapter)."""
    from peft import PeftModel

    from hone.data.render import prompt_for_generation
    from hone.models.load import load_causal_lm, load_tokenizer

    model = load_causal_lm(str(base))
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    tokenizer = load_tokenizer(str(base))
    ids = tokenizer(prompt_for_generation(tokenizer, messages), add_special_tokens=False, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


# -- models -----------------------------------------------------------------------------------------

def test_models_list_shows_base_and_own_tuned_models_only(server):
    ids = [m.id for m in client(server).models.list()]
    assert ids[:4] == [BASE_ID, A1, A2, FULL] and OTHER not in ids
    model = client(server).models.retrieve(A1)   # ':' in the path
    assert (model.id, model.object, model.owned_by, model.created) == (A1, "model", "acme", 1700000001)


def test_unknown_or_foreign_model_is_404_in_openai_shape(server):
    for model_id in ("no-such-model", OTHER):
        with pytest.raises(openai.NotFoundError) as err:
            client(server).chat.completions.create(model=model_id, messages=HELLO, max_tokens=2)
        assert err.value.code == "model_not_found" and err.value.param == "model"
        assert f"The model `{model_id}` does not exist" in str(err.value)
        with pytest.raises(openai.NotFoundError):
            client(server).models.retrieve(model_id)


def test_delete_tuned_model_then_it_is_gone(server):
    gone = "ft:tiny-base:acme:gone:ftjob-x"
    deleted = client(server).models.delete(gone)
    assert (deleted.id, deleted.deleted) == (gone, True)
    with pytest.raises(openai.NotFoundError):
        client(server).chat.completions.create(model=gone, messages=HELLO, max_tokens=2)
    with pytest.raises(openai.PermissionDeniedError):
        client(server).models.delete(BASE_ID)
    with pytest.raises(openai.NotFoundError):
        client(server, "globex").models.delete(A1)


# -- chat -------------------------------------------------------------------------------------------

def test_chat_completion_counts_usage_with_the_tokenizer(server, models):
    from hone.data.render import prompt_for_generation
    from hone.models.load import load_tokenizer

    reply = client(server).chat.completions.create(model=A1, messages=HELLO, max_tokens=6, temperature=0)
    tokenizer = load_tokenizer(str(models["base"]))
    prompt_tokens = len(tokenizer(prompt_for_generation(tokenizer, HELLO), add_special_tokens=False)["input_ids"])
    assert reply.object == "chat.completion" and reply.model == A1 and reply.id.startswith("chatcmpl-")
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "length"   # random weights never stop
    assert choice.message.content == reference_answer(models["base"], models["a1"], HELLO, 6)
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt_tokens, 6)
    assert reply.usage.total_tokens == prompt_tokens + 6


def test_streamed_chat_is_openai_sse_and_matches_the_plain_answer(server):
    plain = client(server).chat.completions.create(model=A2, messages=HELLO, max_tokens=8, temperature=0)
    stream = client(server).chat.completions.create(model=A2, messages=HELLO, max_tokens=8, temperature=0,
                                                    stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert chunks[-2].choices[0].finish_reason == "length" and chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 8 and chunks[-1].usage == plain.usage
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content


def test_raw_sse_frames_end_with_done(server):
    import json
    import urllib.request

    body = {"model": BASE_ID, "messages": HELLO, "max_tokens": 3, "stream": True}
    request = urllib.request.Request(server["url"] + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Authorization": "Bearer key-acme", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    frames = raw.split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""] and all(f.startswith("data: {") for f in frames[:-2])
    assert len(frames) == 2 + 1 + 3 + 1   # role chunk, three tokens, the finish chunk


def test_n_choices_and_seeded_sampling_is_reproducible(server):
    ask = dict(model=A1, messages=HELLO, max_tokens=8, n=3, temperature=1.0, seed=1234)
    first, again = (client(server).chat.completions.create(**ask) for _ in range(2))
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) > 1   # n samples, not one answer copied
    other = client(server).chat.completions.create(**(ask | {"seed": 99}))
    assert [c.message.content for c in other.choices] != texts
    assert first.usage.completion_tokens == 24


def test_stop_string_truncates_the_answer_and_the_stream(server):
    plain = client(server).chat.completions.create(model=A1, messages=HELLO, max_tokens=10, temperature=0)
    text = plain.choices[0].message.content
    stop = text[3:6]
    cut = text[:text.find(stop)]
    reply = client(server).chat.completions.create(model=A1, messages=HELLO, max_tokens=10, temperature=0,
                                                   stop=[stop, "never-there"])
    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == (cut, "stop")
    chunks = list(client(server).chat.completions.create(model=A1, messages=HELLO, max_tokens=10, temperature=0,
                                                         stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == cut
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_max_completion_tokens_and_context_limit(server):
    reply = client(server).chat.completions.create(model=BASE_ID, messages=HELLO, max_completion_tokens=2,
                                                   temperature=0)
    assert reply.usage.completion_tokens == 2 and reply.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as err:
        client(server).chat.completions.create(model=BASE_ID, messages=HELLO, max_tokens=600)
    assert err.value.code == "context_length_exceeded" and "maximum context length is 512" in str(err.value)
    with pytest.raises(openai.BadRequestError) as err:
        client(server).chat.completions.create(model=BASE_ID, messages=HELLO, temperature=5)
    assert err.value.param == "temperature"


def test_a_model_that_cannot_load_fails_cleanly_streamed_or_not(server):
    with pytest.raises(openai.InternalServerError) as err:
        client(server).chat.completions.create(model=BROKEN, messages=HELLO, max_tokens=2)
    assert err.value.code == "model_load_failed" and "files are gone" in str(err.value)
    stream = client(server).chat.completions.create(model=BROKEN, messages=HELLO, max_tokens=2, stream=True)
    with pytest.raises(openai.APIError, match="files are gone"):
        list(stream)
    assert client(server).chat.completions.create(model=A1, messages=HELLO, max_tokens=2).choices   # still serving


# -- completions ------------------------------------------------------------------------------------

def test_completions_number_choices_per_prompt_and_stream(server):
    reply = client(server).completions.create(model=FULL, prompt=["Once upon", "The cat"], max_tokens=4, n=2,
                                              temperature=0)
    assert reply.object == "text_completion" and [c.index for c in reply.choices] == [0, 1, 2, 3]
    texts = [c.text for c in reply.choices]
    assert texts[0] == texts[1] and texts[2] == texts[3] and texts[0] != texts[2]   # greedy, two prompts
    assert reply.usage.completion_tokens == 16
    # text-completion chunks carry finish_reason null until the last one, as OpenAI's do; the client's
    # strict mode types it as never null, so the stream is read leniently
    chunks = list(client(server, strict=False).completions.create(model=FULL, prompt="Once upon", max_tokens=4,
                                                                  temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == texts[0] and chunks[-1].choices[0].finish_reason == "length"


# -- adapters, memory and concurrency ---------------------------------------------------------------

def test_two_adapters_with_an_lru_of_one_answer_as_each_alone(server, models):
    expected = {A1: reference_answer(models["base"], models["a1"], HELLO, 8),
                A2: reference_answer(models["base"], models["a2"], HELLO, 8),
                BASE_ID: reference_answer(models["base"], None, HELLO, 8)}
    assert len(set(expected.values())) == 3   # the adapters change the answer
    for model_id in (A1, A2, BASE_ID, A1, FULL, A2, A1):
        reply = client(server).chat.completions.create(model=model_id, messages=HELLO, max_tokens=8, temperature=0)
        if model_id in expected:
            assert reply.choices[0].message.content == expected[model_id], model_id
        if model_id != BASE_ID:
            loaded = server["engine"].loaded()
            assert len(loaded) == 1 and Path(loaded[0]).name == {A1: "a1", A2: "a2", FULL: "full"}[model_id]


def test_concurrent_requests_are_all_answered_correctly(server):
    asks = [(m, q) for m in (A1, BASE_ID, A1, A2) for q in ("Say hello", "Name a colour", "Count to three")]
    sequential = {}
    for model_id, question in set(asks):
        reply = client(server).chat.completions.create(model=model_id, messages=[{"role": "user", "content": question}],
                                                       max_tokens=6, temperature=0)
        sequential[(model_id, question)] = reply.choices[0].message.content
    answers: dict[int, str] = {}

    def ask(i: int, model_id: str, question: str) -> None:
        reply = client(server).chat.completions.create(model=model_id, messages=[{"role": "user", "content": question}],
                                                       max_tokens=6, temperature=0)
        answers[i] = reply.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i, *a)) for i, a in enumerate(asks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [answers.get(i) for i in range(len(asks))] == [sequential[a] for a in asks]


def test_held_back_keeps_possible_stop_starts_and_broken_characters():
    from hone.serve.generation import held_back

    assert held_back("hello wor", ["world"]) == 3
    assert held_back("hello", ["xyz"]) == 0
    assert held_back("abc\ufffd", []) == 1
    assert held_back("say EN", ["END"]) == 2   # "EN" may start "END"


def answer_on(engine, source, messages, max_tokens: int = 8) -> str:
    """Run one greedy job on `engine` directly and wait for its answer (`messages` may be raw text)."""
    from hone.data.render import prompt_for_generation
    from hone.serve.generation import Job, Sampling

    done, events = threading.Event(), []

    def emit(event):
        events.append(event)
        if event[0] in ("done", "error"):
            done.set()

    text = messages if isinstance(messages, str) else prompt_for_generation(engine.tokenizer(source), messages)
    prompt = engine.encode(source, text)
    engine.submit(Job(source, [prompt], 1, [max_tokens], [], Sampling(0.0), emit))
    assert done.wait(120)
    assert events[-1][0] == "done", events[-1]
    return events[-1][1][0].text


def test_adapters_share_one_base_and_other_methods_load_alone(models, tmp_path):
    import torch
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from hone.serve.engine import Engine

    torch.manual_seed(4)
    prompt_tuned = get_peft_model(AutoModelForCausalLM.from_pretrained(models["base"]),
                                  PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    with torch.no_grad():
        prompt_tuned.prompt_encoder["default"].embedding.weight.normal_(0, 1.0)
    prompt_tuned.save_pretrained(tmp_path / "prompt")
    base = str(models["base"])
    a1, a2 = (Source(k, base, str(models[k]), "acme", 0) for k in ("a1", "a2"))
    prompt = Source("prompt", base, str(tmp_path / "prompt"), "acme", 0)
    plain = Source("base", base, None, "system", 0)
    engine = Engine(max_tuned=2, batch_window=0.0, threads=1)
    try:
        expected = {s.id: answer_on(engine, s, HELLO) for s in (plain, a1, a2)}
        assert expected["a1"] == reference_answer(models["base"], models["a1"], HELLO, 8)
        assert [Path(p).name for p in engine.loaded()] == ["a1", "a2"]
        assert answer_on(engine, a1, HELLO) == expected["a1"]          # a1 used last: a2 goes next
        tuned = answer_on(engine, prompt, "The cat")
        assert [Path(p).name for p in engine.loaded()] == ["a1", "prompt"]
        assert tuned != answer_on(engine, plain, "The cat")            # the virtual tokens are on
        assert {s.id: answer_on(engine, s, HELLO) for s in (plain, a1, a2)} == expected
        engine.unload(a1)
        assert answer_on(engine, plain, HELLO) == expected["base"]
    finally:
        engine.close()


def test_requests_for_different_adapters_share_one_generate_call(models):
    from hone.serve.engine import Engine

    base = str(models["base"])
    sources = [Source("base", base, None, "system", 0)] + [Source(k, base, str(models[k]), "acme", 0) for k in ("a1", "a2")]
    expected = [reference_answer(models["base"], None, HELLO, 8),
                reference_answer(models["base"], models["a1"], HELLO, 8),
                reference_answer(models["base"], models["a2"], HELLO, 8)]
    engine = Engine(max_tuned=2, batch_window=2.0, threads=1)   # a wide window: all three land in it
    try:
        assert together(engine, sources) == expected
        assert engine.calls == 1
    finally:
        engine.close()


def together(engine, sources) -> list[str]:
    """The answers of one request per source, submitted within the engine's batch window: one batch."""
    from hone.data.render import prompt_for_generation
    from hone.serve.generation import Job, Sampling

    results: dict[int, list] = {}
    done = threading.Event()

    def emit_for(i):
        def emit(event):
            if event[0] in ("done", "error"):
                results[i] = event[1]
                if len(results) == len(sources):
                    done.set()
        return emit

    calls = engine.calls
    for i, source in enumerate(sources):
        prompt = engine.encode(source, prompt_for_generation(engine.tokenizer(source), HELLO))
        engine.submit(Job(source, [prompt], 1, [8], [], Sampling(0.0), emit_for(i)))
    assert done.wait(120)
    assert engine.calls == calls + 1   # one prefill: every row joined the same batch
    return [results[i][0].text for i in range(len(sources))]


def test_a_hone_lora_run_is_served_from_its_run_folder_as_training_left_it(tiny_model, chat_files, tmp_path):
    import torch

    from hone.config import build_config
    from hone.data.render import prompt_for_generation
    from hone.objectives.sft import run_sft
    from hone.serve.engine import Engine
    from hone.methods.artifact import load_run_model

    config = build_config({
        "model": {"name": str(tiny_model)}, "output": str(tmp_path / "run"),
        "data": {"train": str(chat_files["train"]), "validation": str(chat_files["validation"]),
                 "test": str(chat_files["test"]), "max_length": 64},
        "method": {"name": "lora", "lora_r": 4, "lora_alpha": 8},
        "train": {"lr": 5e-2, "batch_size": 8, "micro_batch_size": 8, "threads": 1, "max_steps": 3},
        "eval": {"max_new_tokens": 4}})
    run = run_sft(config).run_dir
    question = [{"role": "user", "content": "Reverse apple"}]
    merged, tokenizer = load_run_model(run)   # what `hone eval` and `hone chat` run
    ids = tokenizer(prompt_for_generation(tokenizer, question), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = merged.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    engine = Engine(max_tuned=2, batch_window=0.0, threads=1)
    try:
        served = answer_on(engine, Source("ft:run", str(tiny_model), str(run), "acme", 0), question)
        assert [Path(p).name for p in engine.loaded()] == ["adapter"]    # the LoRA went onto the shared base
        assert served == expected
    finally:
        engine.close()


def test_a_model_tuned_again_runs_on_its_parents_merged_weights(models, tmp_path):
    """An adapter trained on top of a tuned model fits the parent's merged copy, not the root base the
    catalog names; the run record says which."""
    import json

    from hone.serve.engine import Engine
    from hone.methods.artifact import load_run_model

    parent = tmp_path / "parent-run"
    parent.mkdir()
    (parent / "run.json").write_text(json.dumps({"base_model": str(models["base"])}))
    save_lora(models["base"], parent / "adapter", 1)
    merged, tokenizer = load_run_model(parent)
    merged.save_pretrained(tmp_path / "merged")
    tokenizer.save_pretrained(tmp_path / "merged")
    child = tmp_path / "child-run"
    child.mkdir()
    (child / "run.json").write_text(json.dumps({"base_model": str(tmp_path / "merged")}))
    save_lora(tmp_path / "merged", child / "adapter", 7, scale=0.2)   # small: the parent's delta shows
    expected = reference_answer(tmp_path / "merged", child / "adapter", HELLO, 8)
    assert expected != reference_answer(models["base"], child / "adapter", HELLO, 8)
    engine = Engine(max_tuned=2, batch_window=0.0, threads=1)
    try:
        assert answer_on(engine, Source("ft:child", str(models["base"]), str(child), "acme", 0), HELLO) == expected
        assert answer_on(engine, Source("ft:parent", str(models["base"]), str(parent), "acme", 0), HELLO) == \
            reference_answer(models["base"], models["a1"], HELLO, 8)
    finally:
        engine.close()
