"""A reward model from preference pairs (TRL RewardTrainer), top to bottom.

load pairs -> base with a one-output head -> score the base (pairwise accuracy) -> apply the
method (the head always trains) -> train with TRL's Bradley-Terry loss, -log sigmoid(r_chosen -
r_rejected) -> save -> score the tuned model -> record. A grpo run can then use the run folder as
its reward (`grpo.reward_model`).

Pairwise accuracy: the share of test pairs where the chosen answer gets the higher reward.
"""
from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console

from hone.config import RunConfig
from hone.data.records import PreferenceExample
from hone.data.render import render
from hone.data.split import hold_out
from hone.methods import apply_method, count_parameters
from hone.methods.heads import as_causal_lm, has_lm_head, load_head_model, load_head_run, train_new_head
from hone.models.catalogue import resolve_model
from hone.models.load import load_causal_lm, load_tokenizer
from hone.objectives.lifecycle import RunResult, RunStart, begin_run, finish_run, probe_base, probe_tuned, save_artifact
from hone.objectives.preference import load_pairs, preference_scores
from hone.registry.runs import update_record
from hone.training.hf_trainer import run_trainer, trainer_arguments, trainer_results


def reward_ids(tokenizer, prompt: list[dict], answer: str, max_length: int) -> list[int]:
    """The tokens a reward model reads: the chat rendered with its template and closed with the
    end-of-text token (as TRL does), or the plain texts for encoders without a template (their
    tokenizer adds [CLS]/[SEP]). Truncated, never dropped: TRL silently drops over-long pairs."""
    messages = prompt + [{"role": "assistant", "content": answer}]
    if tokenizer.chat_template:
        text = render(tokenizer, messages)
        eos = tokenizer.eos_token or ""
        text = text if text.endswith(eos) else text + eos
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer("\n".join(m["content"] for m in messages))["input_ids"]
    return ids[-max_length:]  # keep the end: the answer is what is judged


def to_dataset(tokenizer, pairs: list[PreferenceExample], max_length: int):
    """Pre-tokenized pairs (TRL's `chosen_ids`/`rejected_ids`), so hone decides rendering and truncation."""
    from datasets import Dataset

    return Dataset.from_list([{"chosen_ids": reward_ids(tokenizer, p.prompt, p.chosen, max_length),
                               "rejected_ids": reward_ids(tokenizer, p.prompt, p.rejected, max_length)}
                              for p in pairs])


@torch.no_grad()
def rewards(model, tokenizer, sequences: list[list[int]], batch_size: int = 16) -> list[float]:
    """The scalar reward of each token sequence."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(sequences), batch_size):
        batch = tokenizer.pad({"input_ids": sequences[i:i + batch_size]}, return_tensors="pt").to(device)
        out += model(**batch).logits[:, 0].float().tolist()
    return out


def pairwise_accuracy(model, tokenizer, pairs: list[PreferenceExample], max_length: int) -> float:
    chosen = rewards(model, tokenizer, [reward_ids(tokenizer, p.prompt, p.chosen, max_length) for p in pairs])
    rejected = rewards(model, tokenizer, [reward_ids(tokenizer, p.prompt, p.rejected, max_length) for p in pairs])
    return sum(c > r for c, r in zip(chosen, rejected)) / max(1, len(pairs))


def run_reward(config: RunConfig, run_dir: Path | None = None, console: Console | None = None) -> RunResult:
    """Train a reward model; `run_dir` of an interrupted run resumes it."""
    from trl import RewardConfig, RewardTrainer

    console = console or Console(stderr=True)
    # 1. Data.
    assert config.data.train is not None  # objectives/checks.py refuses a run without it
    train = load_pairs(config.data.train, config.data.system_prompt, "reward")
    if config.data.validation:
        validation = load_pairs(config.data.validation, config.data.system_prompt, "reward")
    else:
        train, validation = hold_out(train, config.data.validation_fraction, config.train.seed)
    test = load_pairs(config.data.test, config.data.system_prompt, "reward") if config.data.test else validation
    start = begin_run(config, run_dir, console, {
        "train": str(config.data.train), "n_train": len(train), "n_validation": len(validation),
        "n_test": len(test) if config.data.test else 0})
    update_record(start.run_dir, head="sequence", labels=[])

    # 2. The base as it is (its own preferences, its general skills), then with a one-output head.
    base = resolve_model(config.model.name)
    tokenizer = load_tokenizer(base)
    length = config.data.max_length
    base_accuracy, probe = base_preferences(start, base, tokenizer, test, length)
    model = load_head_model(base, "sequence", [], start.hw.device, seed=config.train.seed)
    model = apply_method(model, config.method)
    train_new_head(model)
    params = count_parameters(model)
    console.print(f"  data: {len(train)} train, {len(validation)} validation, {len(test)} test pairs")
    console.print(f"  method: {config.method.name}, {params}; lr {config.lr:g}")

    # 3. Train with TRL.
    args = trainer_arguments(RewardConfig, config, start.run_dir, start.hw, bool(validation), max_length=length)
    # apply_method returns the PreTrainedModel or PeftModel typed as the nn.Module both are
    trainer = RewardTrainer(model=model,  # type: ignore[arg-type]
                            args=args, train_dataset=to_dataset(tokenizer, train, length),
                            eval_dataset=to_dataset(tokenizer, validation, length) if validation else None,
                            processing_class=tokenizer)
    summary = run_trainer(trainer, start.run_dir, config, start.resume, console)

    # 4. Save, reload, score.
    out = save_artifact(trainer.model, tokenizer, start.run_dir, config.method)
    tuned, _, _ = load_head_run(start.run_dir, start.hw.device)
    tuned_accuracy = pairwise_accuracy(tuned, tokenizer, test, length) if test else None
    forgetting = probe_tuned(start, probe, as_causal_lm(tuned, base, start.hw.device), tokenizer) if probe else None
    results = {"metric": "pairwise_accuracy", "split": "test" if config.data.test else "validation",
               **trainer_results(summary),
               "base_score": round(base_accuracy, 4) if base_accuracy is not None else None,
               "baseline": ("the base model's mean log-probability per token of each answer (chosen ranked above "
                            "rejected)" if base_accuracy is not None else None),
               "tuned_score": round(tuned_accuracy, 4) if tuned_accuracy is not None else None,
               "trainable_parameters": params.trainable, "total_parameters": params.total, "artifact": out.name}
    return finish_run(start, results, summary["seconds"], forgetting=forgetting)


def base_preferences(start: RunStart, base, tokenizer, test: list[PreferenceExample], length: int):
    """The base model as it is, before a reward head: how often it already gives the chosen answer the higher
    mean log-probability (as dpo scores it), and its forgetting-probe scores. An encoder has neither."""
    if not has_lm_head(base):
        return None, None
    model = load_causal_lm(base, start.hw.device)
    accuracy = (preference_scores(model, tokenizer, test, length)["accuracy"]
                if test and start.config.eval.base else None)
    probe = probe_base(start, model, tokenizer)
    del model
    return accuracy, probe
