"""Sequence classification (text -> one label), top to bottom.

load labelled text (or chat data with a closed answer set: the rendered conversation up to the
assistant turn is the text, the answer is the label) -> label set from train -> tokenize -> base with a new head -> apply the method
(the head always trains) -> train with transformers' Trainer -> save -> accuracy, macro-F1 and the
confusion matrix on the test split, against the majority-class baseline -> record.

An encoder such as the embedded MiniLM (`model: minilm-l6`) is the usual choice; a decoder works
too (Llama scores its last token). For label prediction a head beats generating the label: on a
balanced binary task, answer-token LoRA scored 0.70 and LoRA + a linear head 0.815 (field notes §11).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.console import Console

from hone.config import RunConfig
from hone.data.load import load_records
from hone.data.records import ChatExample, LabelExample
from hone.data.render import classifier_text
from hone.data.split import hold_out
from hone.errors import DataError
from hone.evaluate.classification import classification_scores
from hone.methods import apply_method, count_parameters
from hone.models.catalogue import resolve_model
from hone.models.load import load_tokenizer
from hone.objectives.checks import require_records
from hone.methods.heads import load_head_model, load_head_run, max_tokens, predict, train_new_head
from hone.objectives.record import ObjectiveResult, begin_run, finish_run, save_artifact
from hone.train.hf_trainer import run_trainer, trainer_arguments
from hone.registry.runs import update_record


def load_labelled(path: Path, tokenizer=None, system_prompt: str | None = None) -> list[LabelExample]:
    """Labelled text; chat records (given the tokenizer to render them) become prompt -> answer label."""
    return as_labels(load_records(path), path, tokenizer, system_prompt)


def as_labels(records: list, path: Path, tokenizer=None, system_prompt: str | None = None) -> list[LabelExample]:
    if isinstance(records[0], ChatExample) and tokenizer is not None:
        return chat_as_labels(records, tokenizer, system_prompt)
    require_records(records, "classify", path)
    return records


def chat_as_labels(records: list[ChatExample], tokenizer, system_prompt: str | None = None) -> list[LabelExample]:
    """Chat examples as labelled text: the conversation before the last assistant turn, rendered as
    generation would see it (the head reads the assistant header's last token), and the answer as the
    label, so the classifier answers prompts in the shape the user trained and tests with."""
    from hone.objectives.sft import with_system_prompt

    with_system_prompt(records, system_prompt)
    return [LabelExample(classifier_text(tokenizer, r.prompt_messages), (r.answer or "").strip(), r.file, r.line)
            for r in records]


def check_labels(examples: list[LabelExample], labels: list[str], split: str) -> None:
    """A label the model never saw in training cannot be predicted: name the first such line."""
    for example in examples:
        if example.label not in labels:
            raise DataError(f"label {example.label!r} in the {split} data never occurs in the training data "
                            f"(labels: {', '.join(labels)})", file=example.file, line=example.line, field="label")


def encode(tokenizer, examples: list[LabelExample], labels: list[str], max_length: int):
    from datasets import Dataset

    index = {label: i for i, label in enumerate(labels)}
    encoded = tokenizer([e.text for e in examples], truncation=True, max_length=max_length)
    return Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                              "labels": [index[e.label] for e in examples]})


def run_classify(config: RunConfig, run_dir: Path | None = None, console: Console | None = None) -> ObjectiveResult:
    """Train a sequence classifier; `run_dir` of an interrupted run resumes it."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from hone.objectives.sft import common_system_prompt

    console = console or Console(stderr=True)
    base = resolve_model(config.model.name)
    tokenizer = load_tokenizer(base)
    # 1. Data: the label set comes from the training split; other splits may not add labels.
    system = config.data.system_prompt
    records = load_records(config.data.train)
    chat = isinstance(records[0], ChatExample)
    if chat:
        system = system or common_system_prompt(records)
    train = as_labels(records, config.data.train, tokenizer, system)
    if config.data.validation:
        validation = load_labelled(config.data.validation, tokenizer, system)
    else:
        train, validation = hold_out(train, config.data.validation_fraction, config.train.seed)
    test = load_labelled(config.data.test, tokenizer, system) if config.data.test else validation
    labels = sorted({e.label for e in train})
    if len(labels) < 2:
        raise DataError(f"classification needs at least two labels; training data has only {labels}",
                        file=str(config.data.train), field="label")
    check_labels(validation, labels, "validation")
    check_labels(test, labels, "test")
    start = begin_run(config, run_dir, console, {
        "train": str(config.data.train), "n_train": len(train), "n_validation": len(validation),
        "n_test": len(test) if config.data.test else 0, "label_counts": dict(Counter(e.label for e in train))})
    # prompt_format "chat": the classifier reads rendered conversations (predict.py renders them the same way).
    update_record(start.run_dir, head="sequence", labels=labels, prompt_format="chat" if chat else "text",
                  **({"system_prompt": system} if chat else {}))

    # 2. The base with a new classification head, and the adaptation method.
    model = load_head_model(base, "sequence", labels, start.hw.device)
    model = apply_method(model, config.method)
    train_new_head(model)
    params = count_parameters(model)
    length = max_tokens(tokenizer, model, config.data.max_length)
    console.print(f"  data: {len(train)} train, {len(validation)} validation, {len(test)} test texts; "
                  f"{len(labels)} labels: {', '.join(labels)}")
    console.print(f"  method: {config.method.name}, {params}; lr {config.lr:g}")

    # 3. Train.
    args = trainer_arguments(TrainingArguments, config, start.run_dir, start.hw)
    trainer = Trainer(model=model, args=args, train_dataset=encode(tokenizer, train, labels, length),
                      data_collator=DataCollatorWithPadding(tokenizer))
    summary = run_trainer(trainer, start.run_dir, config, start.resume, console)

    # 4. Save, reload what was saved, and score it on the test split.
    out = save_artifact(model, tokenizer, start.run_dir, config.method)
    tuned, _, _ = load_head_run(start.run_dir, start.hw.device)
    predictions = predict(tuned, tokenizer, [e.text for e in test], length)
    references = [e.label for e in test]
    majority = Counter(e.label for e in train).most_common(1)[0][0]
    results = {"metric": "accuracy", "split": "test" if config.data.test else "validation",
               "steps": summary["steps"], "stopped_by": summary["stopped_by"],
               "first_loss": summary["first_loss"], "train_loss": summary["train_loss"],
               "base_score": classification_scores([majority] * len(test), references, labels)["accuracy"],
               "baseline": f"always {majority!r} (the most common training label)",
               **{f"tuned_{k}": v for k, v in classification_scores(predictions, references, labels).items()},
               "trainable_parameters": params.trainable, "total_parameters": params.total,
               "artifact": out.name}
    results["tuned_score"] = results["tuned_accuracy"]
    return finish_run(start, "classify", results, summary["seconds"])
