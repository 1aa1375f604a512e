"""The one run configuration: typed, loaded from YAML, every field documented and overridable.

`hone config show` prints these fields with their descriptions; the CLI's `--set section.field=value`
(or just `field=value` where the name is unique) reaches any of them, and short flags cover the
common ones. Unknown keys are errors that suggest the nearest valid key.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from hone.errors import ConfigError

# The catalogue's default base (models/catalogue.py imports it from here: config is the lower floor).
DEFAULT_MODEL = "smollm2-135m-instruct"

# Learning rates from practice: adapters tolerate (and need) ~10x the rate of full fine-tuning;
# the fewer parameters a method trains, the higher its usual rate (docs/methods.md cites each source).
DEFAULT_LR = {"full": 2e-5, "freeze": 5e-5, "lora": 2e-4, "dora": 2e-4, "qlora": 2e-4, "adapters": 1e-3,
              "prompt_tuning": 3e-2, "prefix_tuning": 1e-2, "ia3": 3e-3, "bitfit": 1e-3, "probe": 1e-3}
METHOD_NAMES = Literal["full", "freeze", "lora", "dora", "qlora", "adapters", "prompt_tuning",
                       "prefix_tuning", "ia3", "bitfit", "probe"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    name: str = Field(DEFAULT_MODEL, description="Base model: catalogue name, local HF folder, .gguf file, hub id, or a tuned model: a run folder, NAME:VERSION or NAME@TAG")
    parent: Optional[str] = Field(None, description="Written by hone: the run folder whose tuned model `name` is (lineage)")
    continue_from: Optional[str] = Field(None, description="A tuned run to train further (hone train --continue: folder, NAME:VERSION, NAME@TAG): its base, method and trained weights as the start, its training data replayed, its test split kept; the run's parent")


class DataSection(Section):
    train: Optional[Path] = Field(None, description="Training data: JSONL, JSON, CSV/TSV, Parquet or a saved datasets folder, in any chat-like shape")
    validation: Optional[Path] = Field(None, description="Validation data; when absent, `validation_fraction` of train is held out")
    test: Optional[Path] = Field(None, description="Held-out test data, scored base vs tuned after training")
    validation_fraction: float = Field(0.1, ge=0.0, lt=0.5, description="Share of train held out for validation when no validation file is given")
    max_length: int = Field(1024, ge=16, description="Longest example in tokens; longer ones are truncated and counted")
    system_prompt: Optional[str] = Field(None, description="System message added to every example that has none")
    format: Optional[str] = Field(None, description="Data shape (chat, alpaca, sharegpt, prompt_completion, ...); default: detected from the keys")
    strict: bool = Field(False, description="Stop at the first bad record instead of skipping and counting bad records")
    mask_reasoning: bool = Field(False, description="Render assistant reasoning traces (reasoning_content, thinking parts) but train no loss on them; default: trained with the answer (sft only)")


class MethodSection(Section):
    name: METHOD_NAMES = Field("lora", description="Adaptation method: full, freeze, lora, dora, qlora, adapters, prompt_tuning, prefix_tuning, ia3, bitfit or probe (`hone methods` lists them)")
    lora_r: int = Field(16, ge=1, description="LoRA rank (lora, dora, qlora)")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input")
    target_modules: str = Field("all-linear", description="Modules that get LoRA/DoRA/IA3: all-linear (IA3: the model's default) or comma-separated names")
    quantize: Literal["nf4", "int8"] = Field("nf4", description="qlora: the frozen base's format, nf4 (bitsandbytes 4-bit) or int8 (torchao weight-only)")
    trainable_layers: int = Field(2, ge=1, description="freeze: train only the top N transformer blocks (and the final norm)")
    trainable_patterns: Optional[str] = Field(None, description="freeze: comma-separated regexes; parameters whose names match train (instead of trainable_layers)")
    adapter_size: int = Field(64, ge=1, description="adapters: bottleneck width of the adapter after each block's MLP")
    num_virtual_tokens: int = Field(20, ge=1, description="prompt_tuning, prefix_tuning: learned virtual tokens")


class TrainSection(Section):
    lr: Optional[float] = Field(None, gt=0, description="Peak learning rate; default per method (2e-4 lora, 2e-5 full: `hone methods` lists them)")
    epochs: float = Field(3, gt=0, description="Passes over the training data")
    max_steps: Optional[int] = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs)")
    time_budget: Optional[float] = Field(None, gt=0, description="Training wall-clock budget in seconds; warmup and schedule are spread over it")
    batch_size: int = Field(16, ge=1, description="Effective batch: examples per optimizer step")
    micro_batch_size: int = Field(16, ge=1, description="Examples per forward pass; gradient accumulation makes up batch_size")
    micro_batch_tokens: Optional[int] = Field(None, ge=1, description="Most padded tokens per forward pass (bounds activation memory); default 512 on CPU, no cap on GPU")
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="Share of training spent warming up the learning rate")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Learning-rate schedule after warmup")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm")
    seed: int = Field(42, description="Seed for initialisation, data order and dropout")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: fp32 with bf16 matmuls on CPU, bf16 on GPUs that have it")
    threads: Optional[int] = Field(None, ge=1, description="CPU threads; default picks from cores and current load")
    eval_every: Optional[int] = Field(None, ge=1, description="Validation every N steps; default once per epoch and at the end")
    save_every: Optional[int] = Field(None, ge=1, description="Checkpoint every N steps; default once per epoch")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept on disk (newest first)")
    attention: Literal["auto", "eager", "sdpa"] = Field("auto", description="Attention kernel; auto: eager on CPU for sequences up to 512 tokens (faster there), else sdpa")
    frozen_bf16: bool = Field(True, description="Frozen linear layers compute in bf16 on CPUs with native bf16; trainable parts stay fp32")
    fused_lora: bool = Field(True, description="Each LoRA layer over a bf16 frozen base runs as one fused node (same arithmetic, fewer passes over activations)")
    compile: bool = Field(False, description="torch.compile each decoder layer (one shared graph): a few % faster per step on CPU after a first compile of 64 s (5-19 s with a warm cache), so off by default there")
    group_by_length: bool = Field(True, description="Batch examples of similar length together (less padding)")
    packing: bool = Field(False, description="Lay examples end to end in rows of ~1024 tokens with per-example positions (no padding; attention never crosses examples)")
    head_on_trained_only: bool = Field(True, description="Run the output layer only where a token carries loss (no full-vocabulary logits)")
    shared_prefix: bool = Field(True, description="Compute the start every example of a micro-batch shares (a common system prompt) once, not once per example; the same loss and gradients")
    early_stopping_patience: Optional[int] = Field(3, ge=1, description="Stop after this many validations without a better validation loss (None: never)")
    early_stopping_min_delta: float = Field(0.0, ge=0.0, description="A validation loss must beat the best by more than this to count as better")
    overfit_alarm: int = Field(3, ge=1, description="Raise the overfitting alarm when training loss fell and validation loss rose this many validations in a row")
    restore_best: bool = Field(True, description="End with the validation-best weights when they beat the last step's")
    report_to: str = Field("tensorboard", description="Training curves besides metrics.jsonl: comma-separated tensorboard, wandb, mlflow, or none")
    replay: float = Field(0.0, ge=0.0, lt=1.0, description="Share of the training mix drawn from hone's general chats, or from `replay_data` (forgetting mitigation); 0 turns it off")
    replay_data: Optional[Path] = Field(None, description="Chats to replay instead of hone's general chats (hone train --continue: the parent's training data)")
    kl_to_base: float = Field(0.0, ge=0.0, description="Weight of KL(base || tuned) on the trained tokens (forgetting mitigation); 0 turns it off")
    sharding: Literal["none", "fsdp2"] = Field("none", description="With several processes (--nproc): fsdp2 shards weights, gradients and optimizer state across them (hone's loop: sft, pretrain, mixture); none replicates them")


class EvalSection(Section):
    metric: Literal["auto", "exact_match", "json_match"] = Field("auto", description="Test metric; auto picks json_match when references are JSON")
    max_new_tokens: Optional[int] = Field(None, ge=1, description="Generation limit; default from the longest reference answer")
    batch_size: int = Field(32, ge=1, description="Prompts generated together (larger batches amortise per-step overhead)")
    samples: int = Field(5, ge=0, description="Test prompts shown side by side (base, tuned, expected)")
    engine: Literal["auto", "transformers", "llamacpp"] = Field("auto", description="sft: what generates the test answers: auto (= transformers; llama.cpp measured no faster for batched evaluation), transformers, or llamacpp (the f16 GGUF; make llamacpp)")
    base: bool = Field(True, description="Also score the base model on the test data")
    forgetting: Optional[bool] = Field(None, description="Run the general-capability probe on base and tuned model; default on, off for models under 10M parameters")
    probe: Optional[Path] = Field(None, description="Forgetting probe file (JSONL: id, category, prompt, choices, answer); default hone's general-skills probe")
    max_forgetting: float = Field(5.0, ge=0.0, description="Gate: the run fails its forgetting check when probe accuracy drops by more than this many points")


class PretrainSection(Section):
    block_size: int = Field(256, ge=16, description="pretrain/mixture: raw text is packed into blocks of this many tokens")


class PreferenceSection(Section):
    beta: float = Field(0.1, gt=0, description="dpo/orpo/simpo: strength of the preference term (DPO: KL to the base)")
    simpo_gamma: float = Field(0.5, ge=0, description="simpo: target reward margin")


class GRPOSection(Section):
    reward_function: Optional[str] = Field(None, description="grpo: reward as a Python function `package.module:function`")
    reward_model: Optional[str] = Field(None, description="grpo: reward from a trained reward model (a run folder of objective reward)")
    num_generations: int = Field(4, ge=2, description="grpo: completions sampled per prompt (the group)")
    max_completion_length: int = Field(64, ge=1, description="grpo: longest sampled completion in tokens")
    temperature: float = Field(1.0, gt=0, description="grpo: sampling temperature")
    beta: float = Field(0.0, ge=0, description="grpo: KL penalty to the base model (0: none, TRL's default)")


class DistillSection(Section):
    teacher: Optional[str] = Field(None, description="distill: the model whose answers the student learns: a run (folder, id, NAME:VERSION, NAME@TAG, latest) or a model (catalogue name, HF folder, .gguf)")
    kl_weight: float = Field(0.0, ge=0, description="distill: weight of KL(teacher || student) on the answer tokens, besides the teacher's answers (needs the same vocabulary in both tokenizers; 0: answers only, the measured default, docs/distill.md)")
    max_new_tokens: Optional[int] = Field(None, ge=1, description="distill: longest teacher answer in tokens; default eval.max_new_tokens, else from the longest training answer")


class MixtureSource(Section):
    train: Path = Field(description="A training file (chat data or raw text)")
    weight: float = Field(1.0, gt=0, description="Share of the mixture (weights are normalised)")
    validation: Optional[Path] = Field(None, description="Its validation file; default a held-out share")


class RunConfig(Section):
    name: Optional[str] = Field(None, description="Run name; default from the data file")
    output: Optional[Path] = Field(None, description="Run folder; default <hone home>/runs/<run id>")
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    method: MethodSection = Field(default_factory=MethodSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    objective: str = Field("auto", description="What training optimises: auto (read the data and choose, `hone plan --data FILE` shows why) or one of `hone objectives`: sft, pretrain, mixture, classify, ner, dpo, orpo, simpo, reward, grpo, distill")
    pretrain: PretrainSection = Field(default_factory=PretrainSection)
    preference: PreferenceSection = Field(default_factory=PreferenceSection)
    grpo: GRPOSection = Field(default_factory=GRPOSection)
    distill: DistillSection = Field(default_factory=DistillSection)
    mixture: list[MixtureSource] = Field(default_factory=list, description="mixture: datasets with weights, e.g. [{train: a.jsonl, weight: 0.7}, ...]")
    recipe: Optional[dict] = Field(None, description="Written by hone: how objective and method were chosen (advised or forced) and why")

    _source: Optional[str] = PrivateAttr(None)   # the YAML file (or "command line") this came from
    _text: Optional[str] = PrivateAttr(None)

    def error(self, message: str, field: str) -> ConfigError:
        """A ConfigError about `field` that names the config file and line where it was set."""
        line = _yaml_line(self._text, tuple(field.split("."))) if self._text else None
        return ConfigError(message, file=self._source or "command line", line=line, field=field)

    def is_set(self, field: str) -> bool:
        """Did the user set `field` (a dotted path) rather than leave its default?"""
        section, _, name = field.rpartition(".")
        model = getattr(self, section) if section else self
        return name in model.model_fields_set

    @property
    def lr(self) -> float:
        """The learning rate in force: the configured one or the method's default."""
        return self.train.lr or DEFAULT_LR[self.method.name]


def field_paths() -> dict[str, tuple[str, Any]]:
    """Every configurable field as 'section.field' -> (description, default)."""
    paths: dict[str, tuple[str, Any]] = {}
    for name, info in RunConfig.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            for sub, sub_info in annotation.model_fields.items():
                paths[f"{name}.{sub}"] = (sub_info.description or "", sub_info.default)
        else:
            paths[name] = (info.description or "", info.default)
    return paths


def _suggest(key: str, paths: list[str] | None = None) -> str:
    paths = paths or list(field_paths())
    close = difflib.get_close_matches(key, paths, n=1, cutoff=0.6)
    if not close:
        leaves = {p.split(".")[-1]: p for p in paths}
        leaf = difflib.get_close_matches(key.split(".")[-1], list(leaves), n=1)
        close = [leaves[leaf[0]]] if leaf else []
    return f"; did you mean {close[0]!r}?" if close else ""


def _yaml_line(text: str, loc: tuple) -> int | None:
    """1-based line of the key at `loc` in a YAML document, for error messages."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == str(part):
                line, node = key_node.start_mark.line + 1, value_node
                break
        else:
            break
    return line


def build_config(data: dict[str, Any], source: str = "config", text: str | None = None) -> RunConfig:
    """Validate a nested dict into a RunConfig, turning pydantic's errors into one-line ConfigErrors."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        line = _yaml_line(text, err["loc"]) if text else None
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"unknown key {key!r}{_suggest(key)}", file=source, line=line,
                              field=key) from None
        raise ConfigError(f"{key}: {err['msg']} (got {err.get('input')!r})", file=source, line=line,
                          field=key) from None


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load YAML (optional), apply dotted overrides, validate."""
    data: dict[str, Any] = {}
    text = None
    source = str(path) if path else "command line"
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
            data = yaml.safe_load(text) or {}
        except FileNotFoundError:
            raise ConfigError("config file not found", file=str(path)) from None
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            raise ConfigError(f"invalid YAML: {getattr(exc, 'problem', exc)}", file=str(path),
                              line=line + 1 if line is not None else None) from None
        if not isinstance(data, dict):
            raise ConfigError("expected a mapping of sections (model, data, method, train, eval)", file=str(path))
    for key, value in (overrides or {}).items():
        set_dotted(data, resolve_key(key), value)
    config = build_config(data, source, text)
    config._source, config._text = source, text
    return config


def resolve_key(key: str) -> str:
    """'lr' -> 'train.lr' when the leaf name is unique; 'train.lr' stays; unknown keys fail."""
    paths = field_paths()
    if key in paths:
        return key
    matches = [p for p in paths if p.split(".")[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(f"key {key!r} is ambiguous: {', '.join(matches)}", file="command line")
    raise ConfigError(f"unknown key {key!r}{_suggest(key)}", file="command line")


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


# The flags `hone train` and `hone.train(...)` share, and the config field each one sets.
TRAIN_FLAGS = {
    "data": "data.train", "validation": "data.validation", "test": "data.test", "format": "data.format",
    "strict": "data.strict", "system_prompt": "data.system_prompt", "model": "model.name", "method": "method.name",
    "objective": "objective", "lr": "train.lr", "epochs": "train.epochs", "max_steps": "train.max_steps",
    "batch_size": "train.batch_size", "time_budget": "train.time_budget", "save_steps": "train.save_every",
    "seed": "train.seed", "output": "output", "name": "name", "teacher": "distill.teacher",
    "continue_from": "model.continue_from",
}


def overrides(sets: list[str] | None = None, **flags: Any) -> dict[str, Any]:
    """Dotted config overrides from named flags (`data=`, `lr=`, ... as in TRAIN_FLAGS, or a dotted path
    written with `__`, e.g. `train__warmup_ratio=0.1`) and `--set key=value` strings; None means unset."""
    values: dict[str, Any] = {}
    for flag, value in flags.items():
        if value is None:
            continue
        key = TRAIN_FLAGS.get(flag) or (flag.replace("__", ".") if "__" in flag or "." in flag else None)
        if key is None:
            raise ConfigError(f"unknown setting {flag!r}{_suggest(flag, list(TRAIN_FLAGS))}; any config field "
                              "can be given as section__field=value", file="arguments", field=flag)
        values[key] = str(value) if isinstance(value, Path) else value
    for text in sets or []:
        key, value = parse_assignment(text)
        values[key] = value
    return values


def parse_assignment(text: str) -> tuple[str, Any]:
    """'train.lr=1e-4' -> ('train.lr', 0.0001): values are read as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}", file="command line")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
