"""`hone eval --compare base,base+kb,tuned,tuned+kb`: fine-tune, retrieve, or both, on the same questions.

read the questions -> retrieve k passages per question once (recall@k where the items name their gold
source) -> each model answers once without and once with the passages (the same template as `hone chat
--kb`) -> every metric per contender, each against the first listed and against the best with a paired
bootstrap interval (compare.py) -> seconds and tokens per answer -> which to deploy, in plain words.

The advice: the best contender on the primary metric, unless a contender that is not significantly
worse (its paired interval against the best holds zero) is cheaper: no knowledge base (fewer tokens per
answer, nothing to keep up to date) before one, the base model (no training run to keep) before the tuned.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hone import atomic
from hone.data.formats import read_jsonl
from hone.data.records import ChatExample
from hone.data.render import prompt_for_generation
from hone.errors import UserError
from hone.evaluation.compare import MetricComparison, compare_metric, default_max_new_tokens
from hone.evaluation.generate import generate_batch
from hone.evaluation.metrics import pick_metrics
from hone.evaluation.run_eval import EvalOptions, _read_schema, load_model, read_test_items, resolve_target

CONTENDERS = ("base", "base+kb", "tuned", "tuned+kb")
# Simpler first: what the advice prefers when scores are indistinguishable.
SIMPLICITY = {"base": 0, "tuned": 1, "base+kb": 2, "tuned+kb": 3}


@dataclass
class Contender:
    name: str
    model: str
    answers: list[str]
    seconds: float
    prompt_tokens: float            # mean per answer
    answer_tokens: float
    scores: dict[str, float] = field(default_factory=dict)
    against_first: dict[str, MetricComparison] = field(default_factory=dict)
    against_best: MetricComparison | None = None     # primary metric: this minus the best

    @property
    def seconds_per_answer(self) -> float:
        return self.seconds / max(1, len(self.answers))


@dataclass
class KnowledgeComparison:
    kb: str
    k: int
    n: int
    primary: str
    contenders: list[Contender]
    recall: float | None            # recall@k over the items that name a gold source
    recall_items: int
    recommendation: str
    choice: str
    retrieved: list[list[str]] = field(default_factory=list)
    seconds: float = 0.0

    def metrics(self) -> dict[str, dict]:
        """contender -> its metrics: what `--json` prints on its last line."""
        out = {}
        for c in self.contenders:
            extra = {"seconds_per_answer": round(c.seconds_per_answer, 3),
                     "tokens_per_answer": round(c.prompt_tokens + c.answer_tokens, 1)}
            if c.name.endswith("+kb") and self.recall is not None:
                extra[f"recall_at_{self.k}"] = self.recall
            out[c.name] = {name: round(v, 4) for name, v in c.scores.items()} | extra
        return out

    def to_json(self) -> dict:
        return {"kb": self.kb, "k": self.k, "n": self.n, "primary": self.primary, "choice": self.choice,
                "recommendation": self.recommendation, "recall": self.recall, "recall_items": self.recall_items,
                "contenders": {c.name: {"model": c.model, "answers": c.answers,
                                        "against_first": {m: vars(v) for m, v in c.against_first.items()},
                                        "against_best": vars(c.against_best) if c.against_best else None}
                               for c in self.contenders},
                "metrics": self.metrics(), "retrieved": self.retrieved, "seconds": round(self.seconds, 1)}


def parse_contenders(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown or not names or len(set(names)) != len(names):
        raise UserError(f"--compare {text!r}: name each of {', '.join(CONTENDERS)} at most once, comma-separated")
    return names


def gold_sources(path: Path) -> dict[int, list[str]]:
    """line -> the item's gold source ids (`source` or `sources`: chunk ids or document names)."""
    gold = {}
    for line, record in read_jsonl(path):
        value = record.get("sources", record.get("source"))
        if isinstance(value, str):
            gold[line] = [value]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            gold[line] = value
    return gold


def _hit(gold: list[str], passages) -> bool:
    return any(p.id == g or p.source == g or p.source.startswith(g + ":") for g in gold for p in passages)


def compare_knowledge(ref: str, contenders: list[str], kb_ref: str, options: EvalOptions, k: int = 4,
                      console: Console | None = None) -> KnowledgeComparison:
    """Score each contender on `options.data`; `ref` is the tuned run (or, without tuned contenders, a model)."""
    from hone.hardware import pick_hardware
    from hone.kb import KnowledgeBase
    from hone.kb.prompt import with_passages

    console = console or Console(stderr=True)
    started = time.monotonic()
    target = resolve_target(ref)
    if target.classifier:
        raise UserError(f"{ref} is a classifier: it reads no passages; compare generative models")
    tuned_needed = any(c.startswith("tuned") for c in contenders)
    if tuned_needed and target.run_dir is None:
        raise UserError(f"--compare {','.join(contenders)}: 'tuned' needs a run; {ref} is a model (compare "
                        "base,base+kb, or pass a run)")
    base_name = options.base or (target.base if target.run_dir is not None else target.name)
    if any(c.startswith("base") for c in contenders) and base_name is None:
        raise UserError("no base model known for this run; pass --base MODEL")
    data = options.data or target.test
    if data is None:
        raise UserError("--compare needs questions: pass --data questions.jsonl")
    items = [e for e in read_test_items(Path(data), target.system_prompt, options.limit)
             if isinstance(e, ChatExample)]
    if not items:
        raise UserError("no chat, instruction or label items with an answer to score", file=str(data))
    kb = KnowledgeBase(kb_ref)
    references = [e.answer or "" for e in items]
    metrics, primary = pick_metrics(references, options.metrics,
                                    _read_schema(options.schema) if options.schema else None)
    if not options.metrics and primary == "exact_match" and any(m.name == "token_f1" for m in metrics):
        primary = "token_f1"   # questions answered in a phrase: SQuAD's F1, since exact match is ~0 for a paraphrase
    hw = pick_hardware()
    console.print(f"[bold]hone eval --compare[/bold] {', '.join(contenders)} with {kb.name}, k={k}: "
                  f"{len(items)} questions\n  hardware: {hw.device}, {hw.threads} thread(s)", highlight=False)

    asked = [e.prompt_messages for e in items]
    retrieved = [kb.search(next((m["content"] for m in reversed(q) if m["role"] == "user"), ""), k) for q in asked]
    gold = gold_sources(Path(data))
    judged = [(gold[e.line], found) for e, found in zip(items, retrieved) if e.line in gold]
    recall = sum(_hit(g, found) for g, found in judged) / len(judged) if judged else None
    with_kb = [with_passages(q, found) for q, found in zip(asked, retrieved)]

    results: dict[str, Contender] = {}
    for model_role, name, run_dir in (("base", base_name, None), ("tuned", target.name, target.run_dir)):
        roles = [c for c in contenders if c.split("+")[0] == model_role]
        if not roles:
            continue
        assert name is not None
        model, tokenizer = load_model(name, run_dir, hw.device)
        max_new = options.max_new_tokens or default_max_new_tokens(tokenizer, items)
        for role in roles:
            conversations = with_kb if role.endswith("+kb") else asked
            torch.manual_seed(options.seed)
            began = time.monotonic()
            answers = _answers(model, tokenizer, conversations, max_new, options.batch_size, role, console)
            seconds = time.monotonic() - began
            prompt_tokens = float(np.mean([_tokens(tokenizer, prompt_for_generation(tokenizer, c))
                                           for c in conversations]))
            answer_tokens = float(np.mean([_tokens(tokenizer, a) for a in answers]))
            results[role] = Contender(role, name, answers, seconds, prompt_tokens, answer_tokens)
        del model
    ordered = [results[c] for c in contenders]
    rows = {c.name: {m.name: m.statistics(c.answers, references) for m in metrics if m.statistics} for c in ordered}
    for c in ordered:
        for metric in metrics:
            comparison = compare_metric(metric, rows[c.name][metric.name], rows[ordered[0].name][metric.name],
                                        options.seed)
            c.scores[metric.name] = comparison.tuned
            if c is not ordered[0]:
                c.against_first[metric.name] = comparison
    lead = {m.name: m for m in metrics}[primary]
    best = max(ordered, key=lambda c: (c.scores[primary] * (1 if lead.higher_is_better else -1), -SIMPLICITY[c.name]))
    for c in ordered:
        c.against_best = compare_metric(lead, rows[c.name][primary], rows[best.name][primary], options.seed)
    choice, advice = recommend(ordered, best, primary)
    report = KnowledgeComparison(kb.name, k, len(items), primary, ordered, recall, len(judged), advice, choice.name,
                                 [[p.id for p in found] for found in retrieved], time.monotonic() - started)
    if target.run_dir is not None:
        atomic.write_json(target.run_dir / "compare-kb.json", report.to_json())
    return report


def _tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _answers(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int, label: str,
             console: Console) -> list[str]:
    with Progress(TextColumn(f"[bold]{label}[/bold]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task(label, total=len(conversations))
        return generate_batch(model, tokenizer, conversations, max_new_tokens, batch_size,
                              on_batch=lambda n: bar.advance(task, n))


def recommend(contenders: list[Contender], best: Contender, primary: str) -> tuple[Contender, str]:
    """Which to deploy and why, in plain words."""
    def tie(c: Contender) -> bool:
        assert c.against_best is not None and c.against_best.interval is not None
        low, high = c.against_best.interval
        return c is best or low <= 0 <= high

    choice = min((c for c in contenders if tie(c)), key=lambda c: (SIMPLICITY[c.name], c.seconds_per_answer))
    said = (f"{best.name} scores best on {primary} ({best.scores[primary]:.3f}, {best.seconds_per_answer:.2f} s and "
            f"{best.prompt_tokens + best.answer_tokens:.0f} tokens per answer).")
    worse = [c for c in contenders if not tie(c)]
    level = [c for c in contenders if tie(c) and c is not choice and c is not best]
    notes = []
    if worse:
        notes.append("Significantly worse: " + "; ".join(f"{c.name} {c.scores[primary]:.3f} ({_versus(c)})"
                                                         for c in worse) + ".")
    if level:
        notes.append("Not significantly different but more to run: " + "; ".join(
            f"{c.name} {c.scores[primary]:.3f} ({_versus(c)})" for c in level) + ".")
    if choice is best:
        return best, " ".join([f"Deploy {best.name}: {said}", *notes])
    why = {"base": "needs neither a training run nor a knowledge base",
           "tuned": "needs no knowledge base, so shorter prompts and nothing to keep in sync",
           "base+kb": "needs no training run: updating the documents updates the answers",
           "tuned+kb": "is the only one as good"}[choice.name]
    return choice, " ".join([f"Deploy {choice.name}: {said} {choice.name} scores {choice.scores[primary]:.3f}, not "
                             f"significantly worse ({_versus(choice)}, {len(choice.answers)} questions), at "
                             f"{choice.seconds_per_answer:.2f} s and {choice.prompt_tokens + choice.answer_tokens:.0f} "
                             f"tokens per answer, and it {why}.", *notes])


def _versus(c: Contender) -> str:
    """"difference -0.020, 95% interval -0.050 to +0.010" of `c` against the best contender."""
    diff = c.against_best
    assert diff is not None and diff.interval is not None and diff.difference is not None
    return f"difference {diff.difference:+.3f}, 95% interval {diff.interval[0]:+.3f} to {diff.interval[1]:+.3f}"


def print_comparison(report: KnowledgeComparison, console: Console) -> None:
    """The contenders side by side, then the advice."""
    from rich.table import Table

    first = report.contenders[0].name
    table = Table(header_style="bold", title=f"{report.n} questions, {report.kb}, {report.k} passages per question "
                  f"(* deploy; every metric in --json)")
    shown = [report.primary, *(n for n in ("exact_match", "token_f1", "rouge_l") if n != report.primary)]
    names = [n for n in shown if n in report.contenders[0].scores][:3]
    for column in ("contender", *names, f"vs {first} [95%]", "s/answer", "tokens"):
        table.add_column(column, justify="left" if column == "contender" else "right")
    for c in report.contenders:
        versus = c.against_first.get(report.primary)
        delta = (f"{versus.difference:+.3f} [{versus.interval[0]:+.2f}, {versus.interval[1]:+.2f}]"
                 if versus and versus.interval and versus.difference is not None else "")
        table.add_row(c.name + (" *" if c.name == report.choice else ""), *(f"{c.scores[n]:.3f}" for n in names), delta,
                      f"{c.seconds_per_answer:.2f}", f"{c.prompt_tokens + c.answer_tokens:.0f}")
    console.print(table)
    if report.recall is not None:
        console.print(f"retrieval recall@{report.k}: {report.recall:.3f} ({report.recall_items} questions name their "
                      "source)", highlight=False)
    console.print(report.recommendation, highlight=False, markup=False)
