"""Every shape and every file type loads into the same canonical records."""
import csv
import json

import pytest

from hone.data.load import load_chat_records, load_records, load_with_report
from hone.data.records import ChatExample, LabelExample, PreferenceExample, TagExample, TextExample
from hone.errors import DataError

CHAT = [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]

SHAPES = {
    "chat": {"messages": CHAT},
    "sharegpt": {"conversations": [{"from": "human", "value": "Capital of France?"},
                                   {"from": "gpt", "value": "Paris."}]},
    "alpaca": {"instruction": "Capital of France?", "input": "", "output": "Paris."},
    "prompt_completion": {"prompt": "Capital of France?", "completion": "Paris."},
    "question_answer": {"question": "Capital of France?", "answer": "Paris."},
    "input_output": {"input": "Capital of France?", "output": "Paris."},
}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_chat_like_shape_becomes_the_same_conversation(tmp_path, shape):
    path = write_jsonl(tmp_path / "d.jsonl", [SHAPES[shape]] * 2)
    records, report = load_with_report(path)
    assert report.shape == shape and report.valid == 2
    assert [m["content"] for m in records[0].messages] == ["Capital of France?", "Paris."]
    assert load_chat_records(path)[1].answer == "Paris."
    forced = load_records(path, shape=shape)
    assert forced[0].messages == records[0].messages


def test_openai_chat_with_tools_weights_and_null_content_is_accepted(tmp_path):
    record = {"messages": [
        {"role": "system", "content": "You help."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "21 C"},
        {"role": "assistant", "content": "It is 21 C.", "weight": 1},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": [{"type": "text", "text": "You're welcome."}], "weight": 0}],
        "tools": [{"type": "function", "function": {"name": "weather"}}]}
    [example] = load_records(write_jsonl(tmp_path / "t.jsonl", [record]), strict=True)
    assert example.tools[0]["function"]["name"] == "weather"
    assert example.messages[-1]["content"] == "You're welcome." and example.messages[-1]["weight"] == 0


def test_alpaca_input_joins_the_instruction(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Translate", "input": "chat", "output": "cat"}])
    assert load_records(path)[0].messages[0]["content"] == "Translate\n\nchat"


def test_preference_pairs_in_both_spellings(tmp_path):
    plain = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}])
    openai = write_jsonl(tmp_path / "o.jsonl", [{
        "input": {"messages": [{"role": "user", "content": "Hi?"}]},
        "preferred_output": [{"role": "assistant", "content": "Hello!"}],
        "non_preferred_output": [{"role": "assistant", "content": "Go away."}]}])
    a, b = load_records(plain)[0], load_records(openai)[0]
    assert isinstance(a, PreferenceExample) and (a.prompt, a.chosen, a.rejected) == (b.prompt, b.chosen, b.rejected)
    assert load_chat_records(plain)[0].messages[-1] == {"role": "assistant", "content": "Hello!"}


def test_text_label_and_tags_shapes(tmp_path):
    [text] = load_records(write_jsonl(tmp_path / "x.jsonl", [{"text": "Domain prose."}]))
    [label] = load_records(write_jsonl(tmp_path / "l.jsonl", [{"text": "great film", "label": 1}]))
    [tags] = load_records(write_jsonl(tmp_path / "n.jsonl", [{"tokens": ["Ann", "ran"], "ner_tags": ["B-PER", "O"]}]))
    assert isinstance(text, TextExample) and text.text == "Domain prose."
    assert isinstance(label, LabelExample) and label.label == "1"
    assert isinstance(tags, TagExample) and tags.tags == ["B-PER", "O"]
    with pytest.raises(DataError, match="not chat or instruction data"):
        load_chat_records(tmp_path / "l.jsonl")


def test_csv_tsv_json_and_object_of_arrays_read_the_same_records(tmp_path):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(3)]
    for name, delimiter in (("d.csv", ","), ("d.tsv", "\t")):
        with (tmp_path / name).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, ["prompt", "completion"], delimiter=delimiter)
            writer.writeheader()
            writer.writerows(rows)
    (tmp_path / "a.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    (tmp_path / "o.json").write_text(json.dumps({"train": rows}), encoding="utf-8")
    expected = [r.messages for r in load_records(write_jsonl(tmp_path / "d.jsonl", rows))]
    for name in ("d.csv", "d.tsv", "a.json", "o.json"):
        assert [r.messages for r in load_records(tmp_path / name)] == expected, name
    assert [r.line for r in load_records(tmp_path / "d.csv")] == [2, 3, 4]
    assert [r.line for r in load_records(tmp_path / "a.json")] == [2, 6, 10]


def test_csv_messages_column_holds_json(tmp_path):
    path = tmp_path / "c.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["messages"], [json.dumps(CHAT)]])
    assert load_records(path)[0].messages[1]["content"] == "Paris."


def test_parquet_and_saved_datasets_folder(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": "good", "label": 1}, {"text": "bad", "label": 0}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    assert [(r.text, r.label, r.line) for r in load_records(tmp_path / "d.parquet")] == [("good", "1", 1), ("bad", "0", 2)]
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    dataset = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows, features=features)})
    dataset.save_to_disk(str(tmp_path / "saved"))
    records = load_records(tmp_path / "saved")
    assert [(r.text, r.label) for r in records] == [("good", "pos"), ("bad", "neg")]


def test_folder_of_text_and_markdown_documents(tmp_path):
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "a.txt").write_text("First document.", encoding="utf-8")
    (tmp_path / "docs" / "sub" / "b.md").write_text("# Second\n\nbody", encoding="utf-8")
    (tmp_path / "docs" / "skip.bin").write_bytes(b"\x00\x01")
    records = load_records(tmp_path / "docs")
    assert [r.text for r in records] == ["First document.", "# Second\n\nbody"]


def test_utf8_bom_is_read_and_noted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(SHAPES["chat"]).encode() + b"\n")
    records, report = load_with_report(path)
    assert len(records) == 1 and "byte-order mark" in report.notes[0]


def test_split_output_round_trips_every_shape(tmp_path):
    from hone.data.content import canonical
    from hone.data.split import split_dataset

    for shape, record in {**SHAPES, "text": {"text": "t"}, "label": {"text": "t", "label": "x"},
                          "tags": {"tokens": ["a"], "tags": ["O"]},
                          "preference": {"prompt": "p", "chosen": "c", "rejected": "r"}}.items():
        rows = [{k: (v + str(i) if isinstance(v, str) and v else v) for k, v in record.items()} for i in range(10)]
        source = write_jsonl(tmp_path / f"{shape}.jsonl", rows)
        result = split_dataset(source, near=False)
        back = [canonical(r) for name in ("train", "validation", "test")
                for r in load_records(result.out_dir / f"{name}.jsonl")]
        assert sorted(back) == sorted(canonical(r) for r in load_records(source)), shape
