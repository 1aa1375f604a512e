"""`hone promote CANDIDATE --over production`: champion against challenger, and the tag moves only on proof.

    the candidate run and the run NAME@TAG points at (same name) -> both answer the ORIGINAL test split
    (the champion's) and a held-out slice of new data (corrected traffic) -> paired bootstrap intervals
    of candidate minus champion (evaluation/compare.py) -> the forgetting probe on both (forgetting.py)
    -> three conditions -> the tag moves when all hold -> the decision and its figures in the registry.

The conditions:
    original test   not worse: the interval of the difference does not lie wholly below zero
    new slice       better: the interval lies wholly above zero
    forgetting      the probe's drop from champion to candidate is within eval.max_forgetting points
Each model is loaded once and answers both sets and the probe before the next one loads.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.console import Console

from hone.config import load_config
from hone.data.records import ChatExample
from hone.errors import UserError
from hone.evaluation.compare import MetricComparison, compare_answers, default_max_new_tokens, generate_answers
from hone.evaluation.forgetting import ProbeScores, compare_probe, load_probe, probe_wanted, score_probe
from hone.evaluation.metrics import pick_metrics
from hone.evaluation.run_eval import read_test_items
from hone.registry import store
from hone.registry.promotions import record_promotion


@dataclass
class Condition:
    name: str            # original_test, new_slice, forgetting
    passed: bool | None  # None: not measured (and why is in `line`)
    line: str            # the figures in words, one line


@dataclass
class PromotionResult:
    candidate: str       # NAME:VERSION
    champion: str
    tag: str
    promoted: bool
    forced: bool
    conditions: list[Condition]
    figures: dict = field(default_factory=dict)

    @property
    def reasons(self) -> list[str]:
        """One line per failed condition, with its figures."""
        return [c.line for c in self.conditions if c.passed is False]

    def to_json(self) -> dict:
        return {"candidate": self.candidate, "champion": self.champion, "tag": self.tag, "promoted": self.promoted,
                "forced": self.forced, "reasons": self.reasons,
                "conditions": [asdict(c) for c in self.conditions], "figures": self.figures}


@dataclass
class Answers:
    """One model's answers to both sets and its probe scores (None when the probe does not apply)."""
    original_test: list[str]
    new_slice: list[str]
    probe: ProbeScores | None


def promote(candidate: str, over: str = "production", new_slice: Path | None = None, *, force: bool = False,
            limit: int | None = None, max_forgetting: float | None = None, batch_size: int = 32, seed: int = 0,
            console: Console | None = None, champion_ref: str | None = None,
            original_test: Path | None = None) -> PromotionResult:
    """Weigh `candidate` against NAME@`over`; move the tag when it is proven at least as good (or `force`).

    `champion_ref` weighs it against that run instead (the service: each job is a run of its own name, so the
    org's production run has another name; when the tag moves it leaves that run). `original_test` stands in
    for a champion trained without a test split (the service: the examples its job held out)."""
    console = console or Console(stderr=True)
    row = store.get_run(candidate)
    champion = store.get_run(champion_ref) if champion_ref else store.resolve_ref(f"{row.name}@{over}")
    if champion is None:
        raise UserError(f"nothing is tagged {row.name}@{over} yet, so there is nothing to weigh {row.ref} against; "
                        f"tag the first version with: hone runs tag {row.ref} {over}")
    if champion.id == row.id:
        raise UserError(f"{row.ref} is already {row.name}@{over}")
    held_out_from = None
    if new_slice is None:
        new_slice, held_out_from = _held_out_slice(row)
    config = load_config(Path(champion.path) / "config.yaml")
    if original_test is not None:
        config.data.test = original_test
    if config.data.test is None:
        raise UserError(f"{champion.ref} was trained without a test split, so there is no original test to keep; "
                        "train it with --test FILE")
    system = config.data.system_prompt
    original = _chats(Path(config.data.test), system, limit)
    fresh = _chats(Path(new_slice), system, limit)
    gate = config.eval.max_forgetting if max_forgetting is None else max_forgetting
    console.print(f"[bold]hone promote[/bold] {row.ref} over {champion.ref} ({row.name}@{over}): "
                  f"{len(original)} original test items ({config.data.test}), {len(fresh)} new-slice items "
                  f"({new_slice})", highlight=False)
    if held_out_from:
        console.print(f"  new slice: {new_slice}, held out by hone data from-traffic from {row.ref}'s training "
                      f"data ({held_out_from})", highlight=False, soft_wrap=True)
    probes = _probes_from_continued_run(row, champion)
    if probes:
        console.print(f"  forgetting probe: the scores {row.ref}'s own run took of {champion.ref} (its parent, "
                      "loaded as its starting point) and of itself", highlight=False)
    answers = {name: _answer(Path(r.path), original, fresh, batch_size, seed, f"{name} {r.ref}", console,
                             probes.get(name, False))
               for name, r in (("production", champion), ("candidate", row))}

    figures: dict = {}
    conditions = []
    for key, label, items, rule in (("original_test", "original test", original, "not_worse"),
                                    ("new_slice", "new slice", fresh, "better")):
        comparison = _compare(items, getattr(answers["candidate"], key), getattr(answers["production"], key), seed)
        figures[key] = {"n": len(items), **asdict(comparison)}
        conditions.append(_condition(key, label, comparison, len(items), rule, over))
    figures["new_slice"]["file"] = str(new_slice)
    conditions.append(_forgetting(answers["production"].probe, answers["candidate"].probe, gate, over, figures))

    passed = all(c.passed is not False for c in conditions)
    promoted = passed or force
    if promoted:
        store.set_tag(row.ref, over)
        if champion.name != row.name:
            store.set_tag(champion.ref, over, remove=True)
    result = PromotionResult(row.ref, champion.ref, over, promoted, force and not passed, conditions, figures)
    record_promotion(row.name, over, row.id, champion.id, promoted, result.forced, result.reasons, figures)
    return result


def _held_out_slice(candidate) -> tuple[Path, str]:
    """(the held-out slice, the training file it was held out of) that `hone data from-traffic` recorded in the
    lineage beside the candidate's training data; a UserError asking for --new-slice when there is none."""
    import json

    train = (candidate.config.get("data") or {}).get("train")
    lineage = Path(f"{train}.lineage.json") if train else None
    held = None
    if lineage is not None and lineage.is_file():
        try:
            held = (json.loads(lineage.read_text(encoding="utf-8")).get("holdout") or {}).get("file")
        except (ValueError, AttributeError) as exc:
            raise UserError(f"unreadable lineage ({exc}); give --new-slice FILE", file=str(lineage)) from exc
    if not held:
        why = (f"its training data {train} has no held-out slice recorded in {lineage}" if lineage and lineage.is_file()
               else f"its training data {train} was not written by hone data from-traffic (no {lineage})")
        raise UserError(f"give --new-slice FILE: held-out new data on which {candidate.ref} must be better; {why}")
    return Path(held), str(train)


def _chats(path: Path, system: str | None, limit: int | None) -> list[ChatExample]:
    if not path.is_file():
        raise UserError("test data not found", file=str(path))
    chats = [e for e in read_test_items(path, system, limit) if isinstance(e, ChatExample)]
    if not chats:
        raise UserError("holds no chat examples with an answer to score", file=str(path))
    return chats


def _probes_from_continued_run(candidate, champion) -> dict[str, ProbeScores]:
    """A candidate made by `hone train --continue` from the champion scored both on the default probe already:
    its run's "base" was the champion's weights. Those scores, so the probe is not run twice; else {}."""
    from hone.registry.runs import read_record

    if candidate.parent_id != champion.id or not (candidate.config.get("model") or {}).get("continue_from") \
            or (candidate.config.get("eval") or {}).get("probe"):
        return {}
    record = read_record(Path(candidate.path))
    if not record.get("probe_base") or not record.get("probe_tuned"):
        return {}
    return {"production": ProbeScores.from_json(record["probe_base"]),
            "candidate": ProbeScores.from_json(record["probe_tuned"])}


def _answer(run: Path, original: list[ChatExample], fresh: list[ChatExample], batch_size: int, seed: int,
            label: str, console: Console, probe: ProbeScores | None | bool = False) -> Answers:
    """`probe` False: score the probe here (when the model is big enough); else the scores to use."""
    from hone.hardware import pick_hardware
    from hone.methods.artifact import load_run_model

    model, tokenizer = load_run_model(run, pick_hardware().device)
    torch.manual_seed(seed)
    answer = lambda items, what: generate_answers(model, tokenizer, items, default_max_new_tokens(tokenizer, items),  # noqa: E731
                                                  batch_size, f"{label}: {what}", console)
    if probe is False:
        probe = score_probe(model, tokenizer, load_probe(), label=f"{label}: forgetting probe", console=console) \
            if probe_wanted(None, model) else None
    assert probe is not True
    return Answers(answer(original, "original test"), answer(fresh, "new slice"), probe)


def _compare(items: list[ChatExample], candidate: list[str], champion: list[str], seed: int) -> MetricComparison:
    """The primary metric (chosen from the references, as hone eval does) with its paired interval."""
    references = [e.answer or "" for e in items]
    metrics, primary = pick_metrics(references)
    comparison = compare_answers(metrics, primary, references, candidate, champion, seed=seed)
    return next(m for m in comparison.metrics if m.name == primary)


def _condition(key: str, label: str, m: MetricComparison, n: int, rule: str, tag: str) -> Condition:
    assert m.base is not None and m.interval is not None and m.difference is not None
    low, high = m.interval
    sign = 1 if m.higher_is_better else -1
    lows, highs = sorted((sign * low, sign * high))
    passed = highs >= 0 if rule == "not_worse" else lows > 0
    fmt = (lambda v: f"{v:.1%}") if m.percent else (lambda v: f"{v:.4g}")  # noqa: E731
    dfmt = (lambda v: f"{v * 100:+.1f} points") if m.percent else (lambda v: f"{v:+.4g}")  # noqa: E731
    verdict = {("not_worse", True): "not worse", ("not_worse", False): "worse",
               ("better", True): "better", ("better", False): "not shown better"}[rule, passed]
    line = (f"{label} ({n} items, {m.name}): candidate {fmt(m.tuned)} vs {tag} {fmt(m.base)}, difference "
            f"{dfmt(m.difference)} (95% CI {dfmt(low)} to {dfmt(high)}): {verdict}")
    return Condition(key, passed, line)


def _forgetting(champion: ProbeScores | None, candidate: ProbeScores | None, gate: float, tag: str,
                figures: dict) -> Condition:
    if champion is None or candidate is None:
        figures["forgetting"] = None
        return Condition("forgetting", None, "forgetting probe: not measured (a model under 10M parameters: "
                         "a general-knowledge probe tells nothing there)")
    verdict = compare_probe(champion, candidate, gate)
    figures["forgetting"] = verdict.to_json()
    line = (f"forgetting probe ({verdict.n} items): candidate {verdict.tuned:.1f}% vs {tag} {verdict.base:.1f}%, "
            f"drop {verdict.drop:+.1f} points (95% CI {verdict.ci[0]:+.1f} to {verdict.ci[1]:+.1f}), gate "
            f"{gate:g} points: " + ("within" if verdict.passed else "over"))
    return Condition("forgetting", verdict.passed, line)
