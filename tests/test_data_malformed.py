"""A corpus of malformed data: every case ends in a clear, located error and never a traceback."""
import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hone.data.load import load_records, load_with_report
from hone.errors import DataError

OK = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# (second line of a JSONL file whose first line is valid, the problem kind, words the message must contain)
CASES = [
    ('{"messages": [{"role": "asistant", "content": "x"}]}', "unrecognized_role",
     "messages[0].role is 'asistant'; expected system, user, assistant or tool"),
    ("not json", "invalid_json", "invalid JSON"),
    ('{"messages": [', "invalid_json", "invalid JSON"),
    ("[1, 2]", "data_type", "expected a JSON object, got a list"),
    ('"text"', "data_type", "got a string"),
    ("null", "data_type", "got null"),
    ("{}", "empty_record", "record is empty"),
    ('{"messages": []}', "empty_record", "empty"),
    ('{"messages": null, "id": 3}', "missing_messages_list", "non-empty `messages`"),
    ('{"messages": "hello", "id": 1}', "wrong_type", "`messages` must be a list"),
    ('{"messages": [{"content": "x"}]}', "message_missing_key", "has no `role`"),
    ('{"messages": [{"role": "user"}]}', "message_missing_key", "messages[0] has no `content`"),
    ('{"messages": [{"role": "user", "content": "x", "foo": 1}]}', "message_unrecognized_key", "'foo'"),
    ('{"messages": [{"role": "user", "content": null}, {"role": "assistant", "content": "a"}]}', "missing_content",
     "messages[0].content is null"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}', "missing_content",
     "messages[1].content is empty"),
    ('{"messages": [{"role": "user", "content": "q"}]}', "example_missing_assistant_message", "no assistant message"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}',
     "example_missing_assistant_message", "weight 1"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 2}]}',
     "invalid_weight", "weight must be 0 or 1"),
    ('{"messages": [{"role": "user", "content": "q", "weight": 1}, {"role": "assistant", "content": "a"}]}',
     "invalid_weight", "only on assistant"),
    ('{"weight": 1, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
     "invalid_weight", "example-level"),
    ('{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]}', "wrong_type",
     "content must be a string, got int"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": null}]}', "missing_content",
     "null"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"function": {"name": "f", '
     '"arguments": {"a": 1}}}]}]}', "invalid_tool_call", "arguments must be a JSON string"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"function": {"name": "f", '
     '"arguments": "{oops"}}]}]}', "invalid_tool_call", "not valid JSON"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}, {"role": "assistant", '
     '"content": "a"}]}', "message_missing_key", "tool_call_id"),
    ('{"messages": [{"role": "user", "content": [{"type": "image_url"}]}, {"role": "assistant", "content": "a"}]}',
     "wrong_type", "text part"),
    ('{"messages": [1, 2]}', "data_type", "messages[0] must be an object"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": "x"}',
     "wrong_type", "`tools` must be a list"),
    # function calling checked against the declared tools (issue 19)
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"id": "c1", "type": '
     '"function", "function": {"name": "refund", "arguments": "{}"}}]}], "tools": [{"type": "function", "function": '
     '{"name": "lookup", "parameters": {"type": "object"}}}]}', "undeclared_tool",
     "messages[1].tool_calls[0] calls `refund`, which `tools` does not declare (declared: lookup)"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"id": "c1", "type": '
     '"function", "function": {"name": "lookup", "arguments": "{\\"id\\": 7}"}}]}], "tools": [{"type": "function", '
     '"function": {"name": "lookup", "parameters": {"type": "object", "properties": {"id": {"type": "string"}}, '
     '"required": ["id"]}}}]}', "arguments_mismatch",
     "messages[1].tool_calls[0].function.arguments do not match the schema of `lookup`: ['id']: 7 is not of type 'string'"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"id": "c1", "type": '
     '"function", "function": {"name": "lookup", "arguments": "{}"}}]}], "tools": [{"type": "function", "function": '
     '{"name": "lookup", "parameters": {"type": "object", "required": ["id"]}}}]}', "arguments_mismatch",
     "'id' is a required property"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"id": "c1", "type": '
     '"function", "function": {"name": "f", "arguments": "[1]"}}]}]}', "invalid_tool_call",
     "messages[1].tool_calls[0].function.arguments must hold a JSON object, got list"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"id": "c1", "type": '
     '"function", "function": {"name": "f", "arguments": "{}"}}]}, {"role": "tool", "tool_call_id": "c2", "content": '
     '"r"}, {"role": "assistant", "content": "a"}]}', "unknown_tool_call_id",
     "messages[2].tool_call_id 'c2' answers no earlier call (open calls: c1)"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": [{"type": '
     '"function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]}', "invalid_tool",
     "tools[0].function.parameters is not a valid JSON schema ("),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": [{"type": '
     '"function", "function": {"description": "no name"}}]}', "invalid_tool", "tools[0].function.name must be"),
    ('{"messages": [{"role": "user", "content": "q", "reasoning_content": "hm"}, {"role": "assistant", "content": '
     '"a"}]}', "wrong_type", "messages[0].reasoning_content is only read on assistant messages"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning_content": 5}]}',
     "wrong_type", "messages[1].reasoning_content must be a string, got int"),
    ('{"prompt": "x", "completion": "y"}', "mixed_shapes", "'prompt_completion' but earlier records are 'chat'"),
    ('{"foo": 1, "bar": 2}', "unrecognized_shape", "unrecognised record with keys ['bar', 'foo']"),
]

# Whole files (the first line is not a valid record), for shapes other than chat.
FILES = [
    ('{"prompt": "p", "chosen": "same", "rejected": "same"}', "chosen_equals_rejected", "identical"),
    ('{"prompt": "p", "chosen": "a"}', "unrecognized_shape", "unrecognised record with keys ['chosen', 'prompt']"),
    ('{"instruction": "i", "output": null}', "wrong_type", "`output` must be a string, got null"),
    ('{"prompt": 3, "completion": "a"}', "wrong_type", "`prompt` must be a string, got int"),
    ('{"instruction": "", "output": "a"}', "missing_content", "`instruction` is empty"),
    ('{"input": {"messages": []}, "preferred_output": [], "non_preferred_output": []}', "missing_messages_list",
     "input.messages"),
    ('{"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": [{"role": "assistant", '
     '"content": "a"}, {"role": "assistant", "content": "b"}], "non_preferred_output": []}', "wrong_type",
     "exactly one assistant message"),
    ('{"text": "t", "label": [1]}', "wrong_type", "`label` must be a string or an integer"),
    ('{"text": "t", "label": null}', "wrong_type", "got null"),
    ('{"tokens": ["a", "b"], "tags": ["O"]}', "length_mismatch", "`tokens` has 2 items but `tags` has 1"),
    ('{"tokens": [], "tags": []}', "empty_record", "empty"),
    ('{"tokens": ["a"], "tags": [null]}', "wrong_type", "tags[0] must be a string"),
    ('{"text": 12}', "wrong_type", "`text` must be a string"),
    ('{"conversations": [{"from": "alien", "value": "x"}]}', "unrecognized_role", "conversations[0].from is 'alien'"),
    ('{"conversations": [{"from": "human"}, {"from": "gpt", "value": "a"}]}', "message_missing_key",
     "conversations[0].value"),
    ('{"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{oops"}, '
     '{"from": "gpt", "value": "a"}]}', "invalid_tool_call", "conversations[1].value is not valid JSON"),
    ('{"tools": "[{\\"name\\": \\"f\\"}]", "conversations": [{"from": "human", "value": "q"}, {"from": '
     '"function_call", "value": "{\\"name\\": \\"g\\", \\"arguments\\": {}}"}, {"from": "gpt", "value": "a"}]}',
     "undeclared_tool", "conversations[1].tool_calls[0] calls `g`"),
]


def write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


@pytest.mark.parametrize("line,kind,words", CASES)
def test_bad_chat_line_is_skipped_counted_and_named(tmp_path, line, kind, words):
    path = write(tmp_path / "train.jsonl", json.dumps(OK) + "\n" + line + "\n")
    records, report = load_with_report(path)
    assert len(records) == 1 and report.skipped == 1 and dict(report.counts) == {kind: 1}
    with pytest.raises(DataError) as caught:
        load_records(path, strict=True)
    message = str(caught.value)
    assert message.startswith(f"{path}:2: ") and words in message and "\n" not in message


@pytest.mark.parametrize("line,kind,words", FILES)
def test_bad_record_of_other_shapes_is_named(tmp_path, line, kind, words):
    path = write(tmp_path / "d.jsonl", line + "\n")
    with pytest.raises(DataError) as caught:
        load_records(path, strict=True)
    assert str(caught.value).startswith(f"{path}:1: ") and words in str(caught.value)
    _records_or_error(path, expect_kind=kind)


def _records_or_error(path, expect_kind=None):
    """Non-strict loading either returns records or raises a one-line DataError: never anything else."""
    try:
        records, report = load_with_report(path)
    except DataError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        if expect_kind:
            assert expect_kind in str(exc) or "no valid examples" in str(exc)
        return None
    assert report.valid == len(records) and report.valid + report.skipped == report.records
    return records


def test_encoding_problems(tmp_path):
    latin = write(tmp_path / "latin.jsonl", json.dumps(OK).encode() + b"\n" + '{"text": "caf\xe9"}'.encode("latin-1") + b"\n")
    records, report = load_with_report(latin)
    assert report.counts == {"bad_encoding": 1} and "latin.jsonl:2: not UTF-8" in str(report.first())
    utf16 = write(tmp_path / "u16.jsonl", json.dumps(OK).encode("utf-16"))
    with pytest.raises(DataError, match="UTF-16 encoded; save it as UTF-8"):
        load_records(utf16)


def test_broken_containers_are_located(tmp_path):
    with pytest.raises(DataError, match=r"a\.json:4: invalid JSON"):
        load_records(write(tmp_path / "a.json", '[\n {"text": "a"},\n {"text": \n'), strict=True)
    with pytest.raises(DataError, match=r"c\.csv:3: row has 3 cells but the header has 2 columns"):
        load_records(write(tmp_path / "c.csv", "prompt,completion\nq,a\nq,a,extra\n"), strict=True)
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_records(write(tmp_path / "p.parquet", b"PAR1 garbage"))
    with pytest.raises(DataError, match="file not found"):
        load_records(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="no valid examples"):
        load_records(write(tmp_path / "empty.jsonl", "\n\n"))
    with pytest.raises(DataError, match="unknown format 'chatml'"):
        load_records(write(tmp_path / "ok.jsonl", json.dumps(OK)), shape="chatml")


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_data_error(tmp_path, blob):
    for name in ("x.jsonl", "x.json", "x.csv"):
        _records_or_error(write(tmp_path / name, blob))


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
KEYS = st.sampled_from(["messages", "conversations", "prompt", "completion", "chosen", "rejected", "text", "label",
                        "tokens", "tags", "instruction", "input", "output", "question", "answer", "preferred_output",
                        "non_preferred_output", "role", "content", "weight", "tools"])


@FAST
@given(st.lists(st.dictionaries(KEYS, JSON, max_size=5), min_size=1, max_size=4))
def test_arbitrary_records_with_known_keys_load_or_fail_cleanly(tmp_path, records):
    path = write(tmp_path / "r.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    _records_or_error(path)
    try:
        load_records(path, strict=True)
    except DataError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc)


MESSAGE = st.fixed_dictionaries({}, optional={
    "role": st.sampled_from(["system", "user", "assistant", "tool", "asistant", "", "USER"]) | JSON,
    "content": st.text(max_size=6) | JSON, "weight": st.sampled_from([0, 1, 2, True, "1", None]),
    "tool_calls": JSON, "tool_call_id": st.text(max_size=3) | JSON, "name": st.text(max_size=3)})


@FAST
@given(st.lists(MESSAGE, max_size=5), st.sampled_from(["jsonl", "json", "csv"]))
def test_mutated_chat_messages_load_or_fail_cleanly(tmp_path, messages, kind):
    record = {"messages": messages}
    if kind == "jsonl":
        path = write(tmp_path / "m.jsonl", json.dumps(record) + "\n")
    elif kind == "json":
        path = write(tmp_path / "m.json", json.dumps([record, OK]))
    else:
        import csv
        import io

        buffer = io.StringIO()
        csv.writer(buffer).writerows([["messages"], [json.dumps(messages)]])
        path = write(tmp_path / "m.csv", buffer.getvalue())
    _records_or_error(path)


@pytest.mark.parametrize("content", ["not json\n", '{"messages": [{"role": "asistant", "content": "x"}]}\n',
                                     '{"foo": 1}\n'])
def test_cli_prints_one_line_and_exits_2_on_strict_check(tmp_path, content, cli):
    path = write(tmp_path / "bad.jsonl", content)
    result = cli("data", "check", str(path), "--strict", "--no-tokens")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith(f"error: {path}:1: ")


def test_cli_check_without_strict_reports_and_exits_1(tmp_path, cli):
    path = write(tmp_path / "mixed.jsonl", json.dumps(OK) + "\nnot json\n")
    result = cli("data", "check", str(path), "--no-tokens")
    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
    assert "invalid_json" in result.stdout and "mixed.jsonl:2" in result.stdout


# Hostile files (issue 24): each kind once ended in a traceback, a hang or a silent pass.

def _deep(depth: int, inner=None):
    value = inner if inner is not None else []
    for _ in range(depth):
        value = [value]
    return value


def _strict_error(path, **kw) -> str:
    with pytest.raises(DataError) as caught:
        load_records(path, strict=True, **kw)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("line,field", [
    ('{"text": "t", "label": ' + "9" * 5000 + "}", "`label`"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": -'
     + "1" * 4400 + "}]}", "`messages[1].weight`"),
])
def test_integer_over_the_int_string_limit_is_a_located_error(tmp_path, line, field):
    path = write(tmp_path / "big.jsonl", json.dumps(OK) + "\n" + line + "\n")
    message = _strict_error(path)
    assert message.startswith(f"{path}:2: invalid JSON (") and field in message and "write it as a string" in message
    records, report = load_with_report(path)
    assert len(records) == 1 and dict(report.counts) == {"invalid_json": 1}


def test_integer_over_the_limit_inside_a_csv_json_cell_or_tool_arguments_is_located(tmp_path):
    cell = json.dumps([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 10 ** 10}])
    cell = cell.replace(str(10 ** 10), "1" * 5000)
    csv_path = write(tmp_path / "m.csv", 'messages\n"' + cell.replace('"', '""') + '"\n')
    assert "m.csv:2: `messages` holds JSON Python cannot read" in _strict_error(csv_path)
    call = {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                  "function": {"name": "f", "arguments": '{"n": ' + "7" * 5000 + "}"}}]}
    record = {"messages": [{"role": "user", "content": "q"}, call, {"role": "tool", "tool_call_id": "c", "content": "r"},
                           {"role": "assistant", "content": "a"}]}
    path = write(tmp_path / "t.jsonl", json.dumps(record) + "\n")
    assert "t.jsonl:1: messages[1].tool_calls[0].function.arguments is not valid JSON" in _strict_error(path)


@pytest.mark.parametrize("record,words", [
    ({"messages": "[" * 1000 + "]" * 1000}, "`messages` holds JSON Python cannot read (nested too deeply"),
    ({**OK, "tools": _deep(600)}, "`tools[0][0]` is nested more than 64 levels deep"),
    ({"messages": [{"role": "user", "content": "q", "name": _deep(900)}, OK["messages"][1]]},
     "`messages[0].name` is nested more than 64 levels deep"),
    ({"text": "t", "label": "x", "meta": _deep(200, {"a": 1})}, "`meta[0][0]` is nested more than 64"),
])
def test_deep_nesting_is_a_located_error_not_a_recursion_error(tmp_path, record, words):
    path = write(tmp_path / "deep.jsonl", json.dumps(record) + "\n")
    message = _strict_error(path)
    assert message.startswith(f"{path}:1: ") and words in message
    _records_or_error(path)


def test_deep_nesting_past_the_parser_limit_in_a_json_file_is_located(tmp_path):
    path = write(tmp_path / "deep.json", '[{"text": "a"},\n' + "[" * 5000 + "]" * 5000 + "]")
    assert _strict_error(path).startswith(f"{path}:2: invalid JSON (nested too deeply")


@pytest.mark.parametrize("line,field", [
    ('{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "a"}]}',
     "`messages[0].content` holds a lone surrogate ('\\ud800' at character 1)"),
    ('{"prompt": "ok", "completion": "x\\udfffy"}', "`completion` holds a lone surrogate"),
    ('{"text": "t", "label": "a", "\\ud83d": 1}', "a key in `the record` holds a lone surrogate"),
])
def test_lone_surrogates_are_refused_at_validation(tmp_path, line, field):
    path = write(tmp_path / "s.jsonl", line + "\n")
    message = _strict_error(path)
    assert message.startswith(f"{path}:1: ") and field in message
    records_or_none = _records_or_error(path)
    assert not records_or_none
    pair = write(tmp_path / "pair.jsonl", '{"text": "smile \\ud83d\\ude00"}\n')  # a valid pair is text
    assert load_records(pair)[0].text == "smile \U0001F600"


def test_damaged_parquet_data_page_is_a_data_error_naming_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": [f"record number {i} " * 5 for i in range(5000)]}), path, row_group_size=1000)
    page = pq.ParquetFile(path).metadata.row_group(2).column(0).data_page_offset
    raw = bytearray(path.read_bytes())
    raw[page + 30: page + 200] = b"\xab" * 170
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as caught:
        load_records(path)
    assert str(caught.value).startswith(f"{path}: damaged Parquet data after row ") and "\n" not in str(caught.value)


def test_null_system_content_is_refused_at_validation(tmp_path):
    system = {"messages": [{"role": "system", "content": None}, *OK["messages"]]}
    path = write(tmp_path / "sys.jsonl", json.dumps(system) + "\n")
    assert _strict_error(path) == (f"{path}:1: messages[0].content is null; give the system message text or leave "
                                   "the message out")


def test_a_tool_call_turn_with_null_content_renders_and_trains_its_call(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    from hone.data.render import IGNORE, tokenize_chat

    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]}
    tools = {"messages": [{"role": "user", "content": "q"}, call, {"role": "tool", "tool_call_id": "c1", "content": "r"},
                          {"role": "assistant", "content": "done"}]}
    record = load_records(write(tmp_path / "tools.jsonl", json.dumps(tools) + "\n"))[0]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    example = tokenize_chat(tokenizer, record.messages, 512)
    trained = tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label != IGNORE])
    assert '"name": "lookup"' in trained and "done" in trained


def test_json_array_grammar_is_enforced_with_the_line(tmp_path):
    cases = {'[{"text": "a"},\n{"text": "b"},\n]': (3, "a trailing comma before ']'"),
             '[{"text": "a"}]\ngarbage': (2, "text after the closing ']'"),
             '[{"text": "a"},\n,{"text": "b"}]': (2, "a comma with no value before it"),
             '[{"text": "a"}\n{"text": "b"}]': (2, "expected ',' or ']' after a value"),
             '{"train": [{"text": "a"},]}': (1, "invalid JSON")}
    for i, (text, (line, words)) in enumerate(cases.items()):
        path = write(tmp_path / f"a{i}.json", text)
        message = _strict_error(path)
        assert message.startswith(f"{path}:{line}: invalid JSON") and words in message, message
    assert [r.text for r in load_records(write(tmp_path / "ok.json", '[ {"text": "a"} ,\n {"text": "b"} ]\n'))] == ["a", "b"]


def test_empty_and_blank_files_are_an_error_for_check(tmp_path, cli):
    from hone.data.quality import check_data

    for name, text in (("empty.jsonl", ""), ("blank.jsonl", "\n \n\n"), ("empty.json", "  \n")):
        path = write(tmp_path / name, text)
        with pytest.raises(DataError, match="no records: the file is empty or holds only blank lines"):
            check_data([path], strict=True)
        result = cli("data", "check", str(path), "--strict", "--no-tokens")
        assert result.returncode == 2 and result.stderr.startswith(f"error: {path}: no records")


def test_a_named_pipe_is_refused_without_hanging(tmp_path):
    import os

    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    # A child process first, so a hang (the old behaviour) fails the test instead of stalling the suite.
    result = subprocess.run([sys.executable, "-m", "hone.cli", "data", "check", str(fifo), "--no-tokens"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr == f"error: {fifo}: not a regular file (a named pipe, socket or " \
                                                       "device); save the data to a file\n"
    with pytest.raises(DataError, match="not a regular file"):
        load_records(fifo)


def test_a_file_name_over_255_characters_is_one_line(tmp_path, cli):
    path = tmp_path / ("x" * 300 + ".jsonl")
    with pytest.raises(DataError, match="cannot open .*check the path"):
        load_records(path)
    result = cli("data", "check", str(path), "--no-tokens")
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    long_ok = write(tmp_path / ("y" * 240 + ".jsonl"), json.dumps(OK) + "\n")  # legal name, long report names
    assert cli("data", "check", str(long_ok), "--no-tokens").returncode == 0


def _check_with_tokenizer(tmp_path, tiny_model, records, max_seq_len, strict=False):
    from transformers import AutoTokenizer

    from hone.data.quality import check_data

    path = write(tmp_path / "long.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    seen = []

    def counting(texts, **kw):
        seen.extend(len(t) for t in ([texts] if isinstance(texts, str) else texts))
        return tokenizer(texts, **kw)

    counting.apply_chat_template = tokenizer.apply_chat_template
    counting.chat_template = tokenizer.chat_template
    counting.eos_token = tokenizer.eos_token
    return check_data([path], tokenizer=counting, max_seq_len=max_seq_len, strict=strict), seen, path


def test_an_answer_past_max_seq_len_trains_no_token_and_is_reported(tmp_path, tiny_model):
    from hone.data.quality import has_errors
    from hone.errors import UserError

    huge = {"messages": [{"role": "user", "content": "word " * 1_000_000}, {"role": "assistant", "content": "ok"}]}
    report, _seen, path = _check_with_tokenizer(tmp_path, tiny_model, [OK, huge], 64)
    problems = report["files"][0]["validation"]["problems"]["trains_no_token"]
    assert [p["line"] for p in problems] == [2] and "this record trains no token" in problems[0]["message"]
    assert has_errors(report)
    with pytest.raises(UserError, match=r"long\.jsonl:2: the prompt before the first answer .* trains no token"):
        _check_with_tokenizer(tmp_path, tiny_model, [OK, huge], 64, strict=True)


def test_token_counting_of_a_huge_record_stops_at_a_cap(tmp_path, tiny_model):
    from hone.data.quality import LONG_TEXT
    from hone.data.report import findings

    huge = {"text": "many words here " * 500_000}   # 8 MB
    report, seen, _path = _check_with_tokenizer(tmp_path, tiny_model, [{"text": "short"}, huge], 64)
    tokens = report["files"][0]["tokens"]
    assert tokens["over_cap"] == 1 and tokens["over_cap_lines"] == [2] and tokens["max"] == tokens["cap"]
    assert max(seen) <= LONG_TEXT   # the tokenizer never saw the whole 8 MB
    assert any(f.title.startswith(f"over {tokens['cap']:,} tokens") for f in findings(report["files"][0]))


def test_e_mail_search_is_linear_on_hostile_text(tmp_path):
    # 400 KB of "x@a-a-a-..." took minutes with the unbounded pattern (quadratic); a child process
    # with a generous timeout keeps a regression from stalling the suite.
    code = ("from hone.data.pii import find_pii\n"
            "for text in ('x@' + 'a-' * 200_000, 'a@' + 'b.' * 200_000, 'q.' * 200_000 + '1'):\n"
            "    find_pii(text)\n"
            "print(find_pii('mail ann.lee@example.org now ' + 'a-' * 1000))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "('email', 5, 24)" in result.stdout


def test_identical_lines_are_hashed_once_and_grouped(tmp_path, monkeypatch):
    from datasketch import MinHash

    from hone.data.quality import check_data

    calls = []
    original = MinHash.update_batch
    monkeypatch.setattr(MinHash, "update_batch", lambda self, b: (calls.append(1), original(self, b))[1])
    same = json.dumps(OK) + "\n"
    path = write(tmp_path / "same.jsonl", same * 20_000 + json.dumps({"messages": [
        {"role": "user", "content": "a different question"}, {"role": "assistant", "content": "another answer"}]}))
    entry = check_data([path])["files"][0]
    assert entry["exact_duplicates"]["groups"] == 1 and entry["exact_duplicates"]["extra_copies"] == 19_999
    assert entry["exact_duplicates"]["examples"][0][:3] == [1, 2, 3]
    assert len(calls) == 2   # one MinHash per distinct text, not one per line


def test_cli_check_tells_a_crash_from_problems_found(tmp_path, cli):
    path = write(tmp_path / "ok.jsonl", json.dumps(OK) + "\n")
    code = ("import runpy, sys\n"
            "import hone.data.quality as quality\n"
            "def boom(*args, **kwargs):\n"
            "    raise RuntimeError('simulated bug')\n"
            "quality.check_data = boom\n"
            f"sys.argv = ['hone', 'data', 'check', {str(path)!r}, '--no-tokens']\n"
            "runpy.run_module('hone.cli', run_name='__main__')\n")
    crash = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert crash.returncode == 70 and "internal error in hone data check (RuntimeError); this is a bug" in crash.stderr
    assert cli("data", "check", str(path), "--no-tokens").returncode == 0
