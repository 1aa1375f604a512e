"""Recipe advice: read the training data once and pick objective, method and the few settings that matter.

    chat data whose answers come from a small closed set  -> classify (a head on the causal model; probe if tiny)
    text + label                                         -> classify
    raw text                                             -> pretrain
    preference pairs                                     -> dpo
    tagged tokens                                        -> ner
    any other chat or instruction data                   -> sft

Every choice comes with a one-line reason; docs/recipes.md lists the rules and the measurements behind
them. `hone plan --data FILE` prints the advice, `hone train` without --objective follows it, and
`apply_advice` fills in only what the user left unset.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hone.config import DEFAULT_LR, RunConfig
from hone.data.load import iter_records
from hone.data.problems import ValidationReport
from hone.data.records import ChatExample, LabelExample, PreferenceExample, TagExample, TextExample
from hone.errors import DataError
from hone.evaluation.metrics import parse_json_answer
from hone.methods.registry import METHODS
from hone.objectives.registry import OBJECTIVES, objectives_for
from hone.registry.lessons import lesson_for

# A closed answer set: at most this many distinct answers, each short, each seen often enough to learn.
MAX_LABELS = 50
MAX_LABEL_WORDS = 6
MIN_PER_LABEL = 3
# Below this many training examples a probe (frozen model, only the head trains) is advised: at 600
# examples a frozen probe already matched LoRA + head (0.825 vs 0.815, field notes §11).
TINY = 100
# How many examples are tokenized to learn this data's characters per token (the rest are scaled).
TOKENIZED_SAMPLE = 200
# Throughput of LoRA training of SmolLM2-135M on this machine's kind (2 idle cores, fp32 with bf16
# matmuls): 350-380 tok/s measured (field notes §11). Other models scale by parameter count, and a
# loaded machine by cores / load (the label benchmark's SFT ran 86 tok/s at load ~6 on 2 cores; this
# rule predicts 120).
MEASURED_TOKENS_PER_S = 360.0
MEASURED_PARAMETERS = 134_515_008
# benchmarks/label_task.py, the same 27 steps of 16 examples on one loaded machine: hone's loop (sft)
# 273 s, transformers' Trainer (classify, LoRA) 446 s; a probe step took 7.0 s against 16.5 s.
TRAINER_SPEED = 0.6
PROBE_SPEED = 2.4

FIELDS = ("objective", "method", "lr", "epochs", "batch_size", "max_length")


@dataclass
class DataStats:
    """What one pass over the file found."""
    path: str
    shape: str | None = None
    kind: str | None = None          # the record type's name
    n: int = 0
    skipped: int = 0
    answers: Counter = field(default_factory=Counter)   # chat: last assistant answer -> count (capped)
    labels: Counter = field(default_factory=Counter)    # text/label and tags
    long_answers: int = 0            # chat answers longer than MAX_LABEL_WORDS words
    json_answers: int = 0            # chat answers that are JSON: structured output, not labels
    chars: list[int] = field(default_factory=list)      # per example: characters the model reads
    samples: list = field(default_factory=list)         # the first TOKENIZED_SAMPLE records


@dataclass
class Advice:
    """A recipe and its reasons: `reasons[field]` is one line for each of FIELDS (and `time`)."""
    data: str
    shape: str | None
    n_examples: int
    objective: str
    method: str
    lr: float
    epochs: float
    batch_size: int
    max_length: int
    reasons: dict[str, str]
    labels: list[str] | None = None
    label_counts: dict[str, int] | None = None
    tokens_per_epoch: int = 0
    seconds: float | None = None     # estimated training time on this machine
    source: str = "advised"          # "advised": hone chose the objective; "forced": the user did
    advised_objective: str | None = None   # when forced: what the data alone would have picked
    lesson: dict | None = None       # what a sweep on this (or near) data found about the learning rate

    def to_json(self) -> dict:
        return asdict(self)

    def recipe(self) -> dict:
        """The short record kept in run.json and the registry."""
        return {"objective": self.objective, "method": self.method, "source": self.source,
                "advised_objective": self.advised_objective or self.objective, "reasons": self.reasons,
                **({"labels": self.labels} if self.labels else {})}


def read_stats(path: Path, shape: str | None = None, strict: bool = False) -> DataStats:
    """One streaming pass: counts, answer and label frequencies, lengths. `strict`: the first bad record
    raises its located error here, before the advice loads a tokenizer or converts a model."""
    stats, report = DataStats(str(path)), ValidationReport()
    for record in iter_records(Path(path), shape, strict=strict, report=report):
        stats.n += 1
        stats.kind = stats.kind or type(record).__name__
        if len(stats.samples) < TOKENIZED_SAMPLE:
            stats.samples.append(record)
        if isinstance(record, ChatExample):
            answer = (record.answer or "").strip()
            if len(answer.split()) > MAX_LABEL_WORDS:
                stats.long_answers += 1
            elif answer[:1] in "{[" and parse_json_answer(answer) is not None:
                stats.json_answers += 1
            elif answer in stats.answers or len(stats.answers) <= MAX_LABELS:
                stats.answers[answer] += 1
            stats.chars.append(sum(len(m.get("content") or "") for m in record.messages))
        elif isinstance(record, LabelExample):
            stats.labels[record.label] += 1
            stats.chars.append(len(record.text))
        elif isinstance(record, TagExample):
            stats.labels.update(record.tags)
            stats.chars.append(len(" ".join(record.tokens)))
        elif isinstance(record, PreferenceExample):
            stats.chars.append(sum(len(m.get("content") or "") for m in record.prompt)
                               + max(len(record.chosen), len(record.rejected)))
        elif isinstance(record, TextExample):
            stats.chars.append(len(record.text))
    stats.shape, stats.skipped = report.shape, report.records - report.valid
    if stats.n == 0:
        detail = f" ({report.summary_line()})" if report.problems else ""
        raise DataError(f"no valid examples in file{detail}", file=str(path))
    return stats


def closed_answer_set(stats: DataStats) -> tuple[bool, str]:
    """Do the chat answers come from a small closed set of labels? (yes/no, the one-line reason)"""
    if stats.long_answers:
        return False, (f"{stats.long_answers} of {stats.n} answers are longer than {MAX_LABEL_WORDS} words: "
                       "free-form answers")
    if stats.json_answers:
        return False, f"{stats.json_answers} of {stats.n} answers are JSON: structured output to generate"
    if len(stats.answers) > MAX_LABELS:
        return False, f"more than {MAX_LABELS} distinct answers: not a closed label set"
    if len(stats.answers) < 2:
        return False, "every answer is the same: nothing to classify"
    rare = [a for a, c in stats.answers.items() if c < MIN_PER_LABEL]
    if rare:
        return False, (f"{len(rare)} of {len(stats.answers)} distinct answers occur fewer than {MIN_PER_LABEL} times "
                       f"(e.g. {rare[0][:40]!r}): too rare to learn as labels")
    return True, (f"all {stats.n} answers come from {len(stats.answers)} short labels, each seen at least "
                  f"{MIN_PER_LABEL} times: a head that scores the labels beats generating them "
                  "(0.815 vs 0.70 on a binary task, docs/recipes.md)")


def pick_objective(stats: DataStats) -> tuple[str, str]:
    if stats.kind == "ChatExample":
        closed, why = closed_answer_set(stats)
        return ("classify", why) if closed else ("sft", f"chat/instruction data; {why}: supervised fine-tuning "
                                                        "on the assistant turns")
    if stats.kind == "LabelExample":
        return "classify", f"text with a label ({len(stats.labels)} labels): sequence classification"
    if stats.kind == "TextExample":
        return "pretrain", "raw text without answers: continued pre-training (domain adaptation)"
    if stats.kind == "PreferenceExample":
        return "dpo", "preference pairs (chosen/rejected): DPO, no reward model needed"
    if stats.kind == "TagExample":
        return "ner", f"tokens with tags ({len(stats.labels)} tags): token classification"
    raise DataError(f"cannot advise on {stats.kind} records", file=stats.path)


def honour_method(advised: str, why: str, stats: DataStats, method: str) -> tuple[str, str]:
    """The advised objective, or, when the method the user forced cannot apply to it, the first objective that
    trains on this data and that the method applies to (a user's choice outranks the advice)."""
    entry = OBJECTIVES[advised]
    if METHODS[method].applies(entry.head is not None, entry.own_loop):
        return advised, why
    record_type = next((t for o in OBJECTIVES.values() for t in o.needs if t.__name__ == stats.kind), None)
    for name in objectives_for(record_type) if record_type else []:
        other = OBJECTIVES[name]
        if name == "classify" and stats.kind == "ChatExample" and not closed_answer_set(stats)[0]:
            continue  # free-form answers are no label set
        if name != advised and other.advisable and METHODS[method].applies(other.head is not None, other.own_loop):
            return name, (f"{advised} would fit the data ({why}), but the method you chose, {method}, does not apply "
                          f"to {advised}; {name} is the best objective it applies to")
    return advised, why


def pick_method(objective: str, n: int) -> tuple[str, str]:
    if objective == "classify" and n < TINY:
        return "probe", (f"{n} examples (< {TINY}): train only the head on the frozen model; fastest and overfits "
                         "least (a frozen probe matched LoRA + head at 600 examples, docs/recipes.md)")
    return "lora", "LoRA: small, fast and mergeable; the default that runs on this machine (docs/methods.md)"


def pick_lr(objective: str, method: str, n: int) -> tuple[float, str]:
    if method == "lora" and objective in ("sft", "classify", "ner") and n <= 2000:
        return 1e-3, ("hone's measured demo recipe: LoRA at 1e-3 reached 0.88 exact match where 2e-4 reached "
                      "0.60 in the same 240 s on 800 examples (docs/recipes.md)")
    if objective == "dpo":
        return 5e-5, "preference tuning moves the policy in small steps: a quarter of LoRA's usual 2e-4"
    return DEFAULT_LR[method], f"{method}'s default rate ({DEFAULT_LR[method]:g}, `hone methods`)"


def pick_epochs(method: str, n: int) -> tuple[float, str]:
    if n < 200:
        epochs = 10 if method == "probe" else 5
        return epochs, f"{n} training examples: more passes to take enough optimizer steps"
    if n < 1000:
        return 3, f"{n} training examples: three passes"
    if n < 5000:
        return 2, f"{n} training examples: two passes are usually enough"
    return 1, f"{n} training examples: one pass; more data rarely needs more"


def example_tokens(stats: DataStats, tokenizer, objective: str) -> list[int]:
    """Tokens per example: a sample tokenized the way training will see it, the rest scaled by chars/token."""
    from hone.data.render import classifier_text, render

    templated = bool(getattr(tokenizer, "chat_template", None))
    exact = []
    for record in stats.samples:
        if isinstance(record, ChatExample):
            text = (classifier_text(tokenizer, record.prompt_messages) if objective == "classify"
                    else render(tokenizer, record.messages, tools=record.tools) if templated
                    else " ".join(m.get("content") or "" for m in record.messages))
        elif isinstance(record, LabelExample):
            text = record.text
        elif isinstance(record, TagExample):
            text = " ".join(record.tokens)
        elif isinstance(record, PreferenceExample):
            prompt = (render(tokenizer, record.prompt, add_generation_prompt=True) if templated
                      else " ".join(m.get("content") or "" for m in record.prompt))
            text = prompt + max(record.chosen, record.rejected, key=len)
        else:
            text = record.text
        exact.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    per_char = sum(exact) / max(1, sum(stats.chars[:len(exact)]))
    return exact + [max(1, round(c * per_char)) for c in stats.chars[len(exact):]]


def pick_max_length(lengths: list[int], model_limit: int | None) -> tuple[int, str]:
    ordered = sorted(lengths)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    length = min(1024, max(64, 64 * math.ceil(p99 / 64)))
    if model_limit:
        length = min(length, model_limit)
    cut = sum(n > length for n in lengths)
    return length, (f"99% of examples fit in {p99} tokens (longest {ordered[-1]}); {length} truncates "
                    f"{cut} of {len(lengths)}" + (" (the model's limit)" if model_limit == length else ""))


def estimate_seconds(tokens: int, objective: str, method: str, parameters: int | None) -> tuple[float, str]:
    """Training time from tokens, throughput measured on this kind of machine, and its current load."""
    import os

    rate = MEASURED_TOKENS_PER_S * MEASURED_PARAMETERS / max(parameters or MEASURED_PARAMETERS, 1)
    notes = ["LoRA on SmolLM2-135M ran 350-380 tok/s on 2 idle cores (docs/recipes.md), scaled by model size"]
    if objective in OBJECTIVES and not OBJECTIVES[objective].own_loop:
        rate *= TRAINER_SPEED
        notes.append(f"x{TRAINER_SPEED} on transformers' Trainer")
    if method == "probe":
        rate *= PROBE_SPEED
        notes.append(f"x{PROBE_SPEED} for a probe (frozen model)")
    cores, load = os.cpu_count() or 1, os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > cores:
        rate *= cores / load
        notes.append(f"x{cores / load:.2f} for the current load ({load:.1f} on {cores} cores)")
    return tokens / rate, f"{tokens:,} tokens at ~{rate:,.0f} tok/s ({'; '.join(notes)})"


def advise(path: Path, config: RunConfig | None = None, model: str | None = None) -> Advice:
    """Read `path` once and recommend a recipe; `config.objective` other than auto is kept (forced)."""
    from hone.methods.count import count_parameters
    from hone.methods.registry import meta_model
    from hone.models.catalogue import resolve_model
    from hone.models.load import load_tokenizer

    config = config or RunConfig()
    stats = read_stats(Path(path), config.data.format, config.data.strict)
    advised, why = pick_objective(stats)
    if config.objective == "auto" and config.is_set("method.name"):
        advised, why = honour_method(advised, why, stats, config.method.name)
    forced = config.objective not in ("auto", advised)
    objective = config.objective if forced else advised
    reasons = {"objective": f"you chose {objective} (the data alone suggests {advised}: {why})" if forced else why}
    n_train = round(stats.n * (1 - (0 if config.data.validation else config.data.validation_fraction)))
    method: str
    if "name" in config.method.model_fields_set:
        method, reasons["method"] = config.method.name, "you chose it"
    else:
        method, reasons["method"] = pick_method(objective, n_train)
    lr, reasons["lr"] = (config.train.lr, "you chose it") if config.train.lr else pick_lr(objective, method, n_train)
    lesson = swept_lr(Path(path), method)
    if lesson:
        reasons["lr"] += f"; {lesson['text']}"
    epochs, reasons["epochs"] = ((config.train.epochs, "you chose it") if "epochs" in config.train.model_fields_set
                                 else pick_epochs(method, n_train))
    if "batch_size" in config.train.model_fields_set:
        batch, reasons["batch_size"] = config.train.batch_size, "you chose it"
    else:
        batch = 16 if n_train >= 128 else 8
        reasons["batch_size"] = ("hone's demo recipe batch" if batch == 16 else
                                 f"{n_train} examples: smaller batches give more optimizer steps")

    resolved = resolve_model(model or config.model.name)
    tokenizer = load_tokenizer(resolved)
    skeleton = meta_model(resolved.path)
    parameters = count_parameters(skeleton).total
    lengths = example_tokens(stats, tokenizer, objective)
    limit = getattr(skeleton.config, "max_position_embeddings", None)
    if "max_length" in config.data.model_fields_set:
        max_length, reasons["max_length"] = config.data.max_length, "you chose it"
    else:
        max_length, reasons["max_length"] = pick_max_length(lengths, limit)
    tokens = sum(min(n, max_length) for n in lengths)
    n_tokens = round(tokens * n_train / max(1, stats.n) * epochs)
    seconds, reasons["time"] = estimate_seconds(n_tokens, objective, method, parameters)
    labels = None
    counts = stats.answers if stats.kind == "ChatExample" else stats.labels
    if objective in ("classify", "ner") and counts:
        labels = sorted(counts)
    return Advice(str(path), stats.shape, stats.n, objective, method, lr, epochs, batch, max_length, reasons,
                  labels, dict(counts.most_common()) if labels else None, tokens, seconds,
                  "forced" if forced else "advised", advised if forced else None, lesson)


def swept_lr(train: Path, method: str) -> dict | None:
    """A sweep's lesson about this data's learning rate (registry/lessons.py), with the line that tells it."""
    found = lesson_for(train, method)
    if found is None:
        return None
    lesson, similarity = found
    which = "this data" if similarity == 1.0 else f"near-identical data ({similarity:.0%} of lines shared)"
    text = (f"sweep {lesson['sweep']!r} on {which} found lr {lesson['best_lr']:.2g} best, {lesson['ratio']:g}x "
            f"the recipe's {lesson['default_lr']:g} (try --lr {lesson['best_lr']:.2g}, or its best.yaml)")
    return {key: value for key, value in lesson.items() if key != "signature"} | {"similarity": similarity,
                                                                                  "text": text}


def apply_advice(config: RunConfig, advice: Advice) -> RunConfig:
    """`config` with the advised recipe wherever the user left a field unset, and the recipe recorded."""
    data = config.model_dump(mode="json", exclude_unset=True)
    data["objective"] = advice.objective
    data.setdefault("method", {}).setdefault("name", advice.method)
    train = data.setdefault("train", {})
    train.setdefault("lr", advice.lr)
    if "max_steps" not in train:
        train.setdefault("epochs", advice.epochs)  # with a time budget, the most passes it may take
    train.setdefault("batch_size", advice.batch_size)
    train.setdefault("micro_batch_size", min(advice.batch_size, config.train.micro_batch_size))
    data.setdefault("data", {}).setdefault("max_length", advice.max_length)
    data["recipe"] = advice.recipe()
    advised = RunConfig.model_validate(data)
    advised._source, advised._text = config._source, config._text
    return advised


def fits(objective: str, kind: str | None) -> bool:
    """Can `objective` train on records of this kind (the table's `needs`; mixture reads several files)?"""
    needs = OBJECTIVES[objective].needs if objective in OBJECTIVES else ()
    return not needs or any(t.__name__ == kind for t in needs)


def advice_rows(advice: Advice) -> list[tuple[str, str, str]]:
    """(setting, value, reason) rows, in the order a reader wants them."""
    seconds = advice.seconds
    minutes = "-" if seconds is None else f"~{seconds:.0f} s" if seconds < 90 else f"~{seconds / 60:.0f} min"
    values = {"objective": advice.objective, "method": advice.method, "lr": f"{advice.lr:g}",
              "epochs": f"{advice.epochs:g}", "batch_size": str(advice.batch_size),
              "max_length": f"{advice.max_length} tokens", "time": minutes}
    rows = [(name, values[name], advice.reasons.get(name, "")) for name in (*FIELDS, "time")]
    if advice.labels:
        counts = advice.label_counts or {}
        shown = ", ".join(f"{label} ({counts.get(label, 0)})" for label in advice.labels[:12])
        more = f", … {len(advice.labels) - 12} more" if len(advice.labels) > 12 else ""
        rows.insert(1, ("labels", str(len(advice.labels)), shown + more))
    return rows


def choose_recipe(config: RunConfig, console=None) -> RunConfig:
    """Resolve `objective: auto` from the data (printing the advice), or record a forced objective."""
    from hone.errors import ConfigError, UserError

    say = console.print if console is not None else (lambda *a, **k: None)
    if config.recipe:  # already chosen (a config written by an earlier run)
        return config
    if config.objective == "auto" and config.mixture:
        recipe: dict[str, Any] = {"objective": "mixture", "method": config.method.name, "source": "advised",
                  "reasons": {"objective": "several datasets under `mixture:`"}}
        return config.model_copy(update={"objective": "mixture", "recipe": recipe})
    if config.objective == "auto":
        if config.data.train is None:
            raise ConfigError("no training data: pass --data FILE (or data.train)", field="data.train")
        advice = advise(config.data.train, config)
        say(f"[bold]hone[/bold] recipe for {config.data.train} ({advice.n_examples} examples, shape "
            f"{advice.shape}); override with --objective / --method / --lr:", highlight=False)
        for name, value, reason in advice_rows(advice):
            say(f"  {name}: [bold]{value}[/bold]  [dim]{reason}[/dim]", highlight=False)
        return apply_advice(config, advice)
    try:  # forced: record what the data alone would have picked, without changing any setting
        if config.data.train is None:
            raise UserError("no single training file")  # mixture; check_config says what is missing
        stats = read_stats(Path(config.data.train), config.data.format)
        advised, why = pick_objective(stats)
    except UserError:
        advised, why = None, ""
    if advised and not fits(config.objective, stats.kind):
        advised = None  # the objective cannot read this data at all: its own one-line error says why
    note = (f"the data suggests {advised}: {why}" if advised and advised != config.objective
            else "the data agrees" if advised else "")
    if advised and advised != config.objective:
        say(f"  [yellow]recipe: {config.objective} as you chose; {note} "
            f"(hone plan --data {config.data.train})[/yellow]", highlight=False)
    if config.data.train is not None and not config.train.lr and (lesson := swept_lr(Path(config.data.train),
                                                                                     config.method.name)):
        say(f"  [yellow]lr: {lesson['text']}[/yellow]", highlight=False)
    recipe = {"objective": config.objective, "method": config.method.name, "source": "forced",
              "advised_objective": advised, "reasons": {"objective": "you chose it" + (f"; {note}" if note else "")}}
    return config.model_copy(update={"recipe": recipe})
