"""Continued pre-training on raw domain text, top to bottom.

load text -> pack into blocks -> load base -> score the base (perplexity on held-out text) ->
apply the method -> train on hone's loop -> save -> score the tuned model -> record.

Packing as in GPT-2 and Hugging Face's run_clm: documents are joined with the end-of-text token
and cut into blocks of `pretrain.block_size` tokens, every token trained. No padding is wasted,
and a block may span two documents (the separator teaches the model where one ends); that is the
standard for domain adaptation, where the text is one stream rather than separate examples.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import cast

from rich.console import Console

from hone.config import RunConfig
from hone.data.load import load_records
from hone.data.records import TextExample
from hone.data.render import TokenizedExample
from hone.data.split import hold_out
from hone.methods import apply_method, count_parameters, load_base, load_tuned
from hone.models.catalogue import resolve_model
from hone.models.load import load_tokenizer
from hone.objectives.lifecycle import (
    RunResult,
    begin_run,
    finish_run,
    is_peft,
    own_loop_trackers,
    probe_base,
    probe_tuned,
    save_artifact,
)
from hone.training.loop import train_loop
from hone.training.precision import bf16_frozen_linears, pick_attention
from hone.training.sharding import fuse_lora_wanted
from hone.training.step import validation_loss


def pack_blocks(tokenizer, texts: list[str], block_size: int) -> list[TokenizedExample]:
    """Documents joined by the end-of-text token, cut into blocks; the last block may be shorter."""
    separator = tokenizer.eos_token_id
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [separator]
    blocks = [stream[i:i + block_size] for i in range(0, len(stream), block_size)]
    if len(blocks) > 1 and len(blocks[-1]) < 8:
        blocks.pop()  # a few stray tokens teach nothing and cost a padded row
    return [TokenizedExample(list(b), list(b)) for b in blocks]


def load_texts(path: Path) -> list[TextExample]:
    return cast("list[TextExample]", load_records(path))  # objectives/checks.py checked the record type


def perplexity(model, blocks: list[TokenizedExample], micro_batch_size: int, pad_id: int, hw) -> float:
    return math.exp(validation_loss(model, blocks, micro_batch_size, pad_id, hw))


def run_pretrain(config: RunConfig, run_dir: Path | None = None, console: Console | None = None) -> RunResult:
    """Continue pre-training the base model on raw text; `run_dir` of an interrupted run resumes it."""
    console = console or Console(stderr=True)
    # 1. Data: documents for training, validation (held out when no file is given) and test.
    assert config.data.train is not None  # objectives/checks.py refuses a run without it
    train = load_texts(config.data.train)
    if config.data.validation:
        validation = load_texts(config.data.validation)
    else:
        train, validation = hold_out(train, config.data.validation_fraction, config.train.seed)
    test = load_texts(config.data.test) if config.data.test else []
    start = begin_run(config, run_dir, console, {
        "train": str(config.data.train), "n_train": len(train), "n_validation": len(validation), "n_test": len(test)},
        own_loop=True)

    # 2. Pack each split into blocks of token ids; every token is trained.
    base = resolve_model(config.model.name)
    tokenizer = load_tokenizer(base)
    size = config.pretrain.block_size
    train_set = pack_blocks(tokenizer, [e.text for e in train], size)
    val_set = pack_blocks(tokenizer, [e.text for e in validation], size) if validation else []
    test_set = pack_blocks(tokenizer, [e.text for e in test], size) if test else val_set
    console.print(f"  data: {len(train)} documents -> {len(train_set)} blocks of up to {size} tokens "
                  f"({sum(len(b.input_ids) for b in train_set):,} tokens); {len(val_set)} validation blocks")

    # 3. The base model, and its perplexity on held-out text before any change.
    attention = pick_attention(start.hw.device, size)
    model = load_base(base, config.method, start.hw.device, attention)  # qlora: NF4 as it loads
    micro, pad = config.train.micro_batch_size, tokenizer.pad_token_id
    base_ppl = perplexity(model, test_set, micro, pad, start.hw) if test_set else None
    probe = probe_base(start, model, tokenizer)  # general skills before any change (forgetting guard)

    # 4. The method; frozen base weights compute in bf16 only when the base is reloaded for scoring.
    model = apply_method(model, config.method)
    params = count_parameters(model)
    if start.hw.frozen_bf16 and is_peft(model):
        bf16_frozen_linears(model, fuse_lora_wanted(config.train))
    console.print(f"  method: {config.method.name}, {params}; lr {config.lr:g}")

    # 5. Train on hone's loop (the same loop as SFT: checkpoints, resume, time budget).
    trackers = own_loop_trackers(start)  # curves to TensorBoard / W&B / MLflow as train.report_to says
    try:
        result = train_loop(model, train_set, val_set, config.train, config.lr, start.hw, start.run_dir, pad,
                            resume=start.resume, console=console, callbacks=[trackers])
    finally:
        trackers.on_end()

    # 6. Save, and score exactly what was saved.
    model.eval()
    out = save_artifact(model, tokenizer, start.run_dir, config.method)
    tuned = load_tuned(base, out, start.hw.device, attention) if out.name == "adapter" else model
    tuned_ppl = perplexity(tuned, test_set, micro, pad, start.hw) if test_set else None
    forgetting = probe_tuned(start, probe, tuned, tokenizer)

    results = {"metric": "perplexity", "split": "test" if test else "validation", "steps": result.steps,
               "stopped_by": result.stopped_by, "train_loss": result.loss, "val_loss": result.val_loss,
               "best_step": result.best_step, "best_val_loss": result.best_val_loss,
               "overfitting_alarms": result.overfitting_alarms,
               "tokens": result.tokens, "tokens_per_s": round(result.tokens / max(result.seconds, 1e-9), 1),
               "base_score": round(base_ppl, 4) if base_ppl else None,
               "tuned_score": round(tuned_ppl, 4) if tuned_ppl else None,
               "trainable_parameters": params.trainable, "total_parameters": params.total}
    return finish_run(start, results, result.seconds, forgetting=forgetting)
