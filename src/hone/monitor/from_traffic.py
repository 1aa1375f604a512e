"""`hone data from-traffic MODEL`: the next dataset version, from what users corrected (and liked).

    rated exchanges (traffic.py) -> chat examples: the request's messages + the correction (bad ratings),
    + the model's own answer (good ratings, with include_good) -> personal data redacted
    -> dropped: leaks into the model's test split (same input, same question, or near-duplicate),
       copies of its training data, repeats -> chat JSONL written atomically
    -> a seeded share of the corrected examples held out (FILE.holdout.jsonl; never in FILE, no question in
       both): the new slice `hone promote` scores the next version on
    -> the usual data report (hone.data.quality.check_data) and FILE.lineage.json (which requests, which model)

The test split stays untouched by construction: an example whose question is in it would make the next
model's score on it a memory test (`hone promote` compares versions on that split).
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hone import atomic
from hone.data.content import canonical, full_text, input_text, short_hash
from hone.data.neardup import NearDuplicates
from hone.data.pii import redact
from hone.data.records import ChatExample
from hone.errors import UserError
from hone.monitor import traffic
from hone.monitor.watch import training_data_of

REASONS = {"leaks_into_test": "its question is in the model's test split (same input or near-duplicate)",
           "copy_of_training": "the same example is already in the training data",
           "repeat": "the same example came earlier in this traffic",
           "no_correction": "rated bad without a correction",
           "good_not_included": "rated good (add --include-good to train on good answers)",
           "not_a_chat": "a text completion, not a chat"}


@dataclass
class TrafficDataset:
    output: Path
    lineage: Path
    examples: int
    corrected: int
    good: int
    redacted: int                                   # examples with personal data replaced
    dropped: dict[str, list[str]] = field(default_factory=dict)   # reason -> request ids
    training_data: str | None = None
    test_data: str | None = None
    report: dict = field(default_factory=dict)      # check_data's findings on the new file
    holdout: Path | None = None                     # the held-out slice (None: --holdout 0 or too few corrections)
    held_out: int = 0                               # examples in it

    def to_json(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


# 0.3 of the corrections held out: in the worked example (docs/production.md) 57 corrections gave a 17-item
# slice whose interval for a +52.9-point gain was +29.4 to +76.5; fewer items widen it as 1/sqrt(n).
DEFAULT_HOLDOUT = 0.3


def holdout_path(output: Path) -> Path:
    """Where the held-out slice of `output` goes by default: FILE.holdout.jsonl beside it."""
    return output.with_name(f"{output.name.removesuffix('.jsonl')}.holdout.jsonl")


def dataset_from_traffic(model: str, output: Path, include_good: bool = False, since: float | None = None,
                         org: str | None = None, url: str | None = None, keep_pii: bool = False,
                         holdout: float = DEFAULT_HOLDOUT, holdout_output: Path | None = None,
                         seed: int = 0) -> TrafficDataset:
    """Write the corrected (and, with include_good, good-rated) answers of `model` as chat JSONL at `output`,
    and a seeded `holdout` share of the corrected ones at `holdout_output` (default FILE.holdout.jsonl)."""
    if not 0 <= holdout < 1:
        raise UserError(f"--holdout {holdout:g} is not a share: give a number from 0 (no held-out slice) to below 1",
                        field="holdout")
    exchanges = traffic.read_exchanges(model, since, org, url, rated=True)
    if not exchanges:
        raise UserError(f"no rated answers of model {model!r}: clients rate answers with POST /v1/feedback on a "
                        "server started with --capture (hone feedback list shows what is there)", field="model")
    runs = [e.run_dir for e in exchanges if e.run_dir]
    if not runs:
        raise UserError(f"{model!r} is served as a base model: there is no training data or test split to check "
                        "the new examples against; rate a tuned model's answers", field="model")
    original = training_data_of(runs[-1])
    dropped: dict[str, list[str]] = {reason: [] for reason in REASONS}
    candidates: list[tuple[str, ChatExample, bool]] = []   # (request id, example, redacted)
    for e in exchanges:
        if e.kind != "chat":
            dropped["not_a_chat"].append(e.id)
            continue
        if e.rating == "bad" and not e.correction:
            dropped["no_correction"].append(e.id)
            continue
        if e.rating == "good" and not include_good:
            dropped["good_not_included"].append(e.id)
            continue
        answer = e.correction if e.rating == "bad" else e.answer
        messages, redacted = _redacted([*e.messages, {"role": "assistant", "content": answer}], keep_pii)
        candidates.append((e.id, ChatExample(messages), redacted))

    kept = _filter(candidates, original.path, original.test, dropped)
    by_id = {e.id: e for e in exchanges}
    kept, held = _split_holdout(kept, {i for i, e in by_id.items() if e.rating == "bad"}, holdout, seed)
    if not kept:
        reasons = "; ".join(f"{len(ids)} {REASONS[r]}" for r, ids in dropped.items() if ids)
        raise UserError(f"no training examples left from {len(exchanges)} rated answer(s): {reasons}")
    held_file = (holdout_output or holdout_path(output)) if held else None
    if held_file is not None and held_file.resolve() == output.resolve():
        raise UserError("the held-out slice would overwrite the training file: name another --holdout-output",
                        file=str(held_file))
    atomic.write_text(output, "".join(json.dumps({"messages": ex.messages}, ensure_ascii=False) + "\n"
                                      for _, ex, _ in kept))
    if held_file is not None:
        atomic.write_text(held_file, "".join(json.dumps({"messages": ex.messages}, ensure_ascii=False) + "\n"
                                             for _, ex, _ in held))
    result = TrafficDataset(output, Path(f"{output}.lineage.json"), len(kept),
                            sum(by_id[i].rating == "bad" for i, _, _ in kept),
                            sum(by_id[i].rating == "good" for i, _, _ in kept), sum(r for _, _, r in kept),
                            {r: ids for r, ids in dropped.items() if ids}, str(original.path),
                            str(original.test) if original.test else None)
    result.report = _checks(output, original.path, original.test)
    result.holdout, result.held_out = held_file, len(held)
    held_lineage = None if held_file is None else {
        "file": str(held_file.resolve()), "share": holdout, "seed": seed, "examples": len(held),
        "sha256": hashlib.sha256(held_file.read_bytes()).hexdigest(),
        "requests": [{"id": i, "rating": by_id[i].rating, "line": n + 1} for n, (i, _, _) in enumerate(held)]}
    atomic.write_json(result.lineage, {
        "source": "hone data from-traffic", "created_at": time.time(), "model": model,
        "served": sorted({by_id[i].served for i, _, _ in kept}), "run_dir": runs[-1],
        "file": str(output), "sha256": hashlib.sha256(output.read_bytes()).hexdigest(),
        "requests": [{"id": i, "rating": by_id[i].rating, "line": n + 1} for n, (i, _, _) in enumerate(kept)],
        "dropped": result.dropped, "training_data": result.training_data, "test_data": result.test_data,
        "pii_redacted": not keep_pii, "holdout": held_lineage})
    return result


def _split_holdout(kept: list[tuple[str, ChatExample, bool]], corrected: set[str], share: float, seed: int
                   ) -> tuple[list[tuple[str, ChatExample, bool]], list[tuple[str, ChatExample, bool]]]:
    """(training, held out): `share` of the corrected examples' questions, drawn with `seed`, held out whole.
    Only corrections are held out: a good-rated answer is the model's own, so scoring a model on it measures
    agreement with itself. A held-out question is in no training example (a good-rated answer to it is left out)."""
    questions = sorted({_question(ex) for i, ex, _ in kept if i in corrected})
    n = int(share * len(questions))
    chosen = set(random.Random(seed).sample(questions, n)) if n else set()
    held = [k for k in kept if k[0] in corrected and _question(k[1]) in chosen]
    return [k for k in kept if _question(k[1]) not in chosen], held


def _redacted(messages: list[dict], keep: bool) -> tuple[list[dict], bool]:
    if keep:
        return messages, False
    out, found = [], False
    for m in messages:
        text, kinds = redact(str(m.get("content") or ""))
        found = found or bool(kinds)
        out.append({**m, "content": text})
    return out, found


def _question(example: ChatExample) -> str:
    """The last user message: a test item asked with or without the run's system prompt is the same question."""
    return next((str(m.get("content") or "") for m in reversed(example.prompt_messages) if m["role"] == "user"), "")


def _filter(candidates: list[tuple[str, ChatExample, bool]], train: Path, test: Path | None,
            dropped: dict[str, list[str]]) -> list[tuple[str, ChatExample, bool]]:
    """Candidates that neither leak into the test split nor repeat the training data or each other."""
    from hone.data.load import load_chat_records

    test_items = load_chat_records(test) if test and test.is_file() else []
    test_inputs = {short_hash(input_text(r)) for r in test_items} | {short_hash(_question(r)) for r in test_items}
    near = NearDuplicates()
    for item in test_items:
        near.add(full_text(item))
    for _, example, _ in candidates:
        near.add(full_text(example))
    groups = near.groups()
    near.close()
    test_groups = set(groups[:len(test_items)].tolist())
    trained = {short_hash(canonical(r)) for r in load_chat_records(train)}
    seen: set[int] = set()
    kept = []
    for n, (request, example, redacted) in enumerate(candidates):
        whole = short_hash(canonical(example))
        if (short_hash(input_text(example)) in test_inputs or short_hash(_question(example)) in test_inputs
                or int(groups[len(test_items) + n]) in test_groups):
            dropped["leaks_into_test"].append(request)
        elif whole in trained:
            dropped["copy_of_training"].append(request)
        elif whole in seen:
            dropped["repeat"].append(request)
        else:
            seen.add(whole)
            kept.append((request, example, redacted))
    return kept


def _checks(output: Path, train: Path, test: Path | None) -> dict:
    """The data report's findings on the new file: validation, duplicates, PII, leakage against train/test."""
    from hone.data.quality import check_data

    report = check_data([output, train] + ([test] if test and test.is_file() else []))
    mine = report["files"][0]
    return {"records": mine["records"], "valid": mine["valid"], "exact_duplicates": mine["exact_duplicates"],
            "near_duplicates": mine["near_duplicates"], "pii": mine["pii"],
            "leakage": [{k: v for k, v in pair.items() if not k.endswith("_lines")} | {"files": pair["files"]}
                        for pair in report["leakage"] if str(output) in pair["files"]]}
