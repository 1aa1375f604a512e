"""hone serve's engines: continuous batching in the transformers engine, window batching as its switch,
llama.cpp in a child process (skipped, with its name, where it is not installed), and the refusals."""
from __future__ import annotations

import os
import signal
import threading

import pytest

from test_serve_inference import HELLO, Source, reference_answer

pytest.importorskip("fastapi")
SHORT = [{"role": "user", "content": "Name a colour"}]


def submit(engine, source, messages, max_tokens: int, finished: list, name: str, on_delta=None, stop=(),
           **sampling):
    """Queue one job on `engine`; its name goes into `finished` when it ends. Returns (done, events)."""
    from hone.data.render import prompt_for_generation
    from hone.serve.generation import Job, Sampling

    done, events = threading.Event(), []

    def emit(event):
        events.append(event)
        if event[0] == "delta" and on_delta:
            on_delta(event)
        if event[0] in ("done", "error"):
            finished.append(name)
            done.set()

    n = sampling.pop("n", 1)
    prompt = engine.encode(source, prompt_for_generation(engine.tokenizer(source), messages))
    engine.submit(Job(source, [prompt], n, [max_tokens], list(stop), Sampling(**(sampling or {"temperature": 0.0})),
                      emit))
    return done, events


@pytest.mark.parametrize("continuous", [True, False])
def test_a_request_arriving_mid_answer_joins_the_batch_only_when_continuous(tiny_model, continuous):
    """Continuous: a short request that arrives while a long answer is generating joins it and ends first.
    Window batching (the switch): it waits for the long answer. Both answer as the model alone would."""
    from hone.serve.engine import Engine

    base = Source("base", str(tiny_model), None, "system", 0)
    engine = Engine(batch_window=0.0, threads=1, continuous=continuous)
    finished: list[str] = []
    second: dict = {}
    try:
        def arrive(event):
            if not second:
                second["job"] = submit(engine, base, SHORT, 6, finished, "short")
        long_done, long_events = submit(engine, base, HELLO, 60, finished, "long", on_delta=arrive)
        assert long_done.wait(120) and second["job"][0].wait(120)
        short_events = second["job"][1]
        expected = reference_answer(tiny_model, None, SHORT, 6)
        assert short_events[-1][0] == "done" and short_events[-1][1][0].text == expected
        assert long_events[-1][0] == "done" and long_events[-1][1][0].tokens == 60   # random weights never stop
        assert finished == (["short", "long"] if continuous else ["long", "short"])
    finally:
        engine.close()


def test_an_engine_that_is_not_installed_is_refused_in_one_line(monkeypatch, tiny_model):
    import importlib.util

    from hone.serve.engines.table import EngineNotInstalled, EngineRouter
    from hone.serve.settings import ServeSettings

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    with pytest.raises(EngineNotInstalled, match=r"^--engine llamacpp: llamacpp is not installed: make llamacpp$"):
        EngineRouter(ServeSettings(engine="llamacpp", base_models={"tiny": str(tiny_model)}))
    with pytest.raises(EngineNotInstalled, match="^--model-engine tiny=llamacpp: llamacpp is not installed"):
        EngineRouter(ServeSettings(model_engines={"tiny": "llamacpp"}, base_models={"tiny": str(tiny_model)}))
    router = EngineRouter(ServeSettings(engine="auto", base_models={"tiny": str(tiny_model)}))
    assert router.engine_name(Source("tiny", str(tiny_model), None, "system", 0)) == "transformers"


# -- llama.cpp ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llamacpp(tiny_model, tmp_path_factory):
    from hone.serve.engines.table import ENGINES

    if not ENGINES["llamacpp"].installed():
        pytest.skip(f"engine llamacpp is not installed ({ENGINES['llamacpp'].install})")
    from hone.serve.engines.llamacpp import LlamaCppEngine

    home = os.environ.get("HONE_HOME")
    os.environ["HONE_HOME"] = str(tmp_path_factory.mktemp("home"))   # the base's GGUF is cached here
    engine = LlamaCppEngine(threads=1, quant="f32")
    yield engine, Source("base", str(tiny_model), None, "system", 0)
    engine.close()
    if home is None:
        del os.environ["HONE_HOME"]
    else:
        os.environ["HONE_HOME"] = home


def test_llamacpp_answers_greedy_like_transformers_with_stop_strings_and_seeds(llamacpp, tiny_model):
    engine, base = llamacpp
    finished: list[str] = []
    done, events = submit(engine, base, HELLO, 8, finished, "plain")
    assert done.wait(120) and events[-1][0] == "done", events[-1]
    answer = events[-1][1][0]
    expected = reference_answer(tiny_model, None, HELLO, 8)
    assert (answer.text, answer.tokens, answer.finish_reason) == (expected, 8, "length")
    assert "".join(e[2] for e in events if e[0] == "delta") == answer.text   # streamed as it came
    stop = answer.text[2:4]
    done, events = submit(engine, base, HELLO, 8, finished, "stop", stop=[stop])
    assert done.wait(120) and (events[-1][1][0].text, events[-1][1][0].finish_reason) == \
        (answer.text[:answer.text.find(stop)], "stop")
    runs = []
    for seed in (7, 7, 8):
        done, events = submit(engine, base, HELLO, 8, finished, "seed", temperature=1.0, top_p=1.0, seed=seed, n=2)
        assert done.wait(120)
        runs.append([a.text for a in events[-1][1]])
    assert runs[0] == runs[1] and runs[0] != runs[2] and runs[0][0] != runs[0][1]


def test_killing_the_llamacpp_child_mid_request_fails_it_and_the_next_succeeds(llamacpp):
    engine, base = llamacpp
    finished: list[str] = []
    killed = []

    def kill(event):
        if not killed:
            killed.append(engine.process.pid)
            os.kill(engine.process.pid, signal.SIGKILL)
    done, events = submit(engine, base, HELLO, 400, finished, "killed", on_delta=kill)
    assert done.wait(60) and events[-1][0] == "error"
    assert "llama.cpp engine process died" in str(events[-1][1]) and "restarts" in str(events[-1][1])
    done, events = submit(engine, base, HELLO, 4, finished, "next")
    assert done.wait(60) and events[-1][0] == "done" and events[-1][1][0].tokens == 4
    assert engine.process.pid != killed[0]


def test_a_request_arriving_mid_answer_joins_the_llamacpp_batch_and_ends_first(llamacpp, tiny_model):
    """llama.cpp decodes many sequences together: a short request that arrives while a long answer is
    generating ends first (one at a time, it waited for the long one), and answers as it would alone."""
    engine, base = llamacpp
    finished: list[str] = []
    second: dict = {}

    def arrive(event):
        if not second:
            second["job"] = submit(engine, base, SHORT, 4, finished, "short")
    long_done, long_events = submit(engine, base, HELLO, 120, finished, "long", on_delta=arrive)
    assert long_done.wait(120) and second["job"][0].wait(120)
    short_events = second["job"][1]
    assert short_events[-1][0] == "done" and short_events[-1][1][0].text == reference_answer(tiny_model, None, SHORT, 4)
    assert long_events[-1][0] == "done" and long_events[-1][1][0].tokens == 120
    assert finished == ["short", "long"]
