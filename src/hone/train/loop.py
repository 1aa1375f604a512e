"""hone's own training loop for language-model objectives (SFT, continued pre-training).

Short on purpose, because this is where the speed lives: length-grouped batches, the LM head only
on trained tokens, the loss normalised by the trained tokens of the whole effective batch, fp32
LoRA adds with bf16 matmuls on CPU. Interrupt it (Ctrl-C) and it checkpoints; resume continues
with the same data order and RNG.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from hone.config import TrainSection
from hone.errors import ConfigError, Interrupted
from hone.data.render import IGNORE, TokenizedExample
from hone.hardware import Hardware
from hone.train.batches import common_prefix, epoch_batches, make_batch, micro_batches
from hone.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from hone.train.distributed import Ranks, ranks
from hone.train.loss import summed_loss
from hone.train.regularise import kl_to_base
from hone.registry.runs import read_record, update_record
from hone.train.safeguards import ValidationWatch, restore_best, save_best
from hone.train.sharding import clip_gradients, filler_count, is_sharded, shard_model, sharding_wanted, unshard_model


@dataclass
class TrainResult:
    steps: int
    seconds: float
    tokens: int              # non-pad tokens processed
    loss: float | None       # mean training loss over the last logged step
    val_loss: float | None
    stopped_by: str          # "epochs", "max_steps", "time_budget" or "early_stopping"
    best_step: int | None = None      # the validation-best step, whose weights the model ends with
    best_val_loss: float | None = None
    overfitting_alarms: list[int] | None = None  # steps at which the overfitting alarm was up


def lr_factor(progress: float, warmup_ratio: float, scheduler: str) -> float:
    """Multiplier on the peak learning rate at `progress` in [0, 1] of training."""
    if warmup_ratio > 0 and progress < warmup_ratio:
        return progress / warmup_ratio
    rest = min(1.0, (progress - warmup_ratio) / max(1e-9, 1.0 - warmup_ratio))
    if scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * rest))
    if scheduler == "linear":
        return 1.0 - rest
    return 1.0


# Padded tokens per forward pass on CPU unless train.micro_batch_tokens says otherwise: activations
# kept for backward grow with them while the speed does not (docs/speed.md).
CPU_MICRO_BATCH_TOKENS = 512


def token_cap(cfg: TrainSection, hw: Hardware) -> int | None:
    return cfg.micro_batch_tokens or (CPU_MICRO_BATCH_TOKENS if hw.device == "cpu" else None)


def loss_tokens(example: TokenizedExample) -> int:
    """Tokens that carry loss: a label at position 0 is never predicted."""
    return sum(label != IGNORE for label in example.labels[1:])


def compile_layers(model) -> int:
    """torch.compile each decoder layer; the layers share one graph (their parameters are inputs), so the
    compile costs one layer's, not the model's. Measured on the 2-core CPU (embedded model, 4 x 120-token
    micro-batches, interleaved with the eager fused path): 1.08 -> 1.04 s best, 1.41 -> 1.24 s median
    under load; the first pass compiled 64 s cold, 5-19 s with inductor's cache warm. Fused LoRA nodes go
    back to peft's layers, which inductor fuses itself. Returns how many modules were compiled."""
    from hone.train.fused_lora import unfuse_lora_layers
    from hone.train.loss import _unwrap

    unfuse_lora_layers(model)
    base = _unwrap(model)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base
    layers = list(getattr(decoder, "layers", None) or [decoder])
    for layer in layers:
        layer.compile(dynamic=True)  # micro-batch shapes vary: one shape-generic graph, no recompiles
    return len(layers)


def autocast(hw: Hardware):
    if hw.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(hw.device, dtype=hw.autocast)


@torch.no_grad()
def validation_loss(model, examples: list[TokenizedExample], micro_batch_size: int, pad_id: int,
                    hw: Hardware, head_only: bool = True, packing: bool = False,
                    max_tokens: int | None = None, share_prefix: bool = True) -> float:
    """Mean cross-entropy per trained token over `examples`."""
    was_training = model.training
    model.eval()
    team = ranks()
    order = team.share(sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids)))
    total, count = 0.0, 0
    lengths = [len(e.input_ids) for e in examples]
    chunks = micro_batches(order, micro_batch_size, lengths, max_tokens)
    fillers = filler_count(team, len(chunks)) if is_sharded(model) else 0
    share_prefix = share_prefix and not is_sharded(model)  # a layer run twice before backward breaks FSDP2
    for chunk in chunks + [None] * fillers:  # None: a pass whose result is dropped (train/sharding.py)
        batch = make_batch([examples[i] for i in chunk or [0]], pad_id, packing, hw.device, share_prefix)
        with autocast(hw):
            loss, n = summed_loss(model, batch, head_only)
        if chunk is not None:
            total, count = total + float(loss), count + n
    model.train(was_training)
    total, count = team.sum(total, count)
    return total / max(1, count)


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step; on resume, lines past the checkpoint are dropped."""

    def __init__(self, path: Path | None, keep_up_to_step: int):
        self.path = path  # None: a rank other than 0, which logs nothing
        if path is None:
            return
        lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.exists() else []
        kept = [l for l in lines if l.strip() and json.loads(l).get("step", 0) <= keep_up_to_step]
        self.path.write_text("".join(l + "\n" for l in kept), encoding="utf-8")

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def progress_bar(console: Console) -> Progress:
    return Progress(TextColumn("[bold]train[/bold]"), BarColumn(), TextColumn("{task.fields[status]}"),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
                    transient=False)


def train_loop(model, train_set: list[TokenizedExample], val_set: list[TokenizedExample],
               cfg: TrainSection, lr: float, hw: Hardware, run_dir: Path, pad_id: int,
               resume: bool = False, console: Console | None = None, callbacks: list | None = None) -> TrainResult:
    """Train `model`'s trainable parameters on `train_set`; validate on `val_set`; checkpoint to `run_dir`.

    `callbacks` get `on_step(record)` after each logged step (trackers: train/trackers.py)."""
    team = ranks()
    console = console or Console(stderr=True)
    if not team.main:
        console = Console(stderr=True, quiet=True)  # one voice: rank 0 reports, checkpoints and logs
    sharded = sharding_wanted(cfg, team.world)
    if cfg.sharding == "fsdp2" and team.world == 1:
        console.print("  [yellow]train.sharding fsdp2 on one process: nothing to shard (train with --nproc N)[/yellow]")
    if sharded and cfg.compile:
        raise ConfigError("train.compile with FSDP2 sharding is not supported here (not tested): set "
                          "train.compile=false or train.sharding=none", field="train.compile")
    if sharded and cfg.kl_to_base:
        raise ConfigError("train.kl_to_base runs the model twice per micro-batch, which FSDP2 sharding here does "
                          "not support: set train.kl_to_base=0 or train.sharding=none", field="train.kl_to_base")
    if sharded:  # before the optimizer: it must hold the sharded parameters
        groups = team.per_rank(shard_model(model, team.world))
        console.print(f"  sharding: FSDP2 over {team.world} processes, {groups[0]} groups each (weights, gradients "
                      "and optimizer state split across them)", highlight=False)
        if team.main:  # every rank's FSDP groups, so that a silent fallback to replication shows
            update_record(run_dir, distributed=read_record(run_dir).get("distributed", {}) | {
                "fsdp_groups_per_rank": groups})
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.compile:
        compile_layers(model)
    lengths = [len(e.input_ids) for e in train_set]
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    eval_every = cfg.eval_every or steps_per_epoch
    save_every = cfg.save_every or steps_per_epoch
    state = {"step": 0, "epoch": 0, "batch": 0, "seconds": 0.0, "tokens": 0, "val_loss": None, "loss": None,
             "window": [0.0, 0], "watch": ValidationWatch(cfg.early_stopping_patience, cfg.early_stopping_min_delta,
                                                         cfg.overfit_alarm).state()}
    checkpoints = list_checkpoints(run_dir)
    if resume and checkpoints:
        state = load_checkpoint(checkpoints[-1], model, optimizer)  # restores every RNG too
    else:
        torch.manual_seed(cfg.seed)
    watch = ValidationWatch.from_state(state["watch"])
    log = MetricsLog(Path(run_dir) / "metrics.jsonl" if team.main else None, state["step"])
    model.train()
    started = time.monotonic() - state["seconds"]

    saved = {"step": None, "log_at": time.monotonic(), "step_s": 0.0}  # last checkpoint, log line, step time

    def progress_now(ahead: int = 0) -> float:
        """Fraction of training done; `ahead`=1 gives the step about to run a non-zero warmup lr."""
        fraction = (state["step"] + ahead) / total_steps
        if cfg.time_budget:
            fraction = max(fraction, (time.monotonic() - started) / cfg.time_budget)
        return min(1.0, fraction)

    def finished() -> str | None:
        return team.from_main(stop_reason())  # every rank must stop at the same step

    def stop_reason() -> str | None:
        if watch.should_stop:
            return "early_stopping"
        if state["step"] >= total_steps:
            return "max_steps" if cfg.max_steps else "epochs"
        # Stop when the next step would end nearer past the budget than before it.
        if cfg.time_budget and time.monotonic() - started + 0.5 * saved["step_s"] >= cfg.time_budget:
            return "time_budget"
        return None

    def checkpoint() -> None:
        if saved["step"] == state["step"]:
            return
        state["seconds"] = time.monotonic() - started
        state["watch"] = watch.state()
        if team.main or sharded:  # sharded: every rank gathers, rank 0 writes
            save_checkpoint(run_dir, model, optimizer, state, cfg.keep_checkpoints)
        saved["step"] = state["step"]

    def report(status: str) -> None:
        """A plain line every 30 s when stderr is not a terminal (logs, CI): rich shows no live bar there."""
        if not console.is_terminal and time.monotonic() - saved["log_at"] >= 30:
            console.print(f"train {status}", highlight=False, soft_wrap=True)
            saved["log_at"] = time.monotonic()

    def validate(record: dict) -> None:
        """Validation loss now; best weights, early stopping and the overfitting alarm follow from it."""
        val = round(validation_loss(model, val_set, cfg.micro_batch_size, pad_id, hw, cfg.head_on_trained_only,
                                   cfg.packing, token_cap(cfg, hw), cfg.shared_prefix), 5)
        total, count = state["window"]
        state.update(val_loss=val, window=[0.0, 0])
        record["val_loss"] = val
        seen = watch.observe(state["step"], total / max(1, count), val)
        if seen.improved and cfg.restore_best and (team.main or sharded):
            save_best(run_dir, model, state["step"], val)
        if seen.overfitting:
            record["overfitting"] = True
            console.print(f"[yellow]overfitting alarm at step {state['step']}:[/yellow] training loss fell and "
                          f"validation loss rose {cfg.overfit_alarm} validations in a row", highlight=False)

    with progress_bar(console) as bar:
        task = bar.add_task("train", total=1000, status="starting")
        unlogged = None
        try:
            while not finished():
                batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, state["epoch"], cfg.group_by_length)
                while state["batch"] < len(batches) and not finished():
                    step_started = time.monotonic()
                    rate = lr * lr_factor(progress_now(ahead=1), cfg.warmup_ratio, cfg.scheduler)
                    loss, tokens = train_step(model, optimizer, [train_set[i] for i in batches[state["batch"]]],
                                              cfg, rate, pad_id, hw, params, team)
                    saved["step_s"] = time.monotonic() - step_started
                    state.update(step=state["step"] + 1, batch=state["batch"] + 1, loss=loss,
                                 tokens=state["tokens"] + tokens)
                    record = {"step": state["step"], "epoch": round(state["epoch"] + state["batch"] / len(batches), 3),
                              "loss": round(loss, 5), "lr": rate,
                              "tokens_per_s": round(tokens / (time.monotonic() - step_started), 1),
                              "elapsed_s": round(time.monotonic() - started, 2)}
                    end_of_epoch = state["batch"] == len(batches)
                    unlogged = record  # an interrupt during validation still logs this step (below)
                    state["window"] = [state["window"][0] + loss, state["window"][1] + 1]
                    if val_set and (state["step"] % eval_every == 0 or end_of_epoch or finished()):
                        validate(record)
                    log.write(record)
                    unlogged = None
                    for callback in callbacks or []:
                        callback.on_step(record)
                    status = f"step {state['step']}/{total_steps}  loss {loss:.3f}"
                    if state["val_loss"] is not None:
                        status += f"  val {state['val_loss']:.3f}"
                    if watch.alarms and watch.alarms[-1] == watch.history[-1][0]:
                        status += "  [red]overfitting[/red]"
                    status = f"{status}  lr {rate:.1e}  {record['tokens_per_s']:.0f} tok/s"
                    bar.update(task, completed=int(progress_now() * 1000), status=status)
                    report(status)
                    if state["step"] % save_every == 0 or end_of_epoch:
                        checkpoint()
                if state["batch"] >= len(batches):
                    state.update(epoch=state["epoch"] + 1, batch=0)
        except KeyboardInterrupt:
            if sharded:  # ranks stop mid-collective: no gathered checkpoint; resume takes the last one
                raise Interrupted(saved["step"] or 0) from None
            if unlogged is not None and unlogged["step"] == state["step"]:
                log.write(unlogged)  # the checkpoint holds this step: its loss must be in metrics.jsonl
            checkpoint()
            raise Interrupted(state["step"]) from None
        bar.update(task, completed=1000)
    checkpoint()
    team.wait()  # the best weights are on disk before any rank reads them
    if sharded:
        optimizer.state.clear()  # no longer needed: its shards would add to the full weights gathered next
        unshard_model(model)  # plain again, full weights on every rank: saving and evaluation as without sharding
    stopped_by = finished() or "epochs"
    if stopped_by == "early_stopping":
        console.print(f"  stopped early: no better validation loss for {watch.stale} validations "
                      f"(best {watch.best_loss:.4f} at step {watch.best_step})", highlight=False)
    if (cfg.restore_best and watch.best_step is not None and watch.best_step != state["step"]
            and restore_best(run_dir, model)):
        console.print(f"  kept the weights of step {watch.best_step} (validation loss {watch.best_loss:.4f}, "
                      f"last step {state['val_loss']:.4f})", highlight=False)
    return TrainResult(state["step"], time.monotonic() - started, state["tokens"], state["loss"],
                       state["val_loss"], stopped_by, watch.best_step, watch.best_loss, watch.alarms)


def train_step(model, optimizer, examples: list[TokenizedExample], cfg: TrainSection, lr: float,
               pad_id: int, hw: Hardware, params: list[torch.nn.Parameter],
               team: Ranks = Ranks()) -> tuple[float, int]:
    """One optimizer step over an effective batch; returns (mean loss per trained token, tokens seen).

    Under data parallelism each rank runs its share of the batch; the loss is still normalised by
    the trained tokens of the whole batch and the gradients are summed, so the step is the same."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    n_trained = max(1, sum(loss_tokens(e) for e in examples))
    sharded = is_sharded(model)
    total, seen = 0.0, 0
    order = team.share(list(range(len(examples))))
    regularise = kl_to_base(cfg.kl_to_base)  # None unless train.kl_to_base > 0
    lengths = [len(e.input_ids) for e in examples]
    share_prefix = cfg.shared_prefix and not sharded  # a layer run twice before backward breaks FSDP2
    shared = common_prefix([examples[i] for i in order]) if share_prefix and not cfg.packing else 0
    chunks = micro_batches(order, cfg.micro_batch_size, lengths, token_cap(cfg, hw), shared)
    fillers = filler_count(team, len(chunks)) if sharded else 0
    for chunk in chunks + [None] * fillers:  # None: a zero-weight pass, so every rank runs as many (FSDP)
        batch = make_batch([examples[i] for i in chunk or [0]], pad_id, cfg.packing, hw.device, share_prefix)
        with autocast(hw):
            loss, _ = summed_loss(model, batch, cfg.head_on_trained_only, regularise)
        if chunk is None:
            (loss * 0.0).backward()
            continue
        (loss / n_trained).backward()
        total += loss.item()
        seen += sum(len(examples[i].input_ids) for i in chunk)
    if not sharded:  # FSDP2 has summed them already (reduce-scatter)
        team.sum_gradients(params)
    total, seen = team.sum(total, seen)
    clip_gradients(params, cfg.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total / n_trained, int(seen)
