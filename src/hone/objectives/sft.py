"""Supervised fine-tuning on chat data, top to bottom.

load data -> load base -> render with the chat template (loss on assistant turns and their
end-of-turn token) -> score the base on the test split -> apply the method -> train -> save ->
score the tuned model -> record everything in the run folder.

`run_sft` reads the splits and opens the run folder; `train_on_chats` is everything after, and
distillation (objectives/distill.py) runs it on the teacher's answers.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console

from hone.config import RunConfig
from hone.data.load import load_chat_records as load_chat
from hone.data.records import ChatExample
from hone.data.render import common_system_prompt, tokenize_chat, with_system_prompt
from hone.data.split import hold_out
from hone.evaluation.compare import Evaluation, default_max_new_tokens, evaluate_answers, item_outcomes
from hone.evaluation.engine import Generation, model_generation, pick_generation
from hone.evaluation.metrics import pick_metric
from hone.hardware import peak_memory_mb
from hone.methods import apply_method, artifact_folder_name, count_parameters, estimate_memory, load_base, load_tuned
from hone.methods.artifact import load_trainable_adapter
from hone.models.catalogue import resolve_model
from hone.models.load import load_tokenizer
from hone.objectives.continued import continued_adapter
from hone.objectives.lifecycle import (
    Row,
    RunResult,
    RunStart,
    begin_run,
    finish_run,
    own_loop_trackers,
    probe_base,
    probe_tuned,
    save_artifact,
)
from hone.registry.runs import read_record, update_record
from hone.training.batches import micro_batches
from hone.training.distributed import close as close_ranks, ranks
from hone.training.loop import train_loop
from hone.training.precision import bf16_frozen_linears, pick_attention
from hone.training.regularise import lr_warning
from hone.training.replay import mix_replay
from hone.training.sharding import fuse_lora_wanted, sharding_wanted
from hone.training.step import token_cap


@dataclass
class ChatSplits:
    """The chat examples of one run: what it trains on, validates on and is scored on."""
    train: list[ChatExample]
    validation: list[ChatExample]
    test: list[ChatExample]


@dataclass
class Teacher:
    """What distillation adds to an SFT run (objectives/distill.py): the teacher's score on the same test
    items (a third column beside base and tuned) and its KL term in the loss (None: answers only)."""
    evaluation: Evaluation | None
    regularise: Callable | None = None
    name: str = "teacher"


def run_sft(config: RunConfig, run_dir: Path | None = None, console: Console | None = None) -> RunResult:
    """Train and evaluate one SFT run; `run_dir` of an interrupted run resumes it."""
    console = console or Console(stderr=True)
    splits = read_chat_splits(config)
    rendered = render_chats(config, splits)  # a template that cannot render the data fails before any folder
    start = begin_run(config, run_dir, console, data_summary(config, splits), own_loop=True)
    return train_on_chats(start, splits, rendered=rendered)


def read_chat_splits(config: RunConfig) -> ChatSplits:
    """Train, validation (a seeded share of train when no file is given) and test, with the system prompt."""
    data = config.data
    read = lambda path: with_system_prompt(load_chat(path, data.format, data.strict), data.system_prompt)  # noqa: E731
    assert data.train is not None  # objectives/checks.py refuses a run without it
    train = read(data.train)
    if data.validation:
        validation = read(data.validation)
    else:
        train, validation = hold_out(train, data.validation_fraction, config.train.seed)
    return ChatSplits(train, validation, read(data.test) if data.test else [])


def data_summary(config: RunConfig, splits: ChatSplits) -> dict:
    """run.json's `data`: where each split came from and its size."""
    data = config.data
    return {"train": str(data.train), "validation": str(data.validation or ""), "test": str(data.test or ""),
            "n_train": len(splits.train), "n_validation": len(splits.validation), "n_test": len(splits.test)}


def scoring_settings(config: RunConfig, tokenizer, test: list[ChatExample]) -> tuple[str, int]:
    """The test metric (eval.metric, or chosen from the reference answers) and the generation limit."""
    metric = pick_metric([e.answer or "" for e in test]) if config.eval.metric == "auto" else config.eval.metric
    return metric, config.eval.max_new_tokens or default_max_new_tokens(tokenizer, test)


@dataclass
class RenderedChats:
    """The splits as token ids, labels only on the assistant's words and end-of-turn tokens."""
    tokenizer: Any                # a transformers tokenizer
    train: list[ChatExample]      # the task's examples, with replayed general chats mixed in
    n_own: int                    # how many of `train` are the task's
    train_set: list
    val_set: list

    @property
    def truncated(self) -> int:
        return sum(e.truncated for e in self.train_set + self.val_set)


def render_chats(config: RunConfig, splits: ChatSplits) -> RenderedChats:
    """Mix in earlier chats against forgetting (train.replay of hone's general chats or train.replay_data;
    validation stays the task's) and render."""
    pool = None
    if config.train.replay_data is not None and config.train.replay:
        pool = with_system_prompt(load_chat(config.train.replay_data, None, config.data.strict),
                                  config.data.system_prompt)
    train = mix_replay(splits.train, config.train.replay, config.train.seed, pool)
    tokenizer = load_tokenizer(resolve_model(config.model.name))
    reasoning = "mask" if config.data.mask_reasoning else "train"
    tokenize = lambda examples: [tokenize_chat(tokenizer, e.messages, config.data.max_length, e.tools, reasoning)  # noqa: E731
                                 for e in examples]
    return RenderedChats(tokenizer, train, len(splits.train), tokenize(train), tokenize(splits.validation))


def train_on_chats(start: RunStart, splits: ChatSplits, teacher: Teacher | None = None,
                   rendered: RenderedChats | None = None) -> RunResult:
    """SFT from an open run folder: render (unless `rendered` already is), score the base, apply the method,
    train, save, score the tuned model, record. `teacher` (distillation) adds its KL term and its score."""
    config, console, hw, team = start.config, start.console, start.hw, ranks()
    data = config.data
    # 1-2. Replay and render (objectives/sft.py render_chats).
    rendered = rendered or render_chats(config, splits)
    tokenizer, train, n_own = rendered.tokenizer, rendered.train, rendered.n_own
    train_set, val_set, truncated = rendered.train_set, rendered.val_set, rendered.truncated
    test = splits.test
    base = resolve_model(config.model.name)
    if team.main:
        update_record(start.run_dir, system_prompt=common_system_prompt(train),
                      data=read_record(start.run_dir).get("data", {}) | {"n_train": len(train_set),
                                                                          "truncated": truncated})

    # 3. The base model, with the attention kernel that is fastest for these lengths.
    attention: str = config.train.attention
    if attention == "auto":
        attention = pick_attention(hw.device, max(len(e.input_ids) for e in train_set + val_set))
    model = load_base(base, config.method, hw.device, attention)  # qlora: NF4 as it loads
    continued = continued_adapter(config)
    if continued is not None:  # hone train --continue: the parent's adapter, trainable; "base" is the parent
        model = load_trainable_adapter(model, continued)
        console.print(f"  start: the parent's adapter {continued} (trainable); base scores are the parent's",
                      highlight=False)
    console.print(f"  data: {len(train_set)} train, {len(val_set)} validation, {len(test)} test examples"
                  + (f"; [yellow]{truncated} truncated to {data.max_length} tokens[/yellow]" if truncated else ""))

    # 4. The base model on the test split and on the forgetting probe, before any change.
    metric = base_eval = None
    engines: dict[str, str] = {}   # what generated each evaluation's answers, recorded with the results
    if test and team.main:
        metric, max_new = scoring_settings(config, tokenizer, test)
        if config.eval.base:
            generation = base_generation(config, str(base.path), model, hw, console)
            base_eval = score_base(start, model, tokenizer, test, metric, max_new, generation)
            engines["base"] = generation.describe()
    probe = probe_base(start, model, tokenizer)
    if len(train) > n_own:
        source = config.train.replay_data or "hone's general chats"
        console.print(f"  replay: {len(train) - n_own} of the {len(train)} training examples are from {source}",
                      highlight=False)

    # 5. The adaptation method, and what it will cost.
    torch.manual_seed(config.train.seed)  # adapter initialisation
    if continued is None:
        model = apply_method(model, config.method)
    params = count_parameters(model)
    if hw.frozen_bf16 and config.train.frozen_bf16:
        # fp32 base weights are gone from here on: see step 8
        bf16_frozen_linears(model, fuse_lora_wanted(config.train))
    memory, per_process = memory_estimate(model, train_set, config, hw, team.world)
    console.print(f"  method: {config.method.name}, {params}; lr {config.lr:g}\n"
                  f"  memory estimate: {memory}{per_process}", soft_wrap=True)
    if warning := lr_warning(config.method.name, config.lr, config.train.kl_to_base, config.train.replay):
        console.print(f"  [yellow]warning: {warning}[/yellow]")

    # 6. Train (curves also go to TensorBoard / W&B / MLflow as train.report_to says).
    trackers = own_loop_trackers(start)
    try:
        result = train_loop(model, train_set, val_set, config.train, config.lr, hw, start.run_dir,
                            tokenizer.pad_token_id, resume=start.resume, console=console, callbacks=[trackers],
                            regularise=teacher.regularise if teacher else None)
    finally:
        trackers.on_end()

    # 7. Save what the method trained (adapter/: peft format or trained tensors; model/ for full).
    model.eval()
    out = start.run_dir / artifact_folder_name(config.method)
    if not team.main:
        team.wait()
        close_ranks()
        return RunResult(start.run_dir, config.objective, config.method.name)  # rank 0 evaluates, saves, records
    save_artifact(model, tokenizer, start.run_dir, config.method)

    # 8. The tuned model on the same test items and probe. Reloaded onto a fresh fp32 base: the trained
    # model's frozen weights may be bf16, and this scores exactly the artifact the user gets.
    tuned_eval = forgetting = None
    if test or probe:
        tuned = load_tuned(base, out, hw.device, attention) if out.name == "adapter" else model
    if test:
        assert metric is not None  # picked in step 5 whenever there is a test split
        with tempfile.TemporaryDirectory(prefix="hone-eval-gguf-") as scratch:   # llama.cpp: the tuned model's GGUF
            generation = model_generation(config.eval.engine, tuned, tokenizer, Path(scratch), hw.device, hw.threads,
                                          console)
            tuned_eval = evaluate_answers(tuned, tokenizer, test, metric, max_new, config.eval.batch_size,
                                          f"tuned eval ({generation.describe()})", console, generation)
            engines["tuned"] = generation.describe()
    forgetting = probe_tuned(start, probe, tuned, tokenizer) if probe else None

    # 9. Record the results, write the report.
    results = {"metric": metric, "steps": result.steps, "stopped_by": result.stopped_by,
               "train_loss": result.loss, "val_loss": result.val_loss, "tokens": result.tokens,
               "best_step": result.best_step, "best_val_loss": result.best_val_loss,
               "overfitting_alarms": result.overfitting_alarms,
               "tokens_per_s": round(result.tokens / max(result.seconds, 1e-9), 1),
               "trainable_parameters": params.trainable, "total_parameters": params.total,
               "memory_estimate_bytes": memory.total, "artifact": out.name,
               "base_score": base_eval.score if base_eval else None,
               "baseline": f"the parent run {config.model.continue_from}" if continued is not None else None,
               "tuned_score": tuned_eval.score if tuned_eval else None, "eval_engines": engines}
    results["peak_memory_mb"], results["peak_memory_kind"] = peak_memory_mb(hw.device)
    if base_eval and tuned_eval:
        results["items"] = item_outcomes(base_eval, tuned_eval)
    rows = []
    if teacher and teacher.evaluation and tuned_eval:
        results["teacher_score"] = teacher.evaluation.score
        speed = [generation_speed(e, tokenizer) for e in (base_eval, tuned_eval, teacher.evaluation)]
        rows.append(Row("answer tokens per second on the test prompts", speed[0], speed[1], speed[2]))
    samples = side_by_side(test, base_eval, tuned_eval, config.eval.samples)
    finished = finish_run(start, results, result.seconds, rows=rows, samples=samples, forgetting=forgetting,
                          tuned_answers=tuned_eval.answers if tuned_eval else None,
                          warnings=[w for w in [warning] if w])
    team.wait()
    close_ranks()
    return finished


def generation_speed(evaluation: Evaluation | None, tokenizer) -> float | None:
    """Answer tokens generated per second in an evaluation (batched as eval.batch_size says); None when
    the evaluation was read back from run.json rather than timed."""
    if evaluation is None or not evaluation.seconds:
        return None
    tokens = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in evaluation.answers)
    return round(tokens / evaluation.seconds, 1)


def base_generation(config: RunConfig, base: str, model, hw, console: Console) -> Generation:
    """What answers for the base model: llama.cpp on its GGUF where eval.engine allows, except under QLoRA,
    whose base is the NF4-quantized model the run trains on (transformers holds it; its GGUF would not)."""
    if config.method.name == "qlora":
        return Generation("transformers")
    return pick_generation(config.eval.engine, base, None, model, hw.device, hw.threads, console)


def score_base(start: RunStart, model, tokenizer, test: list[ChatExample], metric: str, max_new: int,
               generation: Generation | None = None) -> Evaluation:
    """The base model's answers to the test split, kept in run.json so a resumed run does not redo them."""
    record = read_record(start.run_dir) if start.resume else {}
    if record.get("base_scores"):
        return Evaluation(metric, record["base_answers"], record["base_scores"], record.get("base_seconds", 0.0))
    evaluation = evaluate_answers(model, tokenizer, test, metric, max_new, start.config.eval.batch_size,
                                  f"base eval ({(generation or Generation('transformers')).describe()})", start.console,
                                  generation)
    update_record(start.run_dir, base_answers=evaluation.answers, base_scores=evaluation.scores,
                  base_seconds=round(evaluation.seconds, 3))
    return evaluation


def memory_estimate(model, train_set: list, config: RunConfig, hw, world: int):
    """The expected peak for the largest micro-batch (the longest examples together, as length-grouped
    batching puts them), per process when sharded; and the words that say so."""
    lengths = [len(e.input_ids) for e in train_set]
    by_length = sorted(range(len(train_set)), key=lambda i: -lengths[i])
    longest = [train_set[i] for i in micro_batches(by_length, config.train.micro_batch_size, lengths,
                                                    token_cap(config.train, hw))[0]][::-1]
    memory = estimate_memory(model, len(longest), len(longest[-1].input_ids), sum(e.trained_tokens for e in longest))
    if not sharding_wanted(config.train, world):
        return memory, ""
    memory = replace(memory, weights=memory.weights // world, gradients=memory.gradients // world,
                     optimizer=memory.optimizer // world)  # each rank holds 1/N of these while it trains
    return memory, f" per process, sharded over {world} (loading and checkpoints hold the full weights for a moment)"


def side_by_side(test: list[ChatExample], base: Evaluation | None, tuned: Evaluation | None,
                 samples: int) -> list[dict]:
    """A few test prompts with both answers and the expected one, spread over the split, with a tuned miss."""
    if not tuned or not samples:
        return []
    n = len(test)
    picks = sorted({round(i * (n - 1) / max(1, samples - 1)) for i in range(samples)}) if n else []
    misses = [i for i, s in enumerate(tuned.scores) if not s and i not in picks]
    if misses and picks:
        picks[-1] = misses[0]
    return [{"prompt": test[i].prompt_messages[-1]["content"], "base": base.answers[i] if base else None,
             "tuned": tuned.answers[i], "expected": test[i].answer or "", "correct": bool(tuned.scores[i])}
            for i in sorted(picks)]
