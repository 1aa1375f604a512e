"""Driving a transformers/TRL Trainer the hone way: same settings, same run folder, same progress.

The classification, preference, reward and RL objectives train through `transformers.Trainer` or
TRL's trainers (TRL does preference and RL well). This module maps hone's `train:` section onto
their arguments, avoids their CPU pitfalls, and adds one callback that writes metrics.jsonl,
draws hone's progress bar, stops at the wall-clock budget and spreads the lr schedule over it.

CPU pitfalls handled (field notes §4): TRL configs default to bf16=True, which raises "Your setup
doesn't support bf16/gpu" on CPU, and to gradient checkpointing (-11% speed). hone trains fp32 on
CPU with bf16 matmuls through `float32_matmul_precision("medium")` (set by pick_hardware), which
keeps small early updates that eager bf16 autocast would round away.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from rich.progress import TaskID
from transformers import PrinterCallback, ProgressCallback, TrainerCallback

from hone import atomic
from hone.config import RunConfig
from hone.hardware import Hardware
from hone.training.distributed import close as close_ranks, ranks
from hone.training.loop import Interrupted, progress_bar
from hone.training.safeguards import ValidationWatch, restore_best, save_best
from hone.training.trackers import Trackers, tracker_names

# Keys of a Trainer log that are bookkeeping, not measurements of the step.
_SKIP = {"epoch", "total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second"}


def trainer_arguments(args_class, config: RunConfig, run_dir: Path, hw: Hardware, validation: bool = True,
                      **specific):
    """An instance of `args_class` (TrainingArguments or a TRL config) from hone's settings.

    `validation`: the trainer gets an eval set; it is scored every `train.eval_every` steps (default
    once per epoch) and at the last step, and HoneCallback watches it as hone's loop does."""
    t = config.train
    world = ranks().world  # batch_size is the effective batch over every process
    micro = max(1, min(t.micro_batch_size, t.batch_size // world))
    steps_per_save = t.save_every
    kwargs = dict(
        output_dir=str(Path(run_dir) / "checkpoints"),
        per_device_train_batch_size=micro, per_device_eval_batch_size=micro,
        gradient_accumulation_steps=max(1, t.batch_size // (micro * world)),
        learning_rate=config.lr, num_train_epochs=t.epochs, max_steps=t.max_steps or -1,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a share of the steps in transformers 5
        lr_scheduler_type="constant_with_warmup" if t.scheduler == "constant" else t.scheduler,
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, seed=t.seed, data_seed=t.seed,
        logging_steps=1, report_to="none", disable_tqdm=True,
        save_strategy="steps" if steps_per_save else "epoch", save_steps=steps_per_save or 500,
        save_total_limit=t.keep_checkpoints, save_only_model=False,
        eval_strategy=("steps" if t.eval_every else "epoch") if validation else "no",
        eval_steps=t.eval_every, dataloader_num_workers=0,
        activation_checkpointing=False,  # TRL turns it on by default: -11% speed on CPU
        use_cpu=hw.device == "cpu",
        bf16=hw.device != "cpu" and hw.autocast == torch.bfloat16,
        fp16=hw.device != "cpu" and hw.autocast == torch.float16,
    )
    kwargs.update(specific)
    return args_class(**kwargs)


class HoneCallback(TrainerCallback):
    """metrics.jsonl lines, hone's progress bar, the wall-clock budget and the validation safeguards for a Trainer.

    With a time budget the Trainer's schedule (built over the steps that epochs or max_steps give)
    would barely leave warmup before the budget stops it. As in hone's own loop, the schedule then
    runs on progress = max(steps done / steps planned, seconds spent / budget): warmup and decay
    both finish by the end of the budget, whichever limit comes first. `clock` is for tests.

    Each validation goes through the same ValidationWatch as hone's loop (training/safeguards.py): the
    best step's trainable weights are kept, patience stops training, the overfitting alarm is
    raised; the watch's state after each validation is kept in the run folder so a resumed run makes
    the same decisions. Curves go to the trackers of `train.report_to`.
    """

    def __init__(self, run_dir: Path, config: RunConfig, console: Console, trackers: Trackers | None = None,
                 clock: Callable[[], float] = time.monotonic):
        t = config.train
        self.run_dir, self.path = Path(run_dir), Path(run_dir) / "metrics.jsonl"
        self.time_budget, self.console, self.clock = t.time_budget, console, clock
        self.restore = t.restore_best
        self.watch = ValidationWatch(t.early_stopping_patience, t.early_stopping_min_delta, t.overfit_alarm)
        self.trackers = trackers or Trackers([], run_dir)
        self.started = clock()
        self.logged_at = self.started
        self.bar = progress_bar(console)
        self.task: TaskID | None = None
        self.stopped_by_budget = self.stopped_early = False
        self.last: dict = {}
        self.losses_since_validation: list[float] = []

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        self.started = self.clock() - _elapsed_before(self.path, state.global_step)
        self.watch = _watch_at(self.run_dir, state.global_step) or self.watch
        if self.time_budget and hasattr(lr_scheduler, "lr_lambdas"):
            total = max(1, state.max_steps)
            lr_scheduler.lr_lambdas = [self._over_budget(f, total) for f in lr_scheduler.lr_lambdas]
            groups = lr_scheduler.optimizer.param_groups  # the step about to run gets its lr now, not warmup's 0
            for group, base, budgeted in zip(groups, lr_scheduler.base_lrs, lr_scheduler.lr_lambdas):
                group["lr"] = base * budgeted(lr_scheduler.last_epoch)
            lr_scheduler._last_lr = [group["lr"] for group in groups]
        self.bar.start()
        self.task = self.bar.add_task("train", total=1000, status="starting")

    def _over_budget(self, lr_lambda, total: int):
        """`lr_lambda` (a function of the step) at the step the elapsed share of the budget stands for.

        As in hone's loop, the lr is that of the step about to run (step + 1): where a budget fits only a
        few steps, warmup's lr of 0 for the first one would waste it (a dpo run on the loaded CPU fit two)."""
        budget = self.time_budget
        assert budget  # on_train_begin calls this only with a time budget

        def budgeted(step: int) -> float:
            # rank 0's clock, so every process steps with the same lr
            spent = ranks().from_main(min(1.0, (self.clock() - self.started) / budget))
            return lr_lambda(max(float(step + 1), spent * total))
        return budgeted

    def on_step_end(self, args, state, control, **kwargs):
        budget = self.time_budget or 0.0
        over = bool(budget) and self.clock() - self.started >= budget
        if ranks().from_main(over):  # every process stops at the same step, or one waits forever
            self.stopped_by_budget = True
            control.should_training_stop = True
            control.should_save = True
        last = control.should_training_stop or state.global_step >= state.max_steps
        if last and args.eval_strategy != "no" and self._last_validated() != state.global_step:
            control.should_evaluate = True  # the last step is always validated, as in hone's loop

    def _last_validated(self) -> int | None:
        return int(self.watch.history[-1][0]) if self.watch.history else None

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        val_loss = (metrics or {}).get("eval_loss")
        if val_loss is None or self._last_validated() == state.global_step:
            return  # an epoch's end and the last step can both ask for the same step's validation
        losses, self.losses_since_validation = self.losses_since_validation, []
        train_loss = sum(losses) / len(losses) if losses else float("nan")
        seen = self.watch.observe(state.global_step, train_loss, float(val_loss))
        if seen.improved and self.restore and model is not None:
            save_best(self.run_dir, model, state.global_step, float(val_loss))
        if seen.overfitting and state.is_world_process_zero:
            self.console.print(f"  [yellow]overfitting alarm at step {state.global_step}: training loss fell and "
                               f"validation loss rose {self.watch.alarm_after} validations in a row[/yellow]")
        if ranks().from_main(self.watch.should_stop):
            self.stopped_early = True
            control.should_training_stop = True
            control.should_save = True
        if state.is_world_process_zero:
            _keep_watch(self.run_dir, self.watch)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "train_runtime" in logs:
            return
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 3)}
        for key, value in logs.items():
            if key in _SKIP or not isinstance(value, (int, float)):
                continue
            name = {"learning_rate": "lr"}.get(key, key.replace("eval_", "val_", 1))
            record[name] = round(float(value), 6)
        record["elapsed_s"] = round(self.clock() - self.started, 2)
        if not state.is_world_process_zero:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if "loss" in record:
            self.losses_since_validation.append(record["loss"])
        self.trackers.on_step(record)
        self.last.update(record)
        status = f"step {state.global_step}/{state.max_steps}"
        for key in ("loss", "reward", "rewards/margins", "val_loss"):
            if key in record:
                status += f"  {key.split('/')[-1]} {record[key]:.3f}"
        done = state.global_step / max(1, state.max_steps)
        if self.time_budget:
            done = max(done, record["elapsed_s"] / self.time_budget)
        assert self.task is not None  # on_train_begin added it
        self.bar.update(self.task, completed=int(min(1.0, done) * 1000), status=status)
        if not self.console.is_terminal and self.clock() - self.logged_at >= 30:
            self.console.print(f"train {status}", highlight=False, soft_wrap=True)
            self.logged_at = self.clock()

    def on_train_end(self, args, state, control, **kwargs):
        if self.task is not None:
            self.bar.update(self.task, completed=1000)
        self.bar.stop()
        self.trackers.on_end()


def _watch_path(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "validation_watch.json"


def _keep_watch(run_dir: Path, watch: ValidationWatch) -> None:
    """The watch's state after each validation, so a resumed run picks up the one of its checkpoint."""
    path = _watch_path(run_dir)
    states = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    step = watch.history[-1][0]
    states = [s for s in states if s["history"][-1][0] < step] + [watch.state()]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, states)


def _watch_at(run_dir: Path, step: int) -> ValidationWatch | None:
    """The watch as it stood at `step` (a resumed run), or None for a fresh start."""
    path = _watch_path(run_dir)
    if step == 0 or not path.is_file():
        return None
    states = [s for s in json.loads(path.read_text(encoding="utf-8")) if s["history"][-1][0] <= step]
    return ValidationWatch.from_state(states[-1]) if states else None


def _elapsed_before(path: Path, step: int) -> float:
    """Training seconds already spent up to `step` (a resumed run continues its clock)."""
    if step == 0 or not path.exists():
        path.unlink(missing_ok=True)
        return 0.0
    kept = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [r for r in kept if r.get("step", 0) <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    return max((r.get("elapsed_s", 0.0) for r in kept), default=0.0)


def trainer_sync(trainer) -> str:
    """How a Trainer kept several processes in step, read from the trainer after training."""
    if getattr(trainer, "is_deepspeed_enabled", False):
        return f"Trainer (DeepSpeed ZeRO-{trainer.accelerator.state.deepspeed_plugin.zero_stage})"
    if getattr(trainer, "is_fsdp_enabled", False):
        return f"Trainer (FSDP{getattr(trainer.accelerator.state.fsdp_plugin, 'fsdp_version', 1)})"
    wrapper = type(trainer.model_wrapped).__name__
    return "Trainer (DDP)" if wrapper == "DistributedDataParallel" else f"Trainer ({wrapper})"


def trainer_results(summary: dict) -> dict:
    """The figures of a Trainer-driven run that every objective records the same way (run.json `results`)."""
    keys = ("steps", "stopped_by", "first_loss", "train_loss", "val_loss", "best_step", "best_val_loss",
            "restored_best", "overfitting_alarms")
    return {key: summary.get(key) for key in keys}


def run_trainer(trainer, run_dir: Path, config: RunConfig, resume: bool, console: Console) -> dict:
    """Train with hone's callback; return a summary (steps, seconds, stopped_by, losses, best step, alarms)."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    team = ranks()
    trackers = Trackers(tracker_names(config.train.report_to) if team.main else [], run_dir,
                        config.model_dump(mode="json"), config.name)
    callback = HoneCallback(run_dir, config, console, trackers)
    trainer.add_callback(callback)
    checkpoints = Path(run_dir) / "checkpoints"
    has_checkpoint = resume and any(checkpoints.glob("checkpoint-*"))
    if not team.main:
        console = Console(stderr=True, quiet=True)
        callback.console, callback.bar = console, progress_bar(console)
    try:
        trainer.train(resume_from_checkpoint=True if has_checkpoint else None)
    except KeyboardInterrupt:
        # The Trainer saves only on its schedule: resume continues from the newest saved checkpoint.
        callback.bar.stop()
        saved = [int(p.name.split("-")[-1]) for p in checkpoints.glob("checkpoint-*")]
        if not saved:
            raise
        raise Interrupted(max(saved)) from None
    if team.world > 1:
        if team.main:  # what really kept the ranks in step, so a silent fallback shows in the record
            from hone.registry.runs import read_record, update_record
            update_record(run_dir,
                          distributed=(read_record(run_dir).get("distributed") or {}) | {"sync": trainer_sync(trainer)})
        # Training is the only collective work: rank 0 saves and evaluates alone, the others are done.
        trainer.model_wrapped = trainer.model
        import gc
        gc.collect()
        team.wait()
        close_ranks()
        if not team.main:
            raise SystemExit(0)
    state, watch = trainer.state, callback.watch
    if callback.stopped_early:
        stopped_by = "early_stopping"
    elif callback.stopped_by_budget:
        stopped_by = "time_budget"
    else:
        stopped_by = "max_steps" if config.train.max_steps else "epochs"
    last_val = watch.history[-1][2] if watch.history else None
    restored = (config.train.restore_best and watch.best_step is not None and last_val is not None
                and watch.best_loss is not None and watch.best_loss < last_val and restore_best(run_dir, trainer.model))
    if restored:
        console.print(f"  restored the validation-best weights of step {watch.best_step} "
                      f"(validation loss {watch.best_loss:.4f} against {last_val:.4f} at the end)")
    losses = [r["loss"] for r in state.log_history if "loss" in r]
    return {"steps": state.global_step, "seconds": round(callback.clock() - callback.started, 2),
            "stopped_by": stopped_by, "train_loss": losses[-1] if losses else None,
            "first_loss": losses[0] if losses else None, "val_loss": last_val,
            "best_step": watch.best_step, "best_val_loss": watch.best_loss, "restored_best": bool(restored),
            "overfitting_alarms": watch.alarms, "last_log": callback.last}
