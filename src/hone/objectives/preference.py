"""Preference tuning from chosen/rejected pairs (DPO, ORPO, SimPO) through TRL, top to bottom.

load pairs -> load base -> score the base (pairwise accuracy on test pairs) -> apply the method ->
train with TRL's trainer -> save -> score the tuned model -> record.

    dpo    Direct Preference Optimisation (Rafailov et al. 2023): policy vs a frozen reference; with
           a peft method the reference is the base with the adapter switched off (no second copy).
    orpo   Odds-Ratio Preference Optimisation (Hong et al. 2024): SFT loss + an odds-ratio term,
           no reference model. TRL keeps it in trl.experimental.
    simpo  SimPO (Meng et al. 2024): length-normalised log-probability margin with a target margin
           gamma, no reference model. TRL's CPO trainer with loss_type="simpo" and cpo_alpha=0.

Pairwise accuracy is the share of test pairs where the model gives the chosen answer a higher mean
log-probability per token than the rejected one: what the training pushes on, measurable for the
base model too. TRL's configs crash on CPU unless told `use_cpu`; training/hf_trainer.py handles it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from rich.console import Console

from hone.config import RunConfig
from hone.data.load import load_records
from hone.data.records import PreferenceExample
from hone.data.render import IGNORE, tokenize_chat
from hone.data.split import hold_out
from hone.methods import apply_method, count_parameters, load_base
from hone.methods.artifact import load_run_model
from hone.models.catalogue import resolve_model
from hone.models.load import load_tokenizer
from hone.objectives.lifecycle import Row, RunResult, begin_run, finish_run, probe_base, probe_tuned, save_artifact
from hone.training.batches import collate
from hone.training.hf_trainer import run_trainer, trainer_arguments, trainer_results

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # ORPO and CPO live in trl.experimental


def load_pairs(path: Path, system_prompt: str | None, objective: str) -> list[PreferenceExample]:
    records = cast("list[PreferenceExample]", load_records(path))  # objectives/checks.py checked the record type
    if system_prompt:
        for pair in records:
            if not pair.prompt or pair.prompt[0]["role"] != "system":
                pair.prompt.insert(0, {"role": "system", "content": system_prompt})
    return records


def to_dataset(pairs: list[PreferenceExample]):
    """TRL's conversational preference format: the chat template is applied by the trainer."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
                               "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs])


@torch.no_grad()
def mean_logprobs(model, tokenizer, conversations: list[list[dict]], max_length: int,
                  batch_size: int = 16) -> list[float]:
    """Mean log-probability per token of each conversation's assistant answer."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(conversations), batch_size):
        examples = [tokenize_chat(tokenizer, c, max_length) for c in conversations[i:i + batch_size]]
        batch = {k: v.to(device) for k, v in collate(examples, tokenizer.pad_token_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        targets = batch["labels"][:, 1:]
        keep = targets != IGNORE
        logp = -F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets.clamp(min=0), reduction="none")
        out += ((logp * keep).sum(-1) / keep.sum(-1).clamp(min=1)).tolist()
    return out


def preference_scores(model, tokenizer, pairs: list[PreferenceExample], max_length: int) -> dict[str, float]:
    """Pairwise accuracy, and the mean margin (chosen minus rejected mean log-probability per token):
    the margin keeps moving after accuracy saturates."""
    chosen = mean_logprobs(model, tokenizer, [p.prompt + [{"role": "assistant", "content": p.chosen}] for p in pairs],
                           max_length)
    rejected = mean_logprobs(model, tokenizer,
                             [p.prompt + [{"role": "assistant", "content": p.rejected}] for p in pairs], max_length)
    n = max(1, len(pairs))
    return {"accuracy": round(sum(c > r for c, r in zip(chosen, rejected)) / n, 4),
            "margin": round(sum(c - r for c, r in zip(chosen, rejected)) / n, 4)}


def trainer_for(config: RunConfig, model, tokenizer, dataset, eval_dataset, run_dir: Path, hw):
    """TRL's trainer and config for dpo, orpo or simpo; `eval_dataset` (or None) is validated as it trains."""
    common = {"max_length": config.data.max_length, "beta": config.preference.beta}
    data = {"train_dataset": dataset, "eval_dataset": eval_dataset, "processing_class": tokenizer}
    validation = eval_dataset is not None
    if config.objective == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = trainer_arguments(DPOConfig, config, run_dir, hw, validation, **common)
        return DPOTrainer(model=model, args=args, **data)
    if config.objective == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        args = trainer_arguments(ORPOConfig, config, run_dir, hw, validation, **common)
        return ORPOTrainer(model=model, args=args, **data)
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    args = trainer_arguments(CPOConfig, config, run_dir, hw, validation, loss_type="simpo", cpo_alpha=0.0,
                             simpo_gamma=config.preference.simpo_gamma, **common)
    return CPOTrainer(model=model, args=args, **data)


def run_preference(config: RunConfig, run_dir: Path | None = None, console: Console | None = None) -> RunResult:
    """Preference-tune with `config.objective` (dpo, orpo or simpo); `run_dir` resumes."""
    console = console or Console(stderr=True)
    objective = config.objective
    # 1. Data: pairs for training, validation (held out when no file is given) and test.
    assert config.data.train is not None  # objectives/checks.py refuses a run without it
    train = load_pairs(config.data.train, config.data.system_prompt, objective)
    if config.data.validation:
        validation = load_pairs(config.data.validation, config.data.system_prompt, objective)
    else:
        train, validation = hold_out(train, config.data.validation_fraction, config.train.seed)
    test = load_pairs(config.data.test, config.data.system_prompt, objective) if config.data.test else validation
    start = begin_run(config, run_dir, console, {
        "train": str(config.data.train), "n_train": len(train), "n_validation": len(validation),
        "n_test": len(test) if config.data.test else 0})

    # 2. The base model, and how often it already prefers the chosen answer.
    base = resolve_model(config.model.name)
    tokenizer = load_tokenizer(base)
    model = load_base(base, config.method, start.hw.device)  # qlora: NF4 as it loads
    length = config.data.max_length
    base_scores = preference_scores(model, tokenizer, test, length) if test else {}
    probe = probe_base(start, model, tokenizer)  # general skills before any change (forgetting guard)

    # 3. The method (fp32 throughout: eager bf16 shrank DPO margins from 0.52 to 0.11, field notes §4).
    model = apply_method(model, config.method)
    params = count_parameters(model)
    console.print(f"  data: {len(train)} train, {len(validation)} validation, {len(test)} test pairs")
    console.print(f"  method: {config.method.name}, {params}; lr {config.lr:g}; beta {config.preference.beta:g}")

    # 4. Train with TRL.
    trainer = trainer_for(config, model, tokenizer, to_dataset(train), to_dataset(validation) if validation else None,
                          start.run_dir, start.hw)
    summary = run_trainer(trainer, start.run_dir, config, start.resume, console)

    # 5. Save, reload exactly what was saved, score it on the same pairs.
    model = trainer.model
    model.eval()
    out = save_artifact(model, tokenizer, start.run_dir, config.method)
    tuned, _ = load_run_model(start.run_dir, start.hw.device)
    tuned_scores = preference_scores(tuned, tokenizer, test, length) if test else {}
    forgetting = probe_tuned(start, probe, tuned, tokenizer)
    last = summary["last_log"]
    results = {"metric": "pairwise_accuracy", "split": "test" if config.data.test else "validation",
               **trainer_results(summary), "reward_margin": last.get("rewards/margins"),
               "reward_accuracy": last.get("rewards/accuracies"),
               "base_score": base_scores.get("accuracy"), "tuned_score": tuned_scores.get("accuracy"),
               "base_margin": base_scores.get("margin"), "tuned_margin": tuned_scores.get("margin"),
               "trainable_parameters": params.trainable, "total_parameters": params.total, "artifact": out.name}
    rows = [Row("mean log-prob margin, chosen - rejected", base_scores.get("margin"), tuned_scores.get("margin"))]
    return finish_run(start, results, summary["seconds"], rows=rows, forgetting=forgetting)
