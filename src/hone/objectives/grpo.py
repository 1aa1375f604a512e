"""RL from a reward with GRPO (TRL GRPOTrainer), top to bottom.

load prompts (chat data: the conversation before the last assistant turn is the prompt, that turn
the reference `answer` a reward function may use) -> the reward: a Python function by dotted path
or a trained reward model (a run folder of objective reward) -> load base -> mean reward of the
base's greedy answers on test prompts -> apply the method -> train: TRL samples
`grpo.num_generations` completions per prompt and pushes up those that beat their group's mean
reward (Shao et al. 2024, DeepSeekMath) -> save -> mean reward of the tuned model -> record.

GRPO's logged loss hovers near zero by construction (group-normalised advantages); the reward is
the number to watch, and metrics.jsonl carries it for every step.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import cast

from rich.console import Console

from hone.config import RunConfig
from hone.data.load import load_records
from hone.data.records import ChatExample
from hone.data.render import with_system_prompt
from hone.data.split import hold_out
from hone.errors import ConfigError
from hone.evaluation.generate import generate_batch
from hone.methods import apply_method, count_parameters, load_base
from hone.methods.artifact import load_run_model
from hone.models.catalogue import resolve_model
from hone.models.load import load_tokenizer
from hone.objectives.lifecycle import Row, RunResult, begin_run, finish_run, probe_base, probe_tuned, save_artifact
from hone.training.hf_trainer import run_trainer, trainer_arguments, trainer_results


def load_prompts(path: Path, system_prompt: str | None) -> list[ChatExample]:
    records = cast("list[ChatExample]", load_records(path))  # objectives/checks.py checked the record type
    return with_system_prompt(records, system_prompt)


def reward_function(path: str):
    """The callable named by `package.module:function`, or a ConfigError saying what is wrong."""
    module_name, _, name = path.partition(":")
    if not module_name or not name:
        raise ConfigError(f"reward function {path!r} must look like package.module:function",
                          field="grpo.reward_function")
    try:
        module = importlib.import_module(module_name)  # the user's own code, named in the config
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for the reward function: {exc}",
                          field="grpo.reward_function") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(f"{module_name} has no function {name!r}", field="grpo.reward_function")
    return function


def reward_from_model(run: Path, device: str, max_length: int):
    """A reward function that scores prompt + completion with a trained reward model."""
    from hone.methods.heads import load_head_run
    from hone.objectives.reward import reward_ids, rewards
    from hone.objectives.rewards import completion_text

    model, tokenizer, _ = load_head_run(run, device)

    def reward_model(prompts, completions, **kwargs) -> list[float]:
        ids = [reward_ids(tokenizer, p if isinstance(p, list) else [{"role": "user", "content": p}],
                          completion_text(c), max_length) for p, c in zip(prompts, completions)]
        return rewards(model, tokenizer, ids)

    return reward_model


def mean_reward(model, tokenizer, examples: list[ChatExample], reward, max_new_tokens: int, batch_size: int) -> float:
    """Mean reward of the model's greedy answers to the examples' prompts."""
    prompts = [e.prompt_messages for e in examples]
    answers = generate_batch(model, tokenizer, prompts, max_new_tokens, batch_size)
    scores = reward(prompts=prompts, completions=[[{"role": "assistant", "content": a}] for a in answers],
                    answer=[e.answer or "" for e in examples])
    return sum(scores) / max(1, len(scores))


def to_dataset(examples: list[ChatExample]):
    from datasets import Dataset

    return Dataset.from_list([{"prompt": e.prompt_messages, "answer": e.answer or ""} for e in examples])


def run_grpo(config: RunConfig, run_dir: Path | None = None, console: Console | None = None) -> RunResult:
    """Optimise the model against a reward with GRPO; `run_dir` of an interrupted run resumes it."""
    from trl import GRPOConfig, GRPOTrainer

    console = console or Console(stderr=True)
    g = config.grpo
    # 1. Prompts (with reference answers) and the reward.
    assert config.data.train is not None  # objectives/checks.py refuses a run without it
    train = load_prompts(config.data.train, config.data.system_prompt)
    if config.data.validation:
        validation = load_prompts(config.data.validation, config.data.system_prompt)
    else:
        train, validation = hold_out(train, config.data.validation_fraction, config.train.seed)
    test = load_prompts(config.data.test, config.data.system_prompt) if config.data.test else validation
    start = begin_run(config, run_dir, console, {
        "train": str(config.data.train), "n_train": len(train), "n_validation": len(validation),
        "n_test": len(test) if config.data.test else 0})
    if g.reward_function:
        reward = reward_function(g.reward_function)
    else:
        assert g.reward_model is not None  # objectives/checks.py asks for one of the two
        reward = reward_from_model(Path(g.reward_model).expanduser(), start.hw.device, config.data.max_length)
    reward_name = g.reward_function or f"reward model {g.reward_model}"

    # 2. The base model and its mean reward before training.
    base = resolve_model(config.model.name)
    tokenizer = load_tokenizer(base)
    model = load_base(base, config.method, start.hw.device)  # qlora: NF4 as it loads
    batch = config.eval.batch_size
    base_reward = mean_reward(model, tokenizer, test, reward, g.max_completion_length, batch) if test else None
    probe = probe_base(start, model, tokenizer)  # general skills before any change (forgetting guard)

    # 3. The method.
    model = apply_method(model, config.method)
    params = count_parameters(model)
    console.print(f"  data: {len(train)} train, {len(test)} test prompts; reward: {reward_name}")
    console.print(f"  method: {config.method.name}, {params}; lr {config.lr:g}; "
                  f"{g.num_generations} completions per prompt")

    # 4. Train with TRL: each optimizer step sees batch_size completions, num_generations per prompt.
    args = trainer_arguments(GRPOConfig, config, start.run_dir, start.hw, False, num_generations=g.num_generations,
                             max_completion_length=g.max_completion_length, temperature=g.temperature,
                             beta=g.beta, generation_batch_size=config.train.batch_size)
    # apply_method returns the PreTrainedModel or PeftModel typed as the nn.Module both are
    trainer = GRPOTrainer(model=model,  # type: ignore[arg-type]
                          reward_funcs=[reward], args=args, train_dataset=to_dataset(train),
                          processing_class=tokenizer)
    summary = run_trainer(trainer, start.run_dir, config, start.resume, console)

    # 5. Save, reload, and the tuned model's mean reward on the same prompts.
    assert trainer.model is not None  # the trainer was given one
    model = trainer.model
    model.eval()
    out = save_artifact(model, tokenizer, start.run_dir, config.method)
    tuned, _ = load_run_model(start.run_dir, start.hw.device)
    tuned_reward = mean_reward(tuned, tokenizer, test, reward, g.max_completion_length, batch) if test else None
    forgetting = probe_tuned(start, probe, tuned, tokenizer)
    logged = [r["reward"] for r in trainer.state.log_history if "reward" in r]
    results = {"metric": "mean_reward", "split": "test" if config.data.test else "validation",
               "reward": reward_name, **trainer_results(summary),
               "first_train_reward": logged[0] if logged else None, "last_train_reward": logged[-1] if logged else None,
               "base_score": round(base_reward, 4) if base_reward is not None else None,
               "tuned_score": round(tuned_reward, 4) if tuned_reward is not None else None,
               "trainable_parameters": params.trainable, "total_parameters": params.total, "artifact": out.name}
    rows = [Row("training reward, first and last step", results["first_train_reward"], results["last_train_reward"])]
    return finish_run(start, results, summary["seconds"], rows=rows, forgetting=forgetting)
