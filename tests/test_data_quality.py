"""`hone data check`, `split` and `clean` on small files a user could have written."""
import json
import subprocess
import sys

import pytest

from hone.data.clean import clean_file
from hone.data.content import fingerprint
from hone.data.load import load_records
from hone.data.quality import check_data
from hone.data.report import render_html
from hone.data.split import split_dataset

LONG = ("The quarterly report shows that revenue grew in every region while costs stayed flat, "
        "and the board approved a new budget for the coming year after a long discussion.")


def chat(question, answer):
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def messy(tmp_path):
    return write(tmp_path / "train.jsonl", [
        chat("Summarise the report", LONG),                                    # 1
        chat("Summarise the report", LONG),                                    # 2 exact duplicate of 1
        chat("Summarise the report please", LONG.replace("flat", "flat.")),    # 3 near-duplicate of 1
        chat("Is water wet?", "Yes, water is wet."),                           # 4
        chat("Is water wet?", "No, it is not wet at all."),                    # 5 conflicts with 4
        chat("Write to me at ann.lee@example.org or +44 20 7946 0958", "Noted: card 4111 1111 1111 1111."),  # 6
        chat("Say nothing", "ok"),                                             # 7 very short
    ])


def test_check_finds_duplicates_conflicts_pii_and_short_answers_by_line(messy, tiny_model):
    from transformers import AutoTokenizer

    from hone.data.render import render

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    lengths = [len(tokenizer(render(tokenizer, r.messages), add_special_tokens=False)["input_ids"])
               for r in load_records(messy)]
    limit = sorted(lengths)[3]
    report = check_data([messy], tokenizer=tokenizer, max_seq_len=limit)
    entry = report["files"][0]
    assert entry["exact_duplicates"]["examples"] == [[1, 2]]
    assert entry["near_duplicates"]["examples"] == [[1, 2, 3]]
    assert entry["conflicts"]["examples"] == [[4, 5]]
    assert entry["short_outputs"]["lines"] == [7]
    assert {k: v["lines"] for k, v in entry["pii"].items()} == {"email": [6], "phone": [6], "card": [6]}
    tokens = entry["tokens"]
    assert tokens["truncated"] == sum(n > limit for n in lengths) > 0
    assert (tokens["min"], tokens["max"], tokens["total"]) == (min(lengths), max(lengths), sum(lengths))
    assert report["training"]["tokens_per_epoch"] == tokens["total"]


def test_label_balance_and_leakage_between_train_and_test(tmp_path):
    train = write(tmp_path / "train.jsonl", [{"text": f"review number {i} {LONG}", "label": "pos" if i < 9 else "neg"}
                                             for i in range(10)])
    test = write(tmp_path / "test.jsonl", [{"text": f"review number 3 {LONG}", "label": "pos"},
                                           {"text": f"review number 30 {LONG}", "label": "pos"},
                                           {"text": "something else entirely", "label": "neg"}])
    report = check_data([train, test])
    assert report["files"][0]["labels"]["labels"] == {"pos": 9, "neg": 1}
    assert report["files"][0]["labels"]["imbalance"] == 9
    [leak] = report["leakage"]
    assert leak["exact"] == 1 and leak["exact_lines"] == [1]
    assert leak["near"] == 2 and leak["near_lines"] == [1, 2]


def test_html_report_is_self_contained(messy):
    page = render_html(check_data([messy]))
    assert page.startswith("<!doctype html>") and "exact duplicates" in page and "ann.lee" not in page
    assert "http://" not in page and "https://" not in page and "<script src" not in page


def test_split_is_seeded_stratified_keeps_near_duplicates_together_and_records_fingerprints(tmp_path):
    import random

    rng = random.Random(0)
    words = [f"w{j}" for j in range(500)]
    rows = [{"text": " ".join(rng.choice(words) for _ in range(12)), "label": "a" if i % 4 else "b"} for i in range(200)]
    rows += [{"text": f"{LONG} variant {i}", "label": "a"} for i in range(6)]  # one near-duplicate group
    source = write(tmp_path / "data.jsonl", rows)
    first = split_dataset(source, tmp_path / "one", seed=7)
    second = split_dataset(source, tmp_path / "two", seed=7)
    other = split_dataset(source, tmp_path / "three", seed=8)
    splits = first.manifest["splits"]
    sizes = {n: s["records"] for n, s in splits.items()}
    assert sum(sizes.values()) == 206 and abs(sizes["train"] - 164.8) <= 3 and abs(sizes["test"] - 20.6) <= 3
    assert splits == second.manifest["splits"] and splits != other.manifest["splits"]
    for name, split in splits.items():
        records = load_records(first.out_dir / split["file"])
        assert fingerprint(records) == split["fingerprint"]
        share = split["labels"]["b"] / split["records"]
        assert 0.15 < share < 0.35, (name, split["labels"])  # 25% of records are 'b' overall
    near_sides = [name for name, split in splits.items()
                  if any(LONG in r.text for r in load_records(first.out_dir / split["file"]))]
    assert len(near_sides) == 1 and first.manifest["near_duplicates_kept_together"] >= 1
    assert source.read_text(encoding="utf-8") == "".join(json.dumps(r) + "\n" for r in rows)


def test_clean_writes_a_new_file_and_logs_every_change(messy, tmp_path):
    before = messy.read_bytes()
    with messy.open("a", encoding="utf-8") as handle:
        handle.write("not json\n")
    before = messy.read_bytes()
    result = clean_file(messy)
    assert messy.read_bytes() == before
    kept = [json.loads(line) for line in result.output.read_text(encoding="utf-8").splitlines()]
    log = [json.loads(line) for line in result.log.read_text(encoding="utf-8").splitlines()]
    assert len(kept) == result.kept == 5
    actions = {(entry["line"], entry["action"]) for entry in log}
    assert {(2, "dropped_duplicate"), (3, "dropped_near_duplicate"), (8, "dropped_invalid"),
            (6, "redacted")} <= actions
    text = json.dumps(kept)
    assert "ann.lee@example.org" not in text and "[EMAIL]" in text and "[PHONE]" in text and "[CARD]" in text


def test_clean_refuses_to_overwrite_its_input(messy):
    from hone.errors import UserError

    with pytest.raises(UserError, match="never overwrites its input"):
        clean_file(messy, output=messy)


def hone(*args):
    return subprocess.run([sys.executable, "-m", "hone.cli", *args], capture_output=True, text=True)


def test_cli_split_prints_sizes_and_writes_manifest(tmp_path):
    source = write(tmp_path / "d.jsonl", [chat(f"question {i}", f"answer number {i}") for i in range(30)])
    result = hone("data", "split", str(source), "--json", "--no-near")
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert [s["records"] for s in manifest["splits"].values()] == [24, 3, 3]
    assert json.loads((tmp_path / "d-split" / "split.json").read_text()) == manifest
