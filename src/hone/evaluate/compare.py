"""Score a model on test examples by generating answers; compare base and tuned item by item."""
from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hone.data.formats import ChatExample
from hone.evaluate.metrics import METRICS
from hone.models.generate import generate_batch


@dataclass
class Evaluation:
    metric: str
    answers: list[str]
    scores: list[float]
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def score(self) -> float:
        return sum(self.scores) / max(1, len(self.scores))


def default_max_new_tokens(tokenizer, examples: list[ChatExample]) -> int:
    """Room for the longest reference answer plus a margin (and its end-of-turn token)."""
    longest = max(len(tokenizer(e.answer or "", add_special_tokens=False)["input_ids"]) for e in examples)
    return int(longest * 1.25) + 8


def evaluate_answers(model, tokenizer, examples: list[ChatExample], metric: str, max_new_tokens: int,
                     batch_size: int, label: str, console: Console | None = None) -> Evaluation:
    """Generate an answer for each example's prompt and score it against its last assistant message."""
    import time

    console = console or Console(stderr=True)
    started = time.monotonic()
    with Progress(TextColumn(f"[bold]{label}[/bold]"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(label, total=len(examples))
        answers = generate_batch(model, tokenizer, [e.prompt_messages for e in examples], max_new_tokens,
                                 batch_size, on_batch=lambda n: bar.advance(task, n))
    scorer = METRICS[metric]
    scores = [scorer(a, e.answer or "") for a, e in zip(answers, examples)]
    return Evaluation(metric, answers, scores, time.monotonic() - started)


def item_outcomes(base: Evaluation, tuned: Evaluation) -> dict[str, int]:
    """How many items the tuned model improved, regressed or left unchanged."""
    outcome = {"improved": 0, "regressed": 0, "unchanged": 0}
    for b, t in zip(base.scores, tuned.scores):
        outcome["improved" if t > b else "regressed" if t < b else "unchanged"] += 1
    return outcome
