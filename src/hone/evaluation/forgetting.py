"""The forgetting probe: general capability before and after tuning, scored by log-likelihood.

hone ships a few hundred multiple-choice items (src/hone/datasets/probe/, written for hone by
scripts/make_probe.py) across general knowledge, arithmetic, common sense and instruction following.
Each choice is scored as the model's complete answer to the chat prompt: the summed log-probability
of its tokens *and the end-of-turn token*. The end-of-turn token matters: without it "1" always
beats "12" (a prefix can never be less likely than its extension). The sum is not length-normalised:
it is the probability of the whole answer, which is the quantity we care about, and the choices of an
item are written to have similar lengths; per-token normalisation would favour long, fluent distractors.

The drop (base minus tuned accuracy, in points) gets a paired bootstrap interval over items, and the
mean log-probability of the right answer is reported too: on a 135M model it moves well before
accuracy does (field notes §10).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hone.data.render import prompt_for_generation
from hone.errors import DataError

# Models smaller than this are test fixtures or toys: a general-knowledge probe tells nothing there.
PROBE_MIN_PARAMETERS = 10_000_000


@dataclass(frozen=True)
class ProbeItem:
    id: str
    category: str
    prompt: str
    choices: list[str]
    answer: int


@dataclass
class ProbeScores:
    """One model's answers: per item, whether the best-scored choice is right, and the right one's log-prob."""
    ids: list[str]
    categories: list[str]
    correct: list[bool]
    gold_logprob: list[float]
    seconds: float = 0.0

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / max(1, len(self.correct))

    def to_json(self) -> dict:
        return {"ids": self.ids, "categories": self.categories, "correct": self.correct,
                "gold_logprob": [round(x, 4) for x in self.gold_logprob], "seconds": round(self.seconds, 1)}

    @classmethod
    def from_json(cls, data: dict) -> "ProbeScores":
        return cls(data["ids"], data["categories"], data["correct"], data["gold_logprob"], data.get("seconds", 0.0))


def default_probe_path() -> Path:
    return Path(str(resources.files("hone") / "datasets" / "probe" / "probe.jsonl"))


def load_probe(path: Path | None = None) -> list[ProbeItem]:
    """The probe items of a JSONL file (default: the one shipped with hone)."""
    path = Path(path) if path else default_probe_path()
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            item = ProbeItem(raw["id"], raw["category"], raw["prompt"], list(raw["choices"]), int(raw["answer"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"not a probe item ({exc}); expected id, category, prompt, choices, answer",
                            file=str(path), line=number) from None
        if not 0 <= item.answer < len(item.choices) or len(item.choices) < 2:
            raise DataError("`answer` must index one of at least two `choices`", file=str(path), line=number,
                            field="answer")
        items.append(item)
    return items


def encode_items(tokenizer, items: list[ProbeItem]) -> list[tuple[list[int], list[list[int]]]]:
    """Per item: the chat prompt's token ids, and each choice's ids followed by the end-of-turn token."""
    eos = tokenizer.eos_token_id
    encoded = []
    for item in items:
        prompt = tokenizer(prompt_for_generation(tokenizer, [{"role": "user", "content": item.prompt}]),
                           add_special_tokens=False)["input_ids"]
        encoded.append((prompt, [tokenizer(c, add_special_tokens=False)["input_ids"] + [eos] for c in item.choices]))
    return encoded


@torch.no_grad()
def choice_logprobs(model, encoded: list[tuple[list[int], list[list[int]]]], pad_id: int,
                    batch_size: int = 16, on_batch=None) -> list[list[float]]:
    """Summed log-probability of each choice given its prompt, the prompt run once per item.

    Prompts (left-padded) fill a KV cache that is copied once per choice, so the shared ~40-token chat
    prompt is not recomputed for each choice: on SmolLM2-135M, 64 items took 14 s of CPU time against
    30 s when each choice was scored as a whole sequence (measured, 1 thread).
    """
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    scores: list[list[float]] = [[] for _ in encoded]
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(encoded[i][0]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            prompt = encoded[i][0]
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        ids, mask = ids.to(device), mask.to(device)
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        rows = [(row, k) for row, i in enumerate(chunk) for k in range(len(encoded[i][1]))]
        owner = torch.tensor([row for row, _ in rows], device=device)
        cache = out.cache
        cache.batch_select_indices(owner)
        answers = [encoded[chunk[row]][1][k] for row, k in rows]
        longest = max(len(a) for a in answers)
        answer_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
        answer_mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for r, answer in enumerate(answers):
            answer_ids[r, :len(answer)] = torch.tensor(answer)
            answer_mask[r, :len(answer)] = 1
        answer_ids, answer_mask = answer_ids.to(device), answer_mask.to(device)
        positions = mask.sum(-1)[owner].unsqueeze(1) + torch.arange(longest, device=device)
        logits = model(input_ids=answer_ids, attention_mask=torch.cat([mask[owner], answer_mask], dim=1),
                       position_ids=positions, cache=cache, use_cache=True).logits
        rest = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(2, answer_ids[:, 1:].unsqueeze(2)).squeeze(2)
        totals = first[owner, answer_ids[:, 0]] + (rest * answer_mask[:, 1:]).sum(dim=1)
        for (row, _k), total in zip(rows, totals.tolist()):
            scores[chunk[row]].append(total)
        if on_batch:
            on_batch(len(chunk))
    return scores


def score_probe(model, tokenizer, items: list[ProbeItem] | None = None, batch_size: int = 16,
                label: str = "probe", console: Console | None = None) -> ProbeScores:
    """Score `model` on the probe: each item's answer is its most likely choice."""
    items = items if items is not None else load_probe()
    console = console or Console(stderr=True)
    started = time.monotonic()
    was_training = model.training
    model.eval()
    encoded = encode_items(tokenizer, items)
    with Progress(TextColumn(f"[bold]{label}[/bold]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(label, total=len(items))
        per_item = choice_logprobs(model, encoded, tokenizer.pad_token_id, batch_size,
                                   on_batch=lambda n: bar.advance(task, n))
    model.train(was_training)
    correct, gold = [], []
    for item, scores in zip(items, per_item):
        correct.append(max(range(len(scores)), key=scores.__getitem__) == item.answer)
        gold.append(scores[item.answer])
    return ProbeScores([i.id for i in items], [i.category for i in items], correct, gold,
                       time.monotonic() - started)


def paired_bootstrap(base: list[float], tuned: list[float], resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float]:
    """Interval for mean(base - tuned) by resampling items with replacement (the same items for both)."""
    diffs = torch.tensor(base, dtype=torch.float64) - torch.tensor(tuned, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(diffs), (resamples, len(diffs)), generator=generator)
    means = diffs[picks].mean(dim=1)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return low, high


@dataclass
class ForgettingResult:
    base: float                 # accuracy in points (0-100)
    tuned: float
    drop: float                 # base - tuned, points; positive means the tuned model forgot
    ci: tuple[float, float]     # 95% paired bootstrap interval of the drop
    gate: float                 # max_forgetting
    passed: bool
    n: int
    lost: int                   # items right before and wrong after
    gained: int
    gold_logprob_drop: float    # mean log-prob of the right answer, base - tuned (nats)
    categories: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"base": round(self.base, 2), "tuned": round(self.tuned, 2), "drop": round(self.drop, 2),
                "ci": [round(self.ci[0], 2), round(self.ci[1], 2)], "gate": self.gate, "passed": self.passed,
                "n": self.n, "lost": self.lost, "gained": self.gained,
                "gold_logprob_drop": round(self.gold_logprob_drop, 4), "categories": self.categories}


def compare_probe(base: ProbeScores, tuned: ProbeScores, max_forgetting: float,
                  resamples: int = 2000, seed: int = 0) -> ForgettingResult:
    """The drop from base to tuned on the same items, its interval, and the gate's verdict."""
    if base.ids != tuned.ids:
        raise ValueError("base and tuned were scored on different probe items")
    b = [100.0 * c for c in base.correct]
    t = [100.0 * c for c in tuned.correct]
    drop = (sum(b) - sum(t)) / len(b)
    categories = {}
    for name in sorted(set(base.categories)):
        idx = [i for i, c in enumerate(base.categories) if c == name]
        categories[name] = {"n": len(idx), "base": round(sum(b[i] for i in idx) / len(idx), 1),
                            "tuned": round(sum(t[i] for i in idx) / len(idx), 1)}
    return ForgettingResult(
        base=base.accuracy * 100, tuned=tuned.accuracy * 100, drop=drop,
        ci=paired_bootstrap(b, t, resamples, seed), gate=max_forgetting, passed=drop <= max_forgetting,
        n=len(b), lost=sum(x and not y for x, y in zip(base.correct, tuned.correct)),
        gained=sum(y and not x for x, y in zip(base.correct, tuned.correct)),
        gold_logprob_drop=(sum(base.gold_logprob) - sum(tuned.gold_logprob)) / len(b), categories=categories)


def probe_wanted(setting: bool | None, model) -> bool:
    """The `eval.forgetting` setting, where None means: on for real models, off for tiny ones."""
    if setting is not None:
        return setting
    return sum(p.numel() for p in model.parameters()) >= PROBE_MIN_PARAMETERS
