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


def hone(*args):
    return subprocess.run([sys.executable, "-m", "hone.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("content", ["not json\n", '{"messages": [{"role": "asistant", "content": "x"}]}\n',
                                     '{"foo": 1}\n'])
def test_cli_prints_one_line_and_exits_2_on_strict_check(tmp_path, content):
    path = write(tmp_path / "bad.jsonl", content)
    result = hone("data", "check", str(path), "--strict", "--no-tokens")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith(f"error: {path}:1: ")


def test_cli_check_without_strict_reports_and_exits_1(tmp_path):
    path = write(tmp_path / "mixed.jsonl", json.dumps(OK) + "\nnot json\n")
    result = hone("data", "check", str(path), "--no-tokens")
    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
    assert "invalid_json" in result.stdout and "mixed.jsonl:2" in result.stdout
