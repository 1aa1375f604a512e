"""Fuzz of the data loader, the validator and the check (issue 24): any file, however hostile, either
loads or fails with a one-line UserError naming the file (and the line where one applies), within a
time bound (hypothesis' deadline) and a memory bound (tracemalloc's peak).

The strategies mix plausible records with the hostile kinds found by a corpus of 1,917 bad files:
integers past Python's 4,300-digit limit, nesting past the parser's and the stack's depth, lone
surrogates, null content, JSON arrays with stray commas or trailing text, PII-shaped text built to
make a regular expression backtrack, raw bytes, and damaged Parquet pages.
"""
import json
import tracemalloc

from hypothesis import HealthCheck, given, settings, strategies as st

from hone.data.load import load_with_report
from hone.data.problems import RecordError
from hone.data.quality import check_data
from hone.errors import UserError

MEMORY_BOUND = 64 * 2**20   # bytes traced by Python for one input of at most ~100 KB
FUZZ = settings(max_examples=40, deadline=10_000, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


def nested(depth: int, leaf: str = "[]") -> str:
    return "[" * depth + leaf + "]" * depth


ROLE = st.sampled_from(["system", "user", "assistant", "tool", "gpt", "", None])
# Values as JSON text, so they can hold what json.dumps never writes (lone surrogate escapes, huge integers).
SCALAR = (st.none() | st.booleans() | st.integers(-10, 10) | st.text(max_size=12)).map(json.dumps) | st.sampled_from(
    ['"\\ud800"', '"x\\udfffy"', '"\\ud83d\\ude00"', '"ann@example.org"', '"+44 20 7946 0958"', '[]', '{}'])
HOSTILE_VALUE = st.one_of(
    st.integers(4_301, 6_000).map(lambda n: "9" * n),                               # past the int-string limit
    st.integers(60, 1_500).map(nested),                                              # past 64 levels, or the parser
    st.integers(60, 1_500).map(lambda d: json.dumps(nested(d))),                     # deep JSON inside a string
    st.sampled_from(['"\\ud800"', '"a\\udc00b"', '"\\ud83d"', "null", "NaN", "-Infinity", "1e999", '""']),
    st.integers(1, 20_000).map(lambda n: json.dumps("x@" + "a-" * n)),               # made to make a regex backtrack
    st.integers(1, 20_000).map(lambda n: json.dumps("a." * n + "1")),
)
VALUE = st.one_of(SCALAR, SCALAR, HOSTILE_VALUE, st.lists(SCALAR, max_size=3).map(lambda v: "[" + ", ".join(v) + "]"))
KEY = st.sampled_from(["messages", "conversations", "prompt", "completion", "chosen", "rejected", "text", "label",
                       "tokens", "tags", "instruction", "input", "output", "tools", "name", "weight", "content"])


@st.composite
def message(draw) -> str:
    parts = []
    role = draw(ROLE)
    if role is not None:
        parts.append(f'"role": {json.dumps(role)}')
    if draw(st.booleans()):
        parts.append(f'"content": {draw(VALUE)}')
    for key in draw(st.lists(st.sampled_from(["name", "weight", "tool_call_id", "tool_calls", "refusal"]),
                             max_size=2, unique=True)):
        parts.append(f'"{key}": {draw(VALUE)}')
    return "{" + ", ".join(parts) + "}"


@st.composite
def record(draw) -> str:
    """One JSON object as text: a chat record with hostile messages, or hostile values under known keys."""
    if draw(st.booleans()):
        messages = draw(st.lists(message(), max_size=4))
        extra = "".join(f', "{key}": {draw(VALUE)}' for key in draw(st.lists(st.sampled_from(["tools", "weight"]),
                                                                               max_size=1)))
        return '{"messages": [' + ", ".join(messages) + "]" + extra + "}"
    pairs = draw(st.dictionaries(KEY, VALUE, min_size=1, max_size=3))
    return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in pairs.items()) + "}"


GOOD = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}'
LINE = st.one_of(record(), record(), st.just(GOOD), st.text(max_size=40),
                 st.sampled_from(["", "   ", "[1, 2]", "null", '{"messages": [', "{}"]))


@st.composite
def jsonl_file(draw) -> bytes:
    text = "\n".join(draw(st.lists(LINE, max_size=5)))
    return draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + text.encode("utf-8", "surrogatepass")


@st.composite
def json_file(draw) -> bytes:
    items = draw(st.lists(st.one_of(record(), st.just(GOOD), st.sampled_from(["1", '"x"', "", "]"])), max_size=4))
    separator = draw(st.sampled_from([",", ",\n", ",,", " ", "\n"]))
    tail = draw(st.sampled_from(["", ",", " ,", "\n"]))
    after = draw(st.sampled_from(["", "\n", " garbage", "]", "\n" + GOOD]))
    if draw(st.booleans()):
        return ("[" + separator.join(items) + tail + "]" + after).encode("utf-8", "surrogatepass")
    return ('{"train": [' + separator.join(items) + tail + "]}" + after).encode("utf-8", "surrogatepass")


@st.composite
def csv_file(draw) -> bytes:
    rows = ["prompt,completion"] + [f'"{draw(VALUE).replace(chr(34), chr(34) * 2)}",{draw(st.text(max_size=8))}'
                                    for _ in range(draw(st.integers(0, 3)))]
    rows += draw(st.lists(st.text(max_size=20), max_size=2))
    return "\n".join(rows).encode("utf-8", "surrogatepass")


FILES = st.one_of(jsonl_file().map(lambda b: ("d.jsonl", b)), json_file().map(lambda b: ("d.json", b)),
                  csv_file().map(lambda b: ("d.csv", b)),
                  st.binary(max_size=200).map(lambda b: ("d.jsonl", b)))


def loads_or_fails_in_one_located_line(path, call) -> None:
    """`call()` returns, or raises a one-line UserError naming `path` (and a line for a record's problem)."""
    tracemalloc.start()
    try:
        call()
    except UserError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith(str(path)), message
        if isinstance(exc, RecordError) and path.suffix != ".parquet":
            assert exc.line is not None and message.startswith(f"{path}:{exc.line}: "), message
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < MEMORY_BOUND, f"{peak / 2**20:.0f} MiB traced"


@FUZZ
@given(FILES, st.booleans())
def test_any_file_loads_or_fails_in_one_located_line(tmp_path, named, strict):
    name, content = named
    path = tmp_path / name
    path.write_bytes(content)
    loads_or_fails_in_one_located_line(path, lambda: load_with_report(path, strict=strict))


@FUZZ
@given(FILES, st.booleans())
def test_any_file_is_checked_or_fails_in_one_located_line(tmp_path, named, strict):
    """The whole check (hashes, PII, near-duplicates) too: where lone surrogates and deep values crashed."""
    name, content = named
    path = tmp_path / name
    path.write_bytes(content)
    loads_or_fails_in_one_located_line(path, lambda: check_data([path], None, strict=strict))


@settings(max_examples=15, deadline=10_000, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**31), st.integers(1, 64), st.booleans())
def test_a_damaged_parquet_file_loads_or_fails_in_one_line(tmp_path, seed, span, strict):
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": [f"question {i}" for i in range(300)], "completion": ["answer"] * 300}),
                   path, row_group_size=100)
    raw = bytearray(path.read_bytes())
    rng = random.Random(seed)
    start = rng.randrange(4, max(5, len(raw) - 8 - span))   # anywhere but the magic bytes and the footer length
    raw[start:start + span] = bytes(rng.randrange(256) for _ in range(span))
    path.write_bytes(bytes(raw))
    loads_or_fails_in_one_located_line(path, lambda: load_with_report(path, strict=strict))
