"""Distillation: a student learns a teacher's answers, and its token distributions where it can, top to bottom.

read the prompts -> open the run folder -> load the teacher -> the teacher answers the training and
validation prompts (cached in the run folder; an interrupted run resumes where it stopped) -> the teacher
answers the test prompts (the score to keep) -> SFT of the student on the teacher's answers, plus
KL(teacher || student) on every answer token when both tokenizers have the same vocabulary ->
student base vs student vs teacher on the test split, and how fast each generates.

Sequence-level distillation (Kim & Rush 2016) needs nothing from the teacher but its text, so any
teacher and any student work; the word-level KL term (Hinton et al. 2015, at temperature 1,
`distill.kl_weight`) adds the teacher's whole distribution at each position and needs a shared
vocabulary. It is off by default: measured on the demo task, it matched answers-only step for step at
1.34x the training time (docs/distill.md). Both run on hone's own
loop, so the student gets every SFT safeguard (validation, early stopping, restore best, forgetting
probe, replay, report). Why not TRL's GKDTrainer: docs/decisions.md.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hone import atomic
from hone.config import RunConfig
from hone.data.records import ChatExample
from hone.errors import Interrupted, ModelNotFound, UserError
from hone.evaluation.compare import Evaluation, default_max_new_tokens, evaluate_answers
from hone.evaluation.generate import generate_batch
from hone.methods.artifact import load_run_model
from hone.models.catalogue import ResolvedModel, resolve_model
from hone.models.load import load_causal_lm, load_tokenizer
from hone.objectives.lifecycle import RunResult, RunStart, begin_run
from hone.objectives.sft import (
    ChatSplits,
    Teacher,
    data_summary,
    read_chat_splits,
    render_chats,
    scoring_settings,
    train_on_chats,
)
from hone.registry.runs import find_run, read_record, run_reference, update_record
from hone.training.distributed import ranks
from hone.training.regularise import kl_to_teacher

TEACHER_FOLDER = "teacher"  # in the run folder: the teacher's answers, one JSONL file per split


def run_distill(config: RunConfig, run_dir: Path | None = None, console: Console | None = None) -> RunResult:
    """Distil `distill.teacher` into the student `model.name`; `run_dir` of an interrupted run resumes it."""
    console = console or Console(stderr=True)
    team = ranks()
    # 1. The prompts, read as SFT reads them; the test split keeps its reference answers.
    splits = read_chat_splits(config)
    render_chats(config, splits)  # the student's template renders these chats (or fails) before any folder exists
    start = begin_run(config, run_dir, console, data_summary(config, splits), own_loop=True)

    # 2. The teacher, and whether the student can learn its distributions as well as its answers.
    source = teacher_source(config)
    teacher, tokenizer = load_teacher(source, start.hw.device)
    same = same_vocabulary(tokenizer, load_tokenizer(config.model.name))
    weight = kl_weight(config, same)
    max_new = (config.distill.max_new_tokens or config.eval.max_new_tokens
               or default_max_new_tokens(tokenizer, splits.train))
    console.print(f"  teacher: {config.distill.teacher} ({teacher_path(source)}); "
                  + (f"its answers and KL to its distributions, weight {weight:g}" if weight else "its answers"),
                  highlight=False)

    # 3. Its answers to the training and validation prompts: what the student learns.
    answered = {}
    for split, examples in (("train", splits.train), ("validation", splits.validation)):
        path = start.run_dir / TEACHER_FOLDER / f"{split}.jsonl"
        if team.main:
            teacher_answers(teacher, tokenizer, examples, path, max_new, config.eval.batch_size, console)
        team.wait()  # rank 0 wrote the answers; every rank reads them
        answered[split] = with_answers(examples, read_answers(path, examples))

    # 4. Its score on the test split: the third column beside student base and student.
    evaluation = score_teacher(start, teacher, tokenizer, splits.test) if splits.test and team.main else None
    if team.main:
        update_record(start.run_dir, teacher={
            "spec": config.distill.teacher, "path": str(teacher_path(source)),
            "run": str(source.resolve()) if isinstance(source, Path) else None, "kl_weight": weight,
            "same_vocabulary": same, "max_new_tokens": max_new,
            "answers": {split: len(examples) for split, examples in answered.items()}})

    # 5. The student learns the answers through SFT's own path (and the teacher's distributions with it).
    if not weight:
        teacher = None  # answers only: free its memory before the student trains
        gc.collect()
    distilled = ChatSplits(answered["train"], answered["validation"], splits.test)
    return train_on_chats(start, distilled, Teacher(evaluation, kl_to_teacher(teacher, weight)))


def teacher_source(config: RunConfig) -> Path | ResolvedModel:
    """The teacher named by `distill.teacher`: a run folder (a folder, run id, NAME:VERSION, NAME@TAG or
    'latest') or a model (catalogue name, HF folder, .gguf)."""
    spec = config.distill.teacher
    assert spec is not None  # check_distill refuses distill without one
    if run_reference(spec) is not None:
        return find_run(spec)
    try:
        return resolve_model(spec)
    except ModelNotFound as not_a_model:
        try:
            return find_run(spec)
        except UserError:
            raise config.error(f"teacher {spec!r} is neither a model nor a run ({not_a_model})",
                               "distill.teacher") from None


def teacher_path(source: Path | ResolvedModel) -> Path:
    return source if isinstance(source, Path) else source.path


def load_teacher(source: Path | ResolvedModel, device: str):
    """(model, tokenizer): a run's tuned model (an adapter merged in fp32) or a plain model, in eval mode."""
    if isinstance(source, Path):
        return load_run_model(source, device)
    return load_causal_lm(source, device), load_tokenizer(source)


def teacher_tokenizer(source: Path | ResolvedModel):
    """The teacher's tokenizer without its weights (for the checks before any work)."""
    if isinstance(source, Path):
        model = source / "model"
        return load_tokenizer(str(model) if (model / "config.json").is_file() else read_record(source)["base_model"])
    return load_tokenizer(source)


def same_vocabulary(teacher_tok, student_tok) -> bool:
    """Token ids mean the same text in both: the condition for comparing distributions position by position."""
    return teacher_tok.get_vocab() == student_tok.get_vocab()


def kl_weight(config: RunConfig, same: bool) -> float:
    """distill.kl_weight, refused (naming both models) when it is above 0 and the vocabularies differ.

    Off by default: on the demo task (docs/distill.md) the KL term cost 1.34x the training time and 1.3 GB
    for the same score at equal steps, and lost at equal time."""
    weight = config.distill.kl_weight
    if weight and not same:
        raise config.error(f"distill.kl_weight needs a shared vocabulary, but teacher {config.distill.teacher!r} "
                           f"and student {config.model.name!r} tokenize differently; drop it (the student then "
                           "learns the teacher's answers only)", "distill.kl_weight")
    return weight


def check_distill(config: RunConfig) -> None:
    """The teacher exists, and a KL weight the vocabularies cannot support is refused (before any work)."""
    if not config.distill.teacher:
        raise config.error("objective distill needs a teacher: pass --teacher RUN_OR_MODEL (a run folder, "
                           "NAME:VERSION, 'latest', or a model) or set distill.teacher", "distill.teacher")
    source = teacher_source(config)
    if isinstance(source, Path) and read_record(source).get("status") != "succeeded":
        raise config.error(f"teacher run {source} has not finished (status: "
                           f"{read_record(source).get('status', 'unknown')}); finish it first", "distill.teacher")
    if config.distill.kl_weight:
        kl_weight(config, same_vocabulary(teacher_tokenizer(source), load_tokenizer(config.model.name)))


def prompt_key(example: ChatExample) -> str:
    """A short fingerprint of what the teacher was asked: a cached answer counts only for the same prompt."""
    text = json.dumps(example.prompt_messages, sort_keys=True, ensure_ascii=False)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def read_answers(path: Path, examples: list[ChatExample]) -> dict[int, str]:
    """The cached answers that still fit `examples` (index -> answer): from the finished file, else from
    the partial one (whose last line may be torn by a kill)."""
    keys = [prompt_key(e) for e in examples]
    found: dict[int, str] = {}
    for file in (path, partial_path(path)):
        if not file.is_file():
            continue
        for line in file.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short when the run was killed
            index = entry.get("index")
            if isinstance(index, int) and 0 <= index < len(keys) and entry.get("prompt") == keys[index]:
                found[index] = entry["messages"][-1]["content"]
        if found:
            break
    return found


def partial_path(path: Path) -> Path:
    return path.with_name(path.stem + ".partial.jsonl")


def teacher_answers(teacher, tokenizer, examples: list[ChatExample], path: Path, max_new_tokens: int,
                    batch_size: int, console: Console) -> list[str]:
    """The teacher's greedy answer to each example's prompt, cached at `path`: one chat per line (the
    prompt and the teacher's answer, with the example's index and prompt fingerprint), so the file is
    also SFT data as it stands.

    Answers are appended to a partial file batch by batch (flushed and synced), so a run stopped here
    keeps what it has and generates only the rest on resume; once all are there, `path` is written
    atomically in example order and the partial file goes."""
    done = read_answers(path, examples)
    keys = [prompt_key(e) for e in examples]
    entry = lambda i: json.dumps({"index": i, "prompt": keys[i], "messages": with_answers(  # noqa: E731
        [examples[i]], {0: done[i]})[0].messages}, ensure_ascii=False) + "\n"
    if len(done) == len(examples) and path.is_file():
        return [done[i] for i in range(len(examples))]
    partial = partial_path(path)
    atomic.write_text(partial, "".join(entry(i) for i in sorted(done)))  # drop a torn last line before appending
    todo = sorted((i for i in range(len(examples)) if i not in done),
                  key=lambda i: len(json.dumps(examples[i].prompt_messages)))  # similar lengths batch together
    label = f"teacher answers ({path.stem})"
    started = printed = time.monotonic()
    try:
        with Progress(TextColumn(f"[bold]{label}[/bold]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as bar, partial.open("a", encoding="utf-8") as handle:
            task = bar.add_task(label, total=len(examples), completed=len(done))
            for first in range(0, len(todo), batch_size):
                chunk = todo[first:first + batch_size]
                answers = generate_batch(teacher, tokenizer, [examples[i].prompt_messages for i in chunk],
                                         max_new_tokens, batch_size)
                for i, answer in zip(chunk, answers):
                    done[i] = answer
                    handle.write(entry(i))
                handle.flush()
                os.fsync(handle.fileno())
                bar.advance(task, len(chunk))
                if not console.is_terminal and time.monotonic() - printed >= 30:  # logs, CI: no live bar there
                    console.print(f"{label}: {len(done)}/{len(examples)}", highlight=False)
                    printed = time.monotonic()
    except KeyboardInterrupt:
        raise Interrupted(0, f"interrupted while the teacher answered the {path.stem} prompts ({len(done)} of "
                             f"{len(examples)} answers kept in {partial})") from None
    atomic.write_text(path, "".join(entry(i) for i in range(len(examples))))
    partial.unlink(missing_ok=True)
    if todo:
        console.print(f"  teacher answered {len(todo)} {path.stem} prompts in {time.monotonic() - started:.0f} s"
                      + (f" ({len(examples) - len(todo)} were cached)" if len(todo) < len(examples) else ""),
                      highlight=False)
    return [done[i] for i in range(len(examples))]


def with_answers(examples: list[ChatExample], answers: dict[int, str]) -> list[ChatExample]:
    """Each example with its last assistant turn replaced by the teacher's answer (earlier turns stay)."""
    return [ChatExample(e.prompt_messages + [{"role": "assistant", "content": answers[i]}], e.file, e.line,
                        e.meta, e.tools) for i, e in enumerate(examples)]


def score_teacher(start: RunStart, teacher, tokenizer, test: list[ChatExample]) -> Evaluation:
    """The teacher's answers to the test split and their scores, kept in run.json so a resumed run does not
    redo them; scored as the student will be (metric and generation limit from scoring_settings)."""
    record = read_record(start.run_dir) if start.resume else {}
    metric, max_new = scoring_settings(start.config, tokenizer, test)
    if record.get("teacher_scores"):
        return Evaluation(metric, record["teacher_answers"], record["teacher_scores"],
                          record.get("teacher_seconds", 0.0))
    evaluation = evaluate_answers(teacher, tokenizer, test, metric, max_new, start.config.eval.batch_size,
                                  "teacher eval", start.console)
    update_record(start.run_dir, teacher_answers=evaluation.answers, teacher_scores=evaluation.scores,
                  teacher_seconds=round(evaluation.seconds, 3))
    return evaluation
