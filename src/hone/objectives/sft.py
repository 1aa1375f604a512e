"""Supervised fine-tuning on chat data, top to bottom.

load data -> load base -> render with the chat template (loss on assistant turns and their
end-of-turn token) -> score the base on the test split -> apply the method -> train -> save ->
score the tuned model -> record everything in the run folder.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from rich.console import Console

from hone import __version__
from hone.config import RunConfig
from hone.data.load import load_chat_records as load_chat
from hone.data.records import ChatExample
from hone.data.render import tokenize_chat
from hone.data.split import hold_out
from hone.errors import ConfigError
from hone.evaluate.compare import Evaluation, default_max_new_tokens, evaluate_answers, item_outcomes
from hone.evaluate.forgetting import ProbeScores, compare_probe, load_probe, probe_wanted, score_probe
from hone.evaluate.metrics import pick_metric
from hone.evaluate.report import write_report
from hone.hardware import peak_memory_mb, pick_hardware
from hone.methods import (apply_method, artifact_folder_name, check_method, count_parameters, estimate_memory,
                          load_base, load_tuned, meta_model)
from hone.models.catalogue import resolve_model
from hone.models.load import load_tokenizer
from hone.objectives.record import save_artifact
from hone.train.distributed import close as close_ranks
from hone.train.distributed import ranks
from hone.launch import launcher_name
from hone.train.batches import micro_batches
from hone.train.loop import token_cap, train_loop
from hone.train.precision import bf16_frozen_linears, pick_attention
from hone.train.regularise import lr_warning
from hone.train.replay import mix_replay
from hone.registry.runs import new_run_dir, read_record, update_record
from hone.train.sharding import fuse_lora_wanted, sharding_wanted, sync_name
from hone.train.trackers import Trackers, tracker_names


@dataclass
class SFTResult:
    run_dir: Path
    metric: str | None = None
    base: Evaluation | None = None
    tuned: Evaluation | None = None
    test: list[ChatExample] = field(default_factory=list)
    train_seconds: float = 0.0
    total_seconds: float = 0.0
    record: dict = field(default_factory=dict)
    forgetting: dict | None = None   # the probe's verdict (evaluate/forgetting.py), when it ran


def with_system_prompt(examples: list[ChatExample], system_prompt: str | None) -> list[ChatExample]:
    if not system_prompt:
        return examples
    for example in examples:
        if example.messages[0]["role"] != "system":
            example.messages.insert(0, {"role": "system", "content": system_prompt})
    return examples


def common_system_prompt(examples: list[ChatExample]) -> str | None:
    """The system message nearly every training example starts with: chat and generate default to it,
    so the tuned model is asked the way it was taught."""
    from collections import Counter

    firsts = Counter(e.messages[0]["content"] for e in examples if e.messages[0]["role"] == "system")
    if firsts:
        text, count = firsts.most_common(1)[0]
        if count >= 0.9 * len(examples):
            return text
    return None


def run_sft(config: RunConfig, run_dir: Path | None = None, console: Console | None = None) -> SFTResult:
    """Train and evaluate one SFT run; `run_dir` of an interrupted run resumes it."""
    console = console or Console(stderr=True)
    started = time.monotonic()
    if config.data.train is None:
        raise ConfigError("no training data: pass --data FILE (or data.train in the config)")
    check_method(config.method, "sft")  # an impossible method/objective pair fails before any work
    # 1. Data: train, validation (a seeded share of train when no file is given), test.
    train = with_system_prompt(load_chat(config.data.train, config.data.format, config.data.strict), config.data.system_prompt)
    if config.data.validation:
        validation = with_system_prompt(load_chat(config.data.validation, config.data.format, config.data.strict), config.data.system_prompt)
    else:
        train, validation = hold_out(train, config.data.validation_fraction, config.train.seed)
    n_own = len(train)
    train = mix_replay(train, config.train.replay, config.train.seed)  # general chats vs forgetting
    test = with_system_prompt(load_chat(config.data.test, config.data.format, config.data.strict), config.data.system_prompt) if config.data.test else []
    base = resolve_model(config.model.name)
    check_method(config.method, "sft", meta_model(base.path))  # e.g. bitfit on a model without biases
    resume = run_dir is not None
    # Under torchrun every rank trains; rank 0 alone creates the folder, evaluates, saves and records.
    team = ranks()
    if not team.main:
        console = Console(stderr=True, quiet=True)
    write_record = update_record if team.main else (lambda run, **fields: fields)
    run_dir = team.from_main(run_dir or (new_run_dir(config) if team.main else None))  # data read without error
    hw = pick_hardware(config.train.precision, config.train.threads)
    console.print(f"[bold]hone[/bold] run folder {run_dir}\n  hardware: {hw.note}")

    # 2. Render: token ids with labels only on the assistant's words and end-of-turn tokens.
    tokenizer = load_tokenizer(base)
    train_set = [tokenize_chat(tokenizer, e.messages, config.data.max_length) for e in train]
    val_set = [tokenize_chat(tokenizer, e.messages, config.data.max_length) for e in validation]

    # 3. The base model, with the attention kernel that is fastest for these lengths.
    attention = config.train.attention
    if attention == "auto":
        attention = pick_attention(hw.device, max(len(e.input_ids) for e in train_set + val_set))
    model = load_base(base, config.method, hw.device, attention)  # qlora: NF4 as it loads
    truncated = sum(e.truncated for e in train_set + val_set)
    console.print(f"  data: {len(train_set)} train, {len(val_set)} validation, {len(test)} test examples"
                  + (f"; [yellow]{truncated} truncated to {config.data.max_length} tokens[/yellow]" if truncated else ""))
    write_record(run_dir, status="running", hone_version=__version__, base_model=config.model.name,
                  system_prompt=common_system_prompt(train),
                  base_path=str(base.path), method=config.method.name, objective="sft",
                  data={"train": str(config.data.train), "validation": str(config.data.validation or ""),
                        "test": str(config.data.test or ""), "n_train": len(train_set),
                        "n_validation": len(val_set), "n_test": len(test), "truncated": truncated},
                  distributed={"world_size": team.world, "backend": team.backend, "sync": sync_name(config.train, team.world),
                               "launcher": launcher_name()}
                  if team.world > 1 else None)

    # 4. The base model on the test split, before any change.
    metric = None
    base_eval = None
    if test and team.main:
        metric = pick_metric([e.answer or "" for e in test]) if config.eval.metric == "auto" else config.eval.metric
        max_new = config.eval.max_new_tokens or default_max_new_tokens(tokenizer, test)
        if config.eval.base and not (resume and read_record(run_dir).get("base_scores")):
            base_eval = evaluate_answers(model, tokenizer, test, metric, max_new, config.eval.batch_size,
                                         "base eval", console)
            write_record(run_dir, base_answers=base_eval.answers, base_scores=base_eval.scores)
        elif resume and config.eval.base:
            record = read_record(run_dir)
            base_eval = Evaluation(metric, record["base_answers"], record["base_scores"])

    # 4b. The forgetting probe on the base (general skills), kept in run.json for resume.
    probe_base = None
    if team.main and probe_wanted(config.eval.forgetting, model):
        if resume and read_record(run_dir).get("probe_base"):
            probe_base = ProbeScores.from_json(read_record(run_dir)["probe_base"])
        else:
            probe_base = score_probe(model, tokenizer, load_probe(config.eval.probe), label="forgetting probe (base)",
                                     console=console)
            write_record(run_dir, probe_base=probe_base.to_json())
        console.print(f"  forgetting probe: base {probe_base.accuracy:.1%} on {len(probe_base.ids)} general-skills "
                      f"items ({probe_base.seconds:.0f} s)")
    if len(train) > n_own:
        console.print(f"  replay: {len(train) - n_own} of the {len(train)} training examples are hone's general chats")

    # 5. The adaptation method.
    torch.manual_seed(config.train.seed)  # adapter initialisation
    model = apply_method(model, config.method)
    params = count_parameters(model)
    if hw.frozen_bf16 and config.train.frozen_bf16:
        bf16_frozen_linears(model, fuse_lora_wanted(config.train))  # fp32 base weights are gone from here on: see step 8
    # The largest micro-batch: the longest examples together (length-grouped batching puts them so).
    lengths = [len(e.input_ids) for e in train_set]
    by_length = sorted(range(len(train_set)), key=lambda i: -lengths[i])
    longest = [train_set[i] for i in micro_batches(by_length, config.train.micro_batch_size, lengths,
                                                    token_cap(config.train, hw))[0]][::-1]
    memory = estimate_memory(model, len(longest), len(longest[-1].input_ids), sum(e.trained_tokens for e in longest))
    per_process = ""
    if sharding_wanted(config.train, team.world):  # each rank holds 1/N of these while it trains
        memory = replace(memory, weights=memory.weights // team.world, gradients=memory.gradients // team.world,
                         optimizer=memory.optimizer // team.world)
        per_process = (f" per process, sharded over {team.world} (loading and checkpoints hold the full weights "
                       "for a moment)")
    console.print(f"  method: {config.method.name}, {params}; lr {config.lr:g}\n"
                  f"  memory estimate: {memory}{per_process}", soft_wrap=True)
    if warning := lr_warning(config.method.name, config.lr, config.train.kl_to_base, config.train.replay):
        console.print(f"  [yellow]warning: {warning}[/yellow]")

    # 6. Train (curves also go to TensorBoard / W&B / MLflow as train.report_to says).
    trackers = Trackers(tracker_names(config.train.report_to) if team.main else [], run_dir,
                        config.model_dump(mode="json"), config.name)
    try:
        result = train_loop(model, train_set, val_set, config.train, config.lr, hw, run_dir,
                            tokenizer.pad_token_id, resume=resume, console=console, callbacks=[trackers])
    finally:
        trackers.on_end()

    # 7. Save what the method trained (adapter/: peft format or trained tensors; model/ for full),
    # with the tokenizer beside it.
    model.eval()
    out = run_dir / artifact_folder_name(config.method)
    if team.main:
        save_artifact(model, tokenizer, run_dir, config.method)

    # 8. The tuned model on the same test items.
    tuned_eval = forgetting = None
    if (test or probe_base) and team.main:
        # Reload what was saved onto a fresh fp32 base: the trained model's frozen weights may be bf16,
        # and this scores exactly the artifact the user gets.
        tuned = load_tuned(base, out, hw.device, attention) if out.name == "adapter" else model
    if test and team.main:
        tuned_eval = evaluate_answers(tuned, tokenizer, test, metric, max_new, config.eval.batch_size,
                                      "tuned eval", console)
    if probe_base and team.main:
        probe_tuned = score_probe(tuned, tokenizer, load_probe(config.eval.probe), label="forgetting probe (tuned)",
                                  console=console)
        forgetting = compare_probe(probe_base, probe_tuned, config.eval.max_forgetting).to_json()
        write_record(run_dir, probe_tuned=probe_tuned.to_json())
        console.print(f"  forgetting probe: tuned {probe_tuned.accuracy:.1%}, drop {forgetting['drop']:+.1f} points "
                      f"(95% CI {forgetting['ci'][0]:+.1f} to {forgetting['ci'][1]:+.1f}) "
                      + ("[green]within[/green]" if forgetting["passed"] else "[red]over[/red]")
                      + f" the {forgetting['gate']:g}-point gate")

    # 9. Record the results.
    results = {"metric": metric, "steps": result.steps, "stopped_by": result.stopped_by,
               "train_loss": result.loss, "val_loss": result.val_loss, "tokens": result.tokens,
               "best_step": result.best_step, "best_val_loss": result.best_val_loss,
               "overfitting_alarms": result.overfitting_alarms,
               "tokens_per_s": round(result.tokens / max(result.seconds, 1e-9), 1),
               "trainable_parameters": params.trainable, "total_parameters": params.total,
               "memory_estimate_bytes": memory.total}
    results["peak_memory_mb"], results["peak_memory_kind"] = peak_memory_mb(hw.device)
    if base_eval:
        results["base_score"] = base_eval.score
    if tuned_eval:
        results["tuned_score"] = tuned_eval.score
        if base_eval:
            results["items"] = item_outcomes(base_eval, tuned_eval)
    total = time.monotonic() - started
    record = write_record(run_dir, status="succeeded", results=results, train_seconds=round(result.seconds, 2),
                           total_seconds=round(total, 2), hardware=hw.note,
                           tuned_answers=tuned_eval.answers if tuned_eval else None, forgetting=forgetting,
                           warnings=[w for w in [warning] if w])
    if team.main:
        try:  # 10. The report page; a failure here must not cost the trained run
            console.print(f"  report: {write_report(run_dir)}")
        except Exception as exc:  # noqa: BLE001
            console.print(f"[yellow]  report not written ({type(exc).__name__}: {exc}); retry: hone report {run_dir}")
    team.wait()
    close_ranks()
    return SFTResult(run_dir, metric, base_eval, tuned_eval, test, result.seconds, total, record, forgetting)
