"""hone's own training loop for language-model objectives (SFT, continued pre-training).

Short on purpose, because this is where the speed lives: length-grouped batches, the LM head only
on trained tokens, the loss normalised by the trained tokens of the whole effective batch, fp32
LoRA adds with bf16 matmuls on CPU. Interrupt it (Ctrl-C) and it checkpoints; resume continues
with the same data order and RNG.

`train_loop` reads top to bottom as the procedure; `LoopState` is where it stands (and what a
checkpoint keeps), `Loop` its fixed parts with one method per step, step.py one optimizer step and one
validation pass, and the parallel strategy (training/parallel.py) all that differs when the model is
sharded across processes.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from hone.config import TrainSection
from hone.data.render import TokenizedExample
from hone.errors import Interrupted
from hone.hardware import Hardware
from hone.registry.runs import read_record, update_record
from hone.training.batches import epoch_batches
from hone.training.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from hone.training.distributed import ranks
from hone.training.parallel import Parallel, parallel_for
from hone.training.safeguards import ValidationWatch, restore_best, save_best
from hone.training.step import token_cap, train_step, validation_loss


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


def compile_layers(model) -> int:
    """torch.compile each decoder layer; the layers share one graph (their parameters are inputs), so the
    compile costs one layer's, not the model's. Measured on the 2-core CPU (embedded model, 4 x 120-token
    micro-batches, interleaved with the eager fused path): 1.08 -> 1.04 s best, 1.41 -> 1.24 s median
    under load; the first pass compiled 64 s cold, 5-19 s with inductor's cache warm. Fused LoRA nodes go
    back to peft's layers, which inductor fuses itself. Returns how many modules were compiled."""
    from hone.training.fused_lora import unfuse_lora_layers
    from hone.training.loss import _unwrap

    unfuse_lora_layers(model)
    base = _unwrap(model)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base
    layers = list(getattr(decoder, "layers", None) or [decoder])
    for layer in layers:
        layer.compile(dynamic=True)  # micro-batch shapes vary: one shape-generic graph, no recompiles
    return len(layers)


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step; on resume, lines past the checkpoint are dropped."""

    def __init__(self, path: Path | None, keep_up_to_step: int):
        self.path = path  # None: a rank other than 0, which logs nothing
        if path is None:
            return
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        kept = [l for l in lines if l.strip() and json.loads(l).get("step", 0) <= keep_up_to_step]
        path.write_text("".join(l + "\n" for l in kept), encoding="utf-8")

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
               resume: bool = False, console: Console | None = None, callbacks: list | None = None,
               regularise=None) -> TrainResult:
    """Train `model`'s trainable parameters on `train_set`; validate on `val_set`; checkpoint to `run_dir`.

    `callbacks` get `on_step(record)` after each logged step (trackers: training/trackers.py); `regularise`
    adds a penalty to each step's loss besides train.kl_to_base's (distillation's KL to the teacher:
    training/regularise.py), while validation loss stays the plain cross-entropy."""
    team = ranks()
    console = console or Console(stderr=True)
    if not team.main:
        console = Console(stderr=True, quiet=True)  # one voice: rank 0 reports, checkpoints and logs
    parallel = parallel_for(cfg, team, console)  # one process, all-reduce or FSDP2 (training/parallel.py)
    noted = parallel.wrap(model, console)  # before the optimizer: it must hold the sharded parameters
    if noted and team.main:
        update_record(run_dir, distributed=read_record(run_dir).get("distributed", {}) | noted)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.compile:
        compile_layers(model)
    state = resume_or_seed(model, optimizer, cfg, run_dir, resume)  # resumed: weights, optimizer, every RNG
    loop = Loop(model, optimizer, params, train_set, val_set, cfg, lr, hw, Path(run_dir), pad_id, parallel, console,
                MetricsLog(Path(run_dir) / "metrics.jsonl" if team.main else None, state.step), callbacks or [],
                regularise)
    model.train()
    state.start_clock()
    lengths = [len(e.input_ids) for e in train_set]
    with progress_bar(console) as bar:
        task = bar.add_task("train", total=1000, status="starting")
        try:
            while not loop.finished(state):
                batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, state.epoch, cfg.group_by_length)
                while state.batch < len(batches) and not loop.finished(state):
                    record = loop.step(state, batches)
                    end_of_epoch = state.batch == len(batches)
                    if val_set and (state.step % loop.eval_every == 0 or end_of_epoch or loop.finished(state)):
                        loop.validate(state, record)
                    loop.log(state, record)
                    loop.show(state, record, bar, task)
                    if state.step % loop.save_every == 0 or end_of_epoch:
                        loop.checkpoint(state)
                if state.batch >= len(batches):
                    state.epoch, state.batch = state.epoch + 1, 0
        except KeyboardInterrupt:
            raise loop.interrupted(state) from None
        bar.update(task, completed=1000)
    return loop.finish(state)


@dataclass
class LoopState:
    """Where training stands. The fields up to `watch` are a checkpoint's state.json; the rest are this process's."""
    step: int = 0
    epoch: int = 0
    batch: int = 0                # the next batch of this epoch
    seconds: float = 0.0          # training time up to the last checkpoint, over every resume
    tokens: int = 0               # non-pad tokens trained on
    val_loss: float | None = None
    loss: float | None = None     # the last step's
    window: list = field(default_factory=lambda: [0.0, 0])  # training loss sum and steps since the last validation
    watch: ValidationWatch = field(default_factory=lambda: ValidationWatch(None))
    started: float = 0.0          # time.monotonic() at step 0, as if the run had never stopped
    saved_step: int | None = None  # this process's last checkpoint
    step_seconds: float = 0.0     # the last step's duration
    printed_at: float = 0.0       # the last plain progress line
    unlogged: dict | None = None  # this step's record until metrics.jsonl has it

    def saved(self) -> dict:
        """The state a checkpoint keeps (training/checkpoint.py writes it as state.json)."""
        return {"step": self.step, "epoch": self.epoch, "batch": self.batch, "seconds": self.seconds,
                "tokens": self.tokens, "val_loss": self.val_loss, "loss": self.loss, "window": self.window,
                "watch": self.watch.state()}

    @classmethod
    def from_saved(cls, saved: dict) -> LoopState:
        return cls(**saved | {"watch": ValidationWatch.from_state(saved["watch"])})

    def start_clock(self) -> None:
        self.started = time.monotonic() - self.seconds
        self.printed_at = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def resume_or_seed(model, optimizer, cfg: TrainSection, run_dir: Path, resume: bool) -> LoopState:
    """The newest checkpoint's state, its weights, optimizer and RNGs restored; without one, a seeded start."""
    checkpoints = list_checkpoints(run_dir)
    if resume and checkpoints:
        return LoopState.from_saved(load_checkpoint(checkpoints[-1], model, optimizer))
    torch.manual_seed(cfg.seed)
    return LoopState(watch=ValidationWatch(cfg.early_stopping_patience, cfg.early_stopping_min_delta,
                                           cfg.overfit_alarm))


@dataclass
class Loop:
    """What stays fixed while `train_loop` runs; its methods are the loop's steps, each on a `LoopState`."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    train_set: list[TokenizedExample]
    val_set: list[TokenizedExample]
    cfg: TrainSection
    lr: float
    hw: Hardware
    run_dir: Path
    pad_id: int
    parallel: Parallel
    console: Console
    metrics: MetricsLog
    callbacks: list
    regularise: Callable | None = None  # an extra penalty per step (training/regularise.py)

    def __post_init__(self) -> None:
        steps_per_epoch = math.ceil(len(self.train_set) / self.cfg.batch_size)
        self.total_steps = self.cfg.max_steps or math.ceil(self.cfg.epochs * steps_per_epoch)
        self.eval_every = self.cfg.eval_every or steps_per_epoch
        self.save_every = self.cfg.save_every or steps_per_epoch

    def progress(self, state: LoopState, ahead: int = 0) -> float:
        """Fraction of training done; `ahead`=1 gives the step about to run a non-zero warmup lr."""
        fraction = (state.step + ahead) / self.total_steps
        if self.cfg.time_budget:
            fraction = max(fraction, state.elapsed() / self.cfg.time_budget)
        return min(1.0, fraction)

    def finished(self, state: LoopState) -> str | None:
        """Why training stops here, or None; rank 0 decides, so that every rank stops at the same step."""
        return self.parallel.team.from_main(self._stop_reason(state))

    def _stop_reason(self, state: LoopState) -> str | None:
        if state.watch.should_stop:
            return "early_stopping"
        if state.step >= self.total_steps:
            return "max_steps" if self.cfg.max_steps else "epochs"
        # Stop when the next step would end nearer past the budget than before it.
        if self.cfg.time_budget and state.elapsed() + 0.5 * state.step_seconds >= self.cfg.time_budget:
            return "time_budget"
        return None

    def step(self, state: LoopState, batches: list[list[int]]) -> dict:
        """One optimizer step on the epoch's next batch; returns its metrics record."""
        step_started = time.monotonic()
        rate = self.lr * lr_factor(self.progress(state, ahead=1), self.cfg.warmup_ratio, self.cfg.scheduler)
        loss, tokens = train_step(self.model, self.optimizer, [self.train_set[i] for i in batches[state.batch]],
                                  self.cfg, rate, self.pad_id, self.hw, self.params, self.parallel.team,
                                  self.regularise)
        state.step_seconds = time.monotonic() - step_started
        state.step, state.batch, state.loss, state.tokens = state.step + 1, state.batch + 1, loss, state.tokens + tokens
        state.window = [state.window[0] + loss, state.window[1] + 1]
        state.unlogged = {"step": state.step, "epoch": round(state.epoch + state.batch / len(batches), 3),
                          "loss": round(loss, 5), "lr": rate,
                          "tokens_per_s": round(tokens / (time.monotonic() - step_started), 1),
                          "elapsed_s": round(state.elapsed(), 2)}
        return state.unlogged  # an interrupt during validation still logs this step (`interrupted`)

    def validate(self, state: LoopState, record: dict) -> None:
        """Validation loss now; best weights, early stopping and the overfitting alarm follow from it."""
        cfg = self.cfg
        val = round(validation_loss(self.model, self.val_set, cfg.micro_batch_size, self.pad_id, self.hw,
                                    cfg.head_on_trained_only, cfg.packing, token_cap(cfg, self.hw), cfg.shared_prefix),
                    5)
        total, count = state.window
        state.val_loss, state.window = val, [0.0, 0]
        record["val_loss"] = val
        seen = state.watch.observe(state.step, total / max(1, count), val)
        if seen.improved and cfg.restore_best and self.parallel.saves:
            save_best(self.run_dir, self.model, state.step, val)
        if seen.overfitting:
            record["overfitting"] = True
            self.console.print(f"[yellow]overfitting alarm at step {state.step}:[/yellow] training loss fell and "
                               f"validation loss rose {cfg.overfit_alarm} validations in a row", highlight=False)

    def log(self, state: LoopState, record: dict) -> None:
        """The step's record to metrics.jsonl, then to the callbacks."""
        self.metrics.write(record)
        state.unlogged = None
        for callback in self.callbacks:
            callback.on_step(record)

    def show(self, state: LoopState, record: dict, bar: Progress, task) -> None:
        """The step on the progress bar; also as a plain line every 30 s when stderr is not a terminal (logs,
        CI): rich shows no live bar there."""
        status = f"step {state.step}/{self.total_steps}  loss {state.loss:.3f}"
        if state.val_loss is not None:
            status += f"  val {state.val_loss:.3f}"
        if state.watch.alarms and state.watch.alarms[-1] == state.watch.history[-1][0]:
            status += "  [red]overfitting[/red]"
        status = f"{status}  lr {record['lr']:.1e}  {record['tokens_per_s']:.0f} tok/s"
        bar.update(task, completed=int(self.progress(state) * 1000), status=status)
        if not self.console.is_terminal and time.monotonic() - state.printed_at >= 30:
            self.console.print(f"train {status}", highlight=False, soft_wrap=True)
            state.printed_at = time.monotonic()

    def checkpoint(self, state: LoopState) -> None:
        """Checkpoint this step, once."""
        if state.saved_step == state.step:
            return
        state.seconds = state.elapsed()
        if self.parallel.saves:
            save_checkpoint(self.run_dir, self.model, self.optimizer, state.saved(), self.cfg.keep_checkpoints)
        state.saved_step = state.step

    def interrupted(self, state: LoopState) -> Interrupted:
        """Ctrl-C: checkpoint where the loop stands, with this step's line in metrics.jsonl, where the ranks can."""
        if not self.parallel.saves_on_interrupt:
            return Interrupted(state.saved_step or 0)
        if state.unlogged is not None and state.unlogged["step"] == state.step:
            self.metrics.write(state.unlogged)  # the checkpoint holds this step: its loss must be in metrics.jsonl
        self.checkpoint(state)
        return Interrupted(state.step)

    def finish(self, state: LoopState) -> TrainResult:
        """The last checkpoint, a plain model on every rank, the validation-best weights back where asked."""
        self.checkpoint(state)
        self.parallel.team.wait()  # the best weights are on disk before any rank reads them
        self.parallel.unwrap(self.model, self.optimizer)
        stopped_by = self.finished(state) or "epochs"
        watch = state.watch
        if stopped_by == "early_stopping":
            self.console.print(f"  stopped early: no better validation loss for {watch.stale} validations "
                               f"(best {watch.best_loss:.4f} at step {watch.best_step})", highlight=False)
        if (self.cfg.restore_best and watch.best_step is not None and watch.best_step != state.step
                and restore_best(self.run_dir, self.model)):
            self.console.print(f"  kept the weights of step {watch.best_step} (validation loss {watch.best_loss:.4f}, "
                               f"last step {state.val_loss:.4f})", highlight=False)
        return TrainResult(state.step, state.elapsed(), state.tokens, state.loss, state.val_loss, stopped_by,
                           watch.best_step, watch.best_loss, watch.alarms)


