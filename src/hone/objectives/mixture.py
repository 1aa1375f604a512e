"""Multi-task mixtures: several datasets with weights in one run, top to bottom.

load each source (chat data or raw text) -> render chat with the assistant-only mask, pack text into
blocks -> draw a seeded mixture in proportion to the weights -> score the base on each source's
validation split -> apply the method -> train on hone's loop -> save -> score each source again.

Weights are shares of the training examples: with N examples over all sources, a source of
weight w contributes round(w / sum(weights) * N) of them, drawn without replacement while it
lasts and cycled (reshuffled) when it is smaller than its share. Mixing in general or earlier data
this way is also the usual remedy for catastrophic forgetting (replay).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import cast

from rich.console import Console

from hone.config import MixtureSource, RunConfig
from hone.data.load import load_records
from hone.data.records import ChatExample, TextExample
from hone.data.render import TokenizedExample, tokenize_chat, with_system_prompt
from hone.data.split import hold_out
from hone.errors import ConfigError
from hone.methods import apply_method, count_parameters, load_base, load_tuned
from hone.models.catalogue import resolve_model
from hone.models.load import load_tokenizer
from hone.objectives.lifecycle import (
    Row,
    RunResult,
    begin_run,
    finish_run,
    is_peft,
    own_loop_trackers,
    probe_base,
    probe_tuned,
    save_artifact,
)
from hone.objectives.pretrain import pack_blocks
from hone.training.loop import train_loop
from hone.training.precision import bf16_frozen_linears, pick_attention
from hone.training.sharding import fuse_lora_wanted
from hone.training.step import validation_loss


def load_source(path: Path, system_prompt: str | None) -> list:
    records = load_records(path)
    if not isinstance(records[0], (ChatExample, TextExample)):
        raise ConfigError(f"a mixture combines chat data and raw text; this file holds {type(records[0]).__name__} "
                          "records", file=str(path), field="mixture.train")
    if isinstance(records[0], ChatExample):  # then every record is one: objectives/checks.py checked the type
        return with_system_prompt(cast("list[ChatExample]", records), system_prompt)
    return records


def tokenize(tokenizer, records: list, config: RunConfig) -> list[TokenizedExample]:
    """Chat: one example per conversation, loss on assistant turns. Text: packed blocks, all trained."""
    if records and isinstance(records[0], TextExample):
        return pack_blocks(tokenizer, [r.text for r in records], config.pretrain.block_size)
    return [tokenize_chat(tokenizer, r.messages, config.data.max_length) for r in records]


def draw_mixture(sources: list[list[TokenizedExample]], weights: list[float], seed: int) -> list[TokenizedExample]:
    """The training set: each source's share of all examples, seeded."""
    rng = random.Random(seed)
    total = sum(len(s) for s in sources)
    mixed = []
    for examples, weight in zip(sources, weights):
        want = round(weight / sum(weights) * total)
        drawn: list[TokenizedExample] = []
        while len(drawn) < want:
            order = list(examples)
            rng.shuffle(order)
            drawn += order[: want - len(drawn)]
        mixed += drawn
    rng.shuffle(mixed)
    return mixed


def source_names(sources: list[MixtureSource]) -> list[str]:
    """Short names for the sources: file stems, with their folder when two share a stem (orders/train)."""
    stems = [Path(s.train).stem for s in sources]
    names = [f"{Path(s.train).parent.name}/{stem}" if stems.count(stem) > 1 else stem
             for s, stem in zip(sources, stems)]
    return [f"{i + 1}-{name}" if names.count(name) > 1 else name for i, name in enumerate(names)]


def run_mixture(config: RunConfig, run_dir: Path | None = None, console: Console | None = None) -> RunResult:
    """Train on a weighted mixture of chat and text datasets; `run_dir` of an interrupted run resumes it."""
    console = console or Console(stderr=True)
    # 1. Data: each source with its own validation split.
    splits = []
    for source in config.mixture:
        train = load_source(source.train, config.data.system_prompt)
        if source.validation:
            validation = load_source(source.validation, config.data.system_prompt)
        else:
            train, validation = hold_out(train, config.data.validation_fraction, config.train.seed)
        splits.append((train, validation))
    start = begin_run(config, run_dir, console, {
        "mixture": [{"train": str(s.train), "weight": s.weight, "n_train": len(t), "n_validation": len(v)}
                    for s, (t, v) in zip(config.mixture, splits)]}, own_loop=True)

    # 2. Render each source, then draw the weighted mixture.
    base = resolve_model(config.model.name)
    tokenizer = load_tokenizer(base)
    train_sources = [tokenize(tokenizer, t, config) for t, _ in splits]
    val_sources = [tokenize(tokenizer, v, config) for _, v in splits]
    weights = [s.weight for s in config.mixture]
    train_set = draw_mixture(train_sources, weights, config.train.seed)
    val_set = [e for v in val_sources for e in v]
    names = source_names(config.mixture)
    for name, examples, weight in zip(names, train_sources, weights):
        share = round(weight / sum(weights) * sum(len(s) for s in train_sources))
        console.print(f"  {name}: {len(examples)} examples, weight {weight:g} -> {share} in the mixture")

    # 3. The base model, and its loss on each source's validation split.
    longest = max(len(e.input_ids) for e in train_set + val_set)
    attention = pick_attention(start.hw.device, longest)
    model = load_base(base, config.method, start.hw.device, attention)  # qlora: NF4 as it loads
    micro, pad = config.train.micro_batch_size, tokenizer.pad_token_id
    base_losses = [validation_loss(model, v, micro, pad, start.hw) if v else None for v in val_sources]
    probe = probe_base(start, model, tokenizer)  # general skills before any change (forgetting guard)

    # 4. The method, and training on hone's loop.
    model = apply_method(model, config.method)
    params = count_parameters(model)
    if start.hw.frozen_bf16 and is_peft(model):
        bf16_frozen_linears(model, fuse_lora_wanted(config.train))
    console.print(f"  method: {config.method.name}, {params}; lr {config.lr:g}")
    trackers = own_loop_trackers(start)  # curves to TensorBoard / W&B / MLflow as train.report_to says
    try:
        result = train_loop(model, train_set, val_set, config.train, config.lr, start.hw, start.run_dir, pad,
                            resume=start.resume, console=console, callbacks=[trackers])
    finally:
        trackers.on_end()

    # 5. Save, reload what was saved, and each source's validation loss again.
    model.eval()
    out = save_artifact(model, tokenizer, start.run_dir, config.method)
    tuned = load_tuned(base, out, start.hw.device, attention) if out.name == "adapter" else model
    tuned_losses = [validation_loss(tuned, v, micro, pad, start.hw) if v else None for v in val_sources]
    forgetting = probe_tuned(start, probe, tuned, tokenizer)
    per_source = {n: {"weight": w, "n_train": len(t), "base_val_loss": _round(b), "tuned_val_loss": _round(a)}
                  for n, w, t, b, a in zip(names, weights, train_sources, base_losses, tuned_losses)}
    scored = [(w, b, a) for w, b, a in zip(weights, base_losses, tuned_losses) if b is not None]
    mean = lambda values: sum(w * v for w, v in values) / sum(w for w, _ in values) if values else None  # noqa: E731
    results = {"metric": "weighted validation loss", "steps": result.steps, "stopped_by": result.stopped_by,
               "train_loss": result.loss, "val_loss": result.val_loss, "tokens": result.tokens,
               "best_step": result.best_step, "best_val_loss": result.best_val_loss,
               "overfitting_alarms": result.overfitting_alarms,
               "tokens_per_s": round(result.tokens / max(result.seconds, 1e-9), 1), "sources": per_source,
               "base_score": _round(mean([(w, b) for w, b, _ in scored])),
               "tuned_score": _round(mean([(w, a) for w, _, a in scored])),
               "trainable_parameters": params.trainable, "total_parameters": params.total, "artifact": out.name}
    rows = [Row(f"{name} (weight {scores['weight']:g}): validation loss", scores["base_val_loss"],
                scores["tuned_val_loss"]) for name, scores in per_source.items()]
    return finish_run(start, results, result.seconds, rows=rows, forgetting=forgetting)


def _round(value: float | None) -> float | None:
    return round(value, 5) if value is not None else None
