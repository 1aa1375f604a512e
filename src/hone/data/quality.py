"""The data quality report: what is wrong with a data set and what is weak, with line numbers.

One streaming pass per file keeps a few integers per record (hashes, lengths, group keys) in
compact arrays, so a multi-GB file is checked in bounded memory. Then: exact and near-duplicates,
the same input with conflicting outputs or labels, label balance, token lengths with the model's
tokenizer and what `max_seq_len` truncates, empty or very short outputs, PII, leakage between the
files (train/validation/test), tokens per epoch and a training-time estimate from runs measured here.
"""
from __future__ import annotations

import json
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hone.data.content import (
    Fingerprint,
    canonical,
    full_text,
    input_text,
    label_of,
    output_text,
    short_hash,
    text_fields,
    training_text,
)
from hone.data.load import iter_records
from hone.data.neardup import NearDuplicates
from hone.data.pii import KINDS as PII_KINDS, find_pii
from hone.data.problems import Problem, RecordError, ValidationReport
from hone.data.records import ChatExample, PreferenceExample
from hone.errors import DataError

LISTED = 20          # line numbers listed per finding; the counts are always complete
SHORT_OUTPUT = 3     # an answer of at most this many characters is "very short"
TOKEN_BATCH = 256
LONG_TEXT = 32_768          # characters: longer texts are tokenized in chunks of this size, up to the cap
MAX_CHARS_PER_TOKEN = 64    # no tokenizer packs more characters than this into a token on average
CAP_FACTOR = 4              # token counts stop at 4 x the longer of max_seq_len and the model's context


@dataclass
class FileScan:
    """What one pass over one file keeps: per-record arrays and running counts."""
    path: str
    report: ValidationReport
    lines: array = field(default_factory=lambda: array("q"))
    full: array = field(default_factory=lambda: array("Q"))       # canonical-record hash
    inputs: array = field(default_factory=lambda: array("Q"))     # input-text hash
    outputs: array = field(default_factory=lambda: array("Q"))    # output-text hash
    tokens: array = field(default_factory=lambda: array("q"))
    labels: Counter = field(default_factory=Counter)
    short: list = field(default_factory=list)
    short_count: int = 0
    pii: dict = field(default_factory=lambda: {kind: [0, []] for kind in PII_KINDS})
    over_cap: list = field(default_factory=list)                 # lines counted only up to the cap
    fingerprint: str = ""
    example: ChatExample | None = None   # shown rendered, with its trained tokens marked (a tool example first)


class TokenCounter:
    """Token lengths with the model's tokenizer, in batches (a batch call is ~10x faster than one by one).

    Counting is capped: a text of more than LONG_TEXT characters is tokenized a chunk at a time and
    only until `cap` tokens are reached (one 50 MB record peaked at 7.2 GiB and took 87 s tokenized
    whole), and is recorded as `cap` tokens with its line in `over_cap`. A chat record longer than
    `max_seq_len` is also checked for a prompt so long that truncation leaves no answer token to train.
    """

    def __init__(self, tokenizer, max_seq_len: int, cap: int):
        self.tokenizer, self.max_seq_len, self.cap = tokenizer, max_seq_len, cap
        self.pending: list[tuple[str, list | None, int, list | None]] = []
        self.scan = FileScan("", ValidationReport())  # replaced by start() for each file
        self.strict = False

    def start(self, scan: FileScan, strict: bool) -> None:
        self.scan, self.strict = scan, strict

    def add(self, item, line: int, tools: list[dict] | None = None) -> None:
        messages = item if isinstance(item, list) else None
        text = self._render(messages, tools=tools) if messages is not None else item
        self.pending.append((text, messages, line, tools))
        if len(self.pending) >= TOKEN_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        short = [text for text, _messages, _line, _tools in self.pending if len(text) <= LONG_TEXT]
        ids = self.tokenizer(short, add_special_tokens=False)["input_ids"] if short else []
        counts = iter(len(x) for x in ids)
        for text, messages, line, tools in self.pending:
            n = next(counts) if len(text) <= LONG_TEXT else self.count(text, self.cap)
            if n >= self.cap and len(text) > LONG_TEXT:
                self.scan.over_cap.append(line)
            self.scan.tokens.append(min(n, self.cap))
            if messages is not None and n > self.max_seq_len:
                self._check_answer_fits(messages, line, tools)
        self.pending = []

    def count(self, text: str, limit: int) -> int:
        """Tokens in `text`, counted a chunk at a time and no further than `limit` (then `limit`)."""
        total = 0
        for start in range(0, len(text), LONG_TEXT):
            if total >= limit or start >= limit * MAX_CHARS_PER_TOKEN:
                return limit  # past what any tokenizer packs into `limit` tokens
            total += len(self.tokenizer(text[start:start + LONG_TEXT], add_special_tokens=False)["input_ids"])
        return min(total, limit)

    def _render(self, messages: list[dict], add_generation_prompt: bool = False, tools: list | None = None) -> str:
        from hone.data.render import render

        return render(self.tokenizer, messages, add_generation_prompt, tools)

    def _check_answer_fits(self, messages: list[dict], line: int, tools: list | None = None) -> None:
        """A record whose first trained answer starts after `max_seq_len` tokens trains nothing."""
        first = next((i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("weight", 1)), None)
        if first is None:
            return
        prompt = self.count(self._render(messages[:first], True, tools), self.max_seq_len)
        if prompt < self.max_seq_len:
            return
        message = (f"the prompt before the first answer is {self.max_seq_len:,} tokens or more, so truncated to "
                   f"max_seq_len {self.max_seq_len:,} this record trains no token; shorten the prompt or raise "
                   "data.max_length (--max-seq-len)")
        if self.strict:
            raise RecordError("trains_no_token", message, file=self.scan.path, line=line, field="messages")
        self.scan.report.add(Problem("trains_no_token", message, self.scan.path, line, "messages"))


def scan_file(path: Path, shape: str | None, strict: bool, near: NearDuplicates,
              counter: TokenCounter | None) -> FileScan:
    """One streaming pass: validate, hash, count, tokenize, feed the near-duplicate index."""
    scan = FileScan(str(path), ValidationReport())
    fingerprint = Fingerprint()
    if counter:
        counter.start(scan, strict)
    for record in iter_records(path, shape, strict, scan.report):
        line = record.line or 0
        scan.lines.append(line)
        whole = canonical(record)
        fingerprint.add(record, whole)
        scan.full.append(short_hash(whole))
        scan.inputs.append(short_hash(input_text(record)))
        answer = output_text(record)
        scan.outputs.append(short_hash(answer) if answer is not None else 0)
        if (label := label_of(record)) is not None:
            scan.labels[label] += 1
        if isinstance(record, (ChatExample, PreferenceExample)) and len((answer or "").strip()) <= SHORT_OUTPUT:
            scan.short_count += 1
            if len(scan.short) < LISTED:
                scan.short.append(line)
        for _field, text in text_fields(record):
            for kind, _start, _end in find_pii(text):
                entry = scan.pii[kind]
                entry[0] += 1
                if len(entry[1]) < LISTED and line not in entry[1]:
                    entry[1].append(line)
        near.add(full_text(record))
        if counter:
            counter.add(training_text(record), line, getattr(record, "tools", None))
        if isinstance(record, ChatExample) and (scan.example is None or (_shows_tools(record)
                                                                         and not _shows_tools(scan.example))):
            scan.example = record
    if counter:
        counter.flush()
    if not scan.report.records:
        raise DataError("no records: the file is empty or holds only blank lines", file=str(path))
    scan.fingerprint = fingerprint.hexdigest()
    return scan


def _shows_tools(record: ChatExample) -> bool:
    return bool(record.tools) or any(m.get("tool_calls") or m.get("reasoning_content") for m in record.messages)


def rendered_example(tokenizer, example: ChatExample | None, max_seq_len: int) -> dict | None:
    """One record as training renders it, trained tokens in [[double brackets]] (a tool or reasoning
    example when the file has one): what the model reads and what it learns to write."""
    from hone.data.render import show_mask, tokenize_chat

    if example is None or tokenizer is None or not hasattr(tokenizer, "decode"):
        return None
    try:
        tokenized = tokenize_chat(tokenizer, example.messages, max_seq_len, example.tools)
    except DataError as exc:
        return {"line": example.line, "text": None, "problem": str(exc)}
    return {"line": example.line, "text": show_mask(tokenizer, tokenized)}


def _duplicate_groups(keys: np.ndarray) -> list[np.ndarray]:
    """Indices of records sharing a key, one array per key that occurs more than once."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.nonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])[0]
    ends = np.r_[starts[1:], len(keys)]
    return [np.sort(order[s:e]) for s, e in zip(starts, ends) if e - s > 1]


def _findings(groups: list[np.ndarray], lines: np.ndarray) -> dict:
    return {"groups": len(groups), "extra_copies": sum(len(g) - 1 for g in groups),
            "examples": [lines[g[:LISTED]].tolist() for g in groups[:LISTED]]}


def _conflicts(scan: FileScan) -> dict:
    """Inputs that appear with more than one different output (answer or label)."""
    inputs, outputs = np.frombuffer(scan.inputs, np.uint64), np.frombuffer(scan.outputs, np.uint64)
    lines = np.frombuffer(scan.lines, np.int64)
    groups = [g for g in _duplicate_groups(inputs) if len(np.unique(outputs[g])) > 1]
    return {"inputs": len(groups), "records": int(sum(len(g) for g in groups)),
            "examples": [lines[g[:LISTED]].tolist() for g in groups[:LISTED]]}


def _token_stats(tokens: np.ndarray, max_seq_len: int, context: int | None, cap: int, over_cap: list) -> dict:
    """Length statistics; a record counted only up to `cap` tokens (its line in `over_cap`) counts as `cap`."""
    if not len(tokens):
        return {}
    q = np.percentile(tokens, [10, 50, 90, 99])
    return {"min": int(tokens.min()), "p10": int(q[0]), "median": int(q[1]), "mean": round(float(tokens.mean()), 1),
            "p90": int(q[2]), "p99": int(q[3]), "max": int(tokens.max()), "total": int(tokens.sum()),
            "max_seq_len": max_seq_len, "truncated": int((tokens > max_seq_len).sum()),
            "context": context, "over_context": int((tokens > context).sum()) if context else 0,
            "cap": cap, "over_cap": len(over_cap), "over_cap_lines": over_cap[:LISTED], "histogram": _histogram(tokens)}


def _histogram(tokens: np.ndarray, bins: int = 20) -> dict:
    counts, edges = np.histogram(tokens, bins=min(bins, max(1, len(np.unique(tokens)))))
    return {"counts": counts.tolist(), "edges": [round(float(e), 1) for e in edges]}


def _label_balance(labels: Counter) -> dict:
    if not labels:
        return {}
    most, least = labels.most_common()[0], labels.most_common()[-1]
    return {"labels": dict(labels.most_common()), "classes": len(labels),
            "imbalance": round(most[1] / max(1, least[1]), 2), "rarest": least[0], "commonest": most[0]}


def _leakage(scans: list[FileScan], groups: np.ndarray, offsets: list[int]) -> list[dict]:
    """Records shared between each pair of files: identical, same input, or near-duplicate."""
    found = []
    for a in range(len(scans)):
        for b in range(a + 1, len(scans)):
            sa, sb = scans[a], scans[b]
            exact = set(sa.full) & set(sb.full)
            same_input = set(sa.inputs) & set(sb.inputs)
            ga = set(groups[offsets[a]:offsets[a + 1]].tolist())
            gb = groups[offsets[b]:offsets[b + 1]]
            lines_b = np.frombuffer(sb.lines, np.int64)
            near_lines = [int(lines_b[i]) for i, g in enumerate(gb.tolist()) if g in ga]
            exact_lines = [int(l) for l, h in zip(sb.lines, sb.full) if h in exact][:LISTED]
            input_lines = [int(l) for l, h in zip(sb.lines, sb.inputs) if h in same_input][:LISTED]
            found.append({"files": [sa.path, sb.path], "exact": sum(h in exact for h in sb.full),
                          "same_input": sum(h in same_input for h in sb.inputs), "near": len(near_lines),
                          "exact_lines": exact_lines, "same_input_lines": input_lines,
                          "near_lines": near_lines[:LISTED]})
    return found


def measured_throughput(model: str) -> dict | None:
    """tokens/s of the latest successful run of `model` on this machine (from its run folder)."""
    import yaml

    from hone.home import runs_dir

    folder = runs_dir()
    if not folder.exists():
        return None
    for run in sorted(folder.iterdir(), reverse=True):
        try:
            record = json.loads((run / "run.json").read_text(encoding="utf-8"))
            config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
        except (OSError, ValueError, yaml.YAMLError):
            continue
        speed = (record.get("results") or {}).get("tokens_per_s")
        if record.get("status") == "succeeded" and speed and (config.get("model") or {}).get("name") == model:
            return {"tokens_per_s": speed, "run": run.name, "method": (config.get("method") or {}).get("name")}
    return None


def check_data(paths: list[Path], model: str | None = None, max_seq_len: int = 1024, shape: str | None = None,
               strict: bool = False, epochs: float = 3, tokenizer=None, context: int | None = None) -> dict:
    """The quality report of one or more files (train first, then validation and test) as a dict.

    `tokenizer` (models/load.py `counting_tokenizer`) counts tokens: None skips token lengths and the time
    estimate; `context` is the model's context length; `model` names it for the measured throughput.
    """
    near = NearDuplicates()
    cap = CAP_FACTOR * max(max_seq_len, context or 0)
    counter = TokenCounter(tokenizer, max_seq_len, cap) if tokenizer else None
    scans = [scan_file(Path(p), shape, strict, near, counter) for p in paths]
    groups = near.groups()
    near.close()
    offsets = np.cumsum([0] + [len(s.lines) for s in scans]).tolist()
    files: list[dict] = []
    for i, scan in enumerate(scans):
        lines, full = np.frombuffer(scan.lines, np.int64), np.frombuffer(scan.full, np.uint64)
        exact = _duplicate_groups(full)
        mine = groups[offsets[i]:offsets[i + 1]]
        near_groups = [g for g in _duplicate_groups(mine) if len(np.unique(full[g])) > 1]
        tokens = np.frombuffer(scan.tokens, np.int64)
        if context:
            for line, n in zip(scan.lines, scan.tokens):
                if n > context:
                    size = f"over {n:,}" if n >= cap else f"{n:,}"
                    scan.report.add(Problem("too_long", f"{size} tokens, longer than the model's context of "
                                            f"{context:,}", scan.path, line))
        files.append({
            "file": scan.path, "shape": scan.report.shape, "records": scan.report.records,
            "valid": scan.report.valid, "fingerprint": scan.fingerprint, "validation": scan.report.as_dict(),
            "exact_duplicates": _findings(exact, lines), "near_duplicates": _findings(near_groups, lines),
            "conflicts": _conflicts(scan), "labels": _label_balance(scan.labels),
            "short_outputs": {"count": scan.short_count, "lines": scan.short, "max_chars": SHORT_OUTPUT},
            "pii": {kind: {"count": n, "lines": lines_} for kind, (n, lines_) in scan.pii.items() if n},
            "tokens": _token_stats(tokens, max_seq_len, context, cap, scan.over_cap) if tokenizer else {},
            "example": rendered_example(tokenizer, scan.example, max_seq_len) if i == 0 else None})
    report: dict = {"model": model, "files": files, "leakage": _leakage(scans, groups, offsets)}
    if tokenizer is not None and files[0]["tokens"]:
        report["training"] = _estimate(files[0]["tokens"]["total"], epochs, model)
    return report


def _estimate(tokens_per_epoch: int, epochs: float, model: str | None) -> dict:
    measured = measured_throughput(model) if model else None
    estimate = {"tokens_per_epoch": tokens_per_epoch, "epochs": epochs, "measured": measured}
    if measured:
        estimate["seconds"] = round(tokens_per_epoch * epochs / measured["tokens_per_s"], 1)
    return estimate


def has_errors(report: dict) -> bool:
    """Records were skipped, or kept records cannot train (too_long alone is a warning)."""
    return any(f["validation"]["skipped"] or set(f["validation"]["counts"]) - {"too_long"} for f in report["files"])


def require_records(report: dict) -> None:
    for entry in report["files"]:
        if not entry["valid"]:
            raise DataError("no valid examples in file", file=entry["file"])
