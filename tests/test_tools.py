"""Function calling and reasoning, from an OpenAI fine-tuning file to `tool_calls` the official client parses."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fastapi import Request  # noqa: F401 - the router's dependency below is annotated with it, read by name

from hone.data.load import load_records, load_with_report
from hone.data.render import IGNORE, tokenize_chat
from hone.data.tools import parse_answer

LOOKUP = {"type": "function", "function": {
    "name": "lookup_order", "description": "Status of an order",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string", "pattern": "^A-[0-9]{4}$"}},
                   "required": ["order_id"], "additionalProperties": False}}}
REFUND = {"type": "function", "function": {
    "name": "refund_order", "parameters": {"type": "object", "properties": {
        "order_id": {"type": "string", "pattern": "^A-[0-9]{4}$"}, "reason": {"type": "string", "enum": ["damaged", "late"]}},
        "required": ["order_id", "reason"]}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup_order", "arguments": '{"order_id": "A-1234"}'}}
# A record exactly as OpenAI's function-calling fine-tuning guide writes one: a call with no content,
# the tool's reply, the final answer.
OPENAI_RECORD = {"messages": [{"role": "user", "content": "Where is order A-1234?"},
                              {"role": "assistant", "tool_calls": [CALL]},
                              {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "shipped"}'},
                              {"role": "assistant", "content": "Order A-1234 has shipped."}],
                 "tools": [LOOKUP, REFUND], "parallel_tool_calls": False}


def write(path, *records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def tokenizer_of(model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def trained_text(tokenizer, example) -> str:
    return tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label != IGNORE])


# -- data --------------------------------------------------------------------------------------------

def test_openai_function_calling_file_checks_without_a_traceback_and_shows_the_marked_example(tmp_path, tiny_model):
    path = write(tmp_path / "fc.jsonl", OPENAI_RECORD)
    done = subprocess.run([sys.executable, "-m", "hone.cli", "data", "check", str(path), "--model", str(tiny_model)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "no problems found" in done.stdout
    assert "rendered example (line 1; trained tokens in [[ ]])" in done.stdout
    assert '[[```tool_call\n{"name": "lookup_order", "arguments": {"order_id": "A-1234"}}\n```<|im_end|>]]' in \
        done.stdout.replace("\n\n", "\n")


def test_legacy_functions_and_sharegpt_function_calls_read_as_openai_tool_calls(tmp_path):
    legacy = {"functions": [LOOKUP["function"]], "messages": [
        {"role": "user", "content": "Where is A-1234?"},
        {"role": "assistant", "content": None, "function_call": {"name": "lookup_order", "arguments": '{"order_id": "A-1234"}'}},
        {"role": "function", "name": "lookup_order", "content": "shipped"},
        {"role": "assistant", "content": "It has shipped."}]}
    record = load_records(write(tmp_path / "legacy.jsonl", legacy), strict=True)[0]
    assert record.tools == [{"type": "function", "function": LOOKUP["function"]}]
    call, reply = record.messages[1], record.messages[2]
    assert call["tool_calls"][0]["function"]["name"] == "lookup_order"
    assert reply == {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"], "content": "shipped",
                     "name": "lookup_order"}
    sharegpt = {"tools": json.dumps([LOOKUP["function"]]), "conversations": [
        {"from": "human", "value": "Where is A-1234?"},
        {"from": "function_call", "value": json.dumps({"name": "lookup_order", "arguments": {"order_id": "A-1234"}})},
        {"from": "observation", "value": "shipped"}, {"from": "gpt", "value": "It has shipped."}]}
    record = load_records(write(tmp_path / "sharegpt.jsonl", sharegpt), strict=True)[0]
    assert [m["role"] for m in record.messages] == ["user", "assistant", "tool", "assistant"]
    assert json.loads(record.messages[1]["tool_calls"][0]["function"]["arguments"]) == {"order_id": "A-1234"}
    assert record.messages[2]["tool_call_id"] == record.messages[1]["tool_calls"][0]["id"]


def test_reasoning_fields_and_thinking_parts_become_reasoning_content(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "2+2?"},
                          {"role": "assistant", "reasoning_content": "Two and two.", "content": "4"}]},
            {"messages": [{"role": "user", "content": "3+3?"},
                          {"role": "assistant", "content": [{"type": "thinking", "thinking": "Three and three."},
                                                            {"type": "text", "text": "6"}]}]}]
    records, report = load_with_report(write(tmp_path / "r.jsonl", *rows))
    assert report.problems == 0
    assert [(r.messages[1]["reasoning_content"], r.messages[1]["content"]) for r in records] == \
        [("Two and two.", "4"), ("Three and three.", "6")]


# -- rendering ---------------------------------------------------------------------------------------

def test_hone_tool_template_trains_calls_and_answers_but_not_tool_replies(tmp_path, tiny_model):
    tokenizer = tokenizer_of(tiny_model)
    record = load_records(write(tmp_path / "fc.jsonl", OPENAI_RECORD))[0]
    example = tokenize_chat(tokenizer, record.messages, 1024, record.tools)
    text, trained = tokenizer.decode(example.input_ids), trained_text(tokenizer, example)
    assert '"name": "refund_order"' in text.split("<|im_end|>")[0]          # the schemas in the system turn
    assert '```tool_call\n{"name": "lookup_order", "arguments": {"order_id": "A-1234"}}\n```<|im_end|>' in trained
    assert "Order A-1234 has shipped.<|im_end|>" in trained
    assert "shipped\"}" in text and '{"status": "shipped"}' not in trained    # the reply is read, not trained
    assert "Where is order" not in trained


def test_reasoning_is_trained_or_masked_while_still_shown(tiny_model):
    tokenizer = tokenizer_of(tiny_model)
    messages = [{"role": "user", "content": "2+2?"},
                {"role": "assistant", "reasoning_content": "Two and two make four.", "content": "4"}]
    trained = tokenize_chat(tokenizer, messages, 256)
    masked = tokenize_chat(tokenizer, messages, 256, reasoning="mask")
    assert trained.input_ids == masked.input_ids
    assert "<think>\nTwo and two make four.\n</think>" in tokenizer.decode(masked.input_ids)
    assert "Two and two" in trained_text(tokenizer, trained)
    assert trained_text(tokenizer, masked) == "4<|im_end|>"


def test_a_template_that_knows_tools_gets_them_passed_through(tiny_model):
    tokenizer = tokenizer_of(tiny_model)
    tokenizer.chat_template = (
        "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}\n{% endif %}"
        "{% for m in messages %}<{{ m.role }}>{% if m.tool_calls %}{% for c in m.tool_calls %}CALL {{ c.function.name }}"
        " {{ c.function.arguments | tojson }}{% endfor %}{% else %}{{ m.content }}{% endif %}{{ eos_token }}"
        "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    messages = OPENAI_RECORD["messages"]
    example = tokenize_chat(tokenizer, messages, 512, [LOOKUP, REFUND])
    text = tokenizer.decode(example.input_ids)
    assert text.startswith("TOOLS:lookup_order;refund_order;") and "```tool_call" not in text
    assert 'CALL lookup_order {"order_id": "A-1234"}<|im_end|>' in trained_text(tokenizer, example)


def test_generated_calls_are_read_in_hone_hermes_and_bare_json_forms():
    want = [{"name": "lookup_order", "arguments": {"order_id": "A-1"}}]
    assert parse_answer('Let me check.\n```tool_call\n{"name": "lookup_order", "arguments": {"order_id": "A-1"}}\n```') \
        == (None, "Let me check.", want)
    assert parse_answer('<think>\nneed status\n</think>\n\n<tool_call>\n{"name": "lookup_order", '
                        '"arguments": {"order_id": "A-1"}}\n</tool_call>') == ("need status", "", want)
    assert parse_answer('{"name": "lookup_order", "parameters": {"order_id": "A-1"}}') == (None, "", want)
    assert parse_answer("```tool_call\n{not json\n```") == (None, "```tool_call\n{not json\n```", [])


# -- evaluation --------------------------------------------------------------------------------------

def test_tool_metrics_score_choice_validity_exactness_and_field_f1():
    from hone.data.records import ChatExample
    from hone.evaluation.compare import compare_answers
    from hone.evaluation.tools import tool_items, tool_metrics

    items = tool_items([ChatExample(OPENAI_RECORD["messages"], tools=[LOOKUP, REFUND])])
    assert len(items) == 2
    references = [i.answer for i in items]
    perfect = references
    wrong_args = ['```tool_call\n{"name": "lookup_order", "arguments": {"order_id": "B-1"}}\n```', "Sure."]
    comparison = compare_answers(tool_metrics(items * 3), "arguments_exact", references * 3, perfect * 3,
                                 wrong_args * 3)
    scores = {m.name: (m.base, m.tuned) for m in comparison.metrics}
    assert scores["tool_decision"] == (1.0, 1.0) and scores["function_choice"] == (1.0, 1.0)
    assert scores["arguments_valid"] == (0.0, 1.0) and scores["arguments_exact"] == (0.0, 1.0)
    assert scores["arguments_f1"] == (0.0, 1.0) and scores["answer_token_f1"][1] == 1.0
    exact = next(m for m in comparison.metrics if m.name == "arguments_exact")
    assert exact.interval == (1.0, 1.0) and exact.improved == 3


# -- serving -----------------------------------------------------------------------------------------

def test_stream_reader_sends_words_then_the_call_as_argument_deltas():
    from hone.serve.tools import StreamReader, plan_tools

    plan = plan_tools([LOOKUP], "auto", None)
    text = 'Checking.\n```tool_call\n{"name": "lookup_order", "arguments": {"order_id": "A-1234"}}\n```'
    reader = StreamReader(plan)
    deltas = [d for ch in text for d in reader.feed(ch)]
    tail, finish = reader.finish("stop")
    assert "".join(d.get("content", "") for d in deltas + tail).strip() == "Checking."
    calls = [d["tool_calls"][0] for d in deltas + tail if "tool_calls" in d]
    assert calls[0]["function"] == {"name": "lookup_order", "arguments": ""} and calls[0]["id"].startswith("call_")
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"order_id": "A-1234"}
    assert finish == "tool_calls"


@pytest.fixture(scope="module")
def tool_server(tiny_model, tmp_path_factory):
    """The tiny model tuned for 2 steps on an OpenAI function-calling file (the file as the guide writes
    it, trained unchanged), served by the inference router on loopback."""
    import socket
    import threading
    from contextlib import asynccontextmanager

    import uvicorn
    from fastapi import FastAPI
    from test_serve_inference import FakeCatalog, Source, current_org

    from hone.config import build_config
    from hone.objectives.sft import run_sft
    from hone.serve.engine import Engine
    from hone.serve.errors import install_error_handlers
    from hone.serve.inference import make_inference_router

    root = tmp_path_factory.mktemp("tool-run")
    data = write(root / "train.jsonl", *[OPENAI_RECORD] * 8)
    result = run_sft(build_config({
        "model": {"name": str(tiny_model)}, "output": str(root / "run"),
        "data": {"train": str(data), "validation": str(data), "max_length": 512},
        "method": {"name": "lora", "lora_r": 4, "lora_alpha": 8},
        "train": {"lr": 5e-3, "batch_size": 4, "micro_batch_size": 4, "threads": 1, "max_steps": 2},
        "eval": {"max_new_tokens": 8, "forgetting": False}}))
    catalog = FakeCatalog({"acme": [Source("tuned-tools", str(tiny_model), str(result.run_dir), "acme", 1700000000)]})
    started = threading.Event()

    @asynccontextmanager
    async def lifespan(app):
        started.set()
        yield

    app = FastAPI(lifespan=lifespan)
    install_error_handlers(app)
    engine = Engine(max_tuned=1, batch_window=0.01, max_batch=8, threads=1)

    def org(request: Request) -> str:
        return current_org(request)

    app.include_router(make_inference_router(catalog, org, engine))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert started.wait(30)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    server.should_exit = True
    thread.join(10)
    engine.close()


def openai_client(url):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=url, api_key="key-acme", max_retries=0, timeout=120,
                         _strict_response_validation=True)


def test_the_official_client_drives_a_two_step_tool_conversation(tool_server):
    import jsonschema

    client = openai_client(tool_server)
    messages = [{"role": "user", "content": "Where is order A-1234?"}]
    first = client.chat.completions.create(model="tuned-tools", messages=messages, tools=[LOOKUP, REFUND],
                                           tool_choice={"type": "function", "function": {"name": "lookup_order"}},
                                           max_tokens=40, temperature=0)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "lookup_order" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), LOOKUP["function"]["parameters"])
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"status": "shipped"}'}]
    second = client.chat.completions.create(model="tuned-tools", messages=messages, tools=[LOOKUP, REFUND],
                                            tool_choice="none", max_tokens=6, temperature=0)
    assert second.choices[0].message.tool_calls is None and isinstance(second.choices[0].message.content, str)
    assert second.choices[0].finish_reason in ("stop", "length")


def test_required_choice_streams_argument_deltas_the_client_assembles(tool_server):
    import jsonschema

    client = openai_client(tool_server)
    with client.chat.completions.stream(model="tuned-tools", messages=[{"role": "user", "content": "Refund A-1234"}],
                                        tools=[LOOKUP, REFUND], tool_choice="required", max_tokens=60,
                                        temperature=0) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (LOOKUP, REFUND)}
    jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])


def test_response_format_json_schema_constrains_the_answer_and_bad_tool_requests_are_400(tool_server):
    import jsonschema
    import openai

    client = openai_client(tool_server)
    schema = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]},
                                               "ok": {"type": "boolean"}},
              "required": ["city", "ok"], "additionalProperties": False}
    answer = client.chat.completions.create(
        model="tuned-tools", messages=[{"role": "user", "content": "A trip?"}], max_tokens=40, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "trip", "schema": schema}})
    jsonschema.validate(json.loads(answer.choices[0].message.content), schema)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tuned-tools", messages=[{"role": "user", "content": "x"}],
                                       tools=[LOOKUP], tool_choice={"type": "function", "function": {"name": "nope"}})
    assert caught.value.param == "tool_choice" and "`nope`" in str(caught.value)


def test_mask_reasoning_is_refused_where_it_cannot_apply(tmp_path):
    from hone.config import build_config
    from hone.errors import ConfigError
    from hone.objectives.checks import check_settings
    from hone.objectives.registry import OBJECTIVES

    config = build_config({"objective": "dpo", "data": {"train": str(tmp_path / "p.jsonl"), "mask_reasoning": True}})
    with pytest.raises(ConfigError, match="data.mask_reasoning applies only to objective sft, not dpo"):
        check_settings(config, OBJECTIVES["dpo"])
    check_settings(build_config({"data": {"mask_reasoning": True}}), OBJECTIVES["sft"])


@pytest.mark.parametrize("piece", [1, 3, 1000])
def test_reasoning_comes_back_apart_from_the_answer_streamed_or_not(piece):
    from hone.serve.tools import StreamReader, chat_message_out

    text = "<think>\nA refund needs the id.\n\nIt is given.\n</think>\n\nDone."
    reader = StreamReader(None)
    deltas = [d for i in range(0, len(text), piece) for d in reader.feed(text[i:i + piece])]
    tail, finish = reader.finish("stop")
    streamed = ["".join(d.get(key, "") for d in deltas + tail) for key in ("reasoning_content", "content")]
    assert streamed == ["A refund needs the id.\n\nIt is given.", "Done."] and finish == "stop"
    message, _ = chat_message_out(None, text, "stop")
    assert (message["reasoning_content"], message["content"]) == tuple(streamed)
