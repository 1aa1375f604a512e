"""Sequence classification (text -> one label), top to bottom.

load labelled text (or chat data with a closed answer set: the rendered conversation up to the
assistant turn is the text, the answer is the label) -> label set from train -> tokenize -> base with a
new head -> apply the method (the head always trains) -> train with transformers' Trainer -> save ->
accuracy, macro-F1 and the confusion matrix on the test split, against the majority-class baseline -> record.

An encoder such as the embedded MiniLM (`model: minilm-l6`) is the usual choice; a decoder works
too (Llama scores its last token). For label prediction a head beats generating the label: on a
balanced binary task, answer-token LoRA scored 0.70 and LoRA + a linear head 0.815 (field notes §11).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import cast

from rich.console import Console
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from hone.config import RunConfig
from hone.data.load import load_records
from hone.data.records import ChatExample, LabelExample
from hone.data.render import classifier_text, common_system_prompt, with_system_prompt
from hone.data.split import hold_out
from hone.errors import DataError
from hone.evaluation.classification import classification_scores, zero_shot_labels
from hone.methods import apply_method, count_parameters
from hone.methods.heads import (
    as_causal_lm,
    has_lm_head,
    load_head_model,
    load_head_run,
    max_tokens,
    predict,
    train_new_head,
)
from hone.models.catalogue import resolve_model
from hone.models.load import load_causal_lm, load_tokenizer
from hone.objectives.lifecycle import (
    Row,
    RunResult,
    RunStart,
    begin_run,
    finish_run,
    probe_base,
    probe_tuned,
    save_artifact,
)
from hone.registry.runs import update_record
from hone.training.hf_trainer import run_trainer, trainer_arguments, trainer_results


def load_labelled(path: Path, tokenizer, system_prompt: str | None = None) -> tuple[list[LabelExample], list]:
    """(labelled texts, the conversations a generating model is asked) of a file: labelled text, or chat
    records whose rendered prompt is the text and whose answer is the label."""
    records = load_records(path)
    if isinstance(records[0], ChatExample):  # the file's first record says what all are (objectives/checks.py)
        chats = cast("list[ChatExample]", records)
        with_system_prompt(chats, system_prompt)
        return chat_as_labels(chats, tokenizer), [r.prompt_messages for r in chats]
    labelled = cast("list[LabelExample]", records)
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return labelled, [head + [{"role": "user", "content": r.text}] for r in labelled]


def chat_as_labels(records: list[ChatExample], tokenizer) -> list[LabelExample]:
    """Chat examples as labelled text: the conversation before the last assistant turn, rendered as
    generation would see it (the head reads the assistant header's last token), and the answer as the
    label, so the classifier answers prompts in the shape the user trained and tests with."""
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


def run_classify(config: RunConfig, run_dir: Path | None = None, console: Console | None = None) -> RunResult:
    """Train a sequence classifier; `run_dir` of an interrupted run resumes it."""
    console = console or Console(stderr=True)
    base = resolve_model(config.model.name)
    tokenizer = load_tokenizer(base)
    # 1. Data: the label set comes from the training split; other splits may not add labels.
    assert config.data.train is not None  # objectives/checks.py refuses a run without it
    records = load_records(config.data.train)
    chat = isinstance(records[0], ChatExample)
    system = config.data.system_prompt or (common_system_prompt(cast("list[ChatExample]", records)) if chat else None)
    train_pairs = list(zip(*load_labelled(config.data.train, tokenizer, system)))  # (example, conversation) pairs
    if config.data.validation:
        validation_pairs = list(zip(*load_labelled(config.data.validation, tokenizer, system)))
    else:
        train_pairs, validation_pairs = hold_out(train_pairs, config.data.validation_fraction, config.train.seed)
    test_pairs = (list(zip(*load_labelled(config.data.test, tokenizer, system))) if config.data.test
                  else validation_pairs)
    asked = [conversation for _, conversation in test_pairs]
    train, validation, test = ([e for e, _ in pairs] for pairs in (train_pairs, validation_pairs, test_pairs))
    labels = sorted({e.label for e in train})
    if len(labels) < 2:
        raise DataError(f"classification needs at least two labels; training data has only {labels}",
                        file=str(config.data.train), field="label")
    check_labels(validation, labels, "validation")
    check_labels(test, labels, "test")
    start = begin_run(config, run_dir, console, {
        "train": str(config.data.train), "n_train": len(train), "n_validation": len(validation),
        "n_test": len(test) if config.data.test else 0, "label_counts": dict(Counter(e.label for e in train))})
    # prompt_format "chat": the classifier reads rendered conversations (evaluation/predict.py renders them
    # the same way).
    update_record(start.run_dir, head="sequence", labels=labels, prompt_format="chat" if chat else "text",
                  **({"system_prompt": system} if chat else {}))

    # 2. The base as it is: its zero-shot answers (generated, read as labels) and its general skills.
    references = [e.label for e in test]
    base_answers, probe = base_as_generator(start, base, tokenizer, labels, asked)

    # 3. The base with a new classification head, and the adaptation method.
    model = load_head_model(base, "sequence", labels, start.hw.device, seed=config.train.seed)
    model = apply_method(model, config.method)
    train_new_head(model)
    params = count_parameters(model)
    length = max_tokens(tokenizer, model, config.data.max_length)
    console.print(f"  data: {len(train)} train, {len(validation)} validation, {len(test)} test texts; "
                  f"{len(labels)} labels: {', '.join(labels)}")
    console.print(f"  method: {config.method.name}, {params}; lr {config.lr:g}")

    # 4. Train, validating on the held-out texts (early stopping, best weights, alarms: training/hf_trainer.py).
    args = trainer_arguments(TrainingArguments, config, start.run_dir, start.hw, validation=bool(validation))
    trainer = Trainer(model=model, args=args, train_dataset=encode(tokenizer, train, labels, length),
                      eval_dataset=encode(tokenizer, validation, labels, length) if validation else None,
                      data_collator=DataCollatorWithPadding(tokenizer))
    summary = run_trainer(trainer, start.run_dir, config, start.resume, console)

    # 5. Save, reload what was saved, and score it on the test split; then its general skills.
    out = save_artifact(model, tokenizer, start.run_dir, config.method)
    tuned, _, _ = load_head_run(start.run_dir, start.hw.device)
    predictions = predict(tuned, tokenizer, [e.text for e in test], length)
    forgetting = probe_tuned(start, probe, as_causal_lm(tuned, base, start.hw.device), tokenizer) if probe else None
    majority = Counter(e.label for e in train).most_common(1)[0][0]
    scores = classification_scores(predictions, references, labels)
    base_scores = classification_scores(base_answers, references, labels) if base_answers else None
    results = {"metric": "accuracy", "split": "test" if config.data.test else "validation",
               **trainer_results(summary), "tuned_score": scores["accuracy"],
               "base_score": base_scores["accuracy"] if base_scores else None,
               "baseline": ("the base model's generated answers, read as labels (zero-shot)" if base_scores else
                            "the base is an encoder: it cannot answer without a head"),
               **{f"tuned_{k}": v for k, v in scores.items()},
               **({f"base_{k}": v for k, v in base_scores.items()} if base_scores else {}),
               "trainable_parameters": params.trainable, "total_parameters": params.total, "artifact": out.name}
    rows = [Row("macro-F1", base_scores["macro_f1"] if base_scores else None, scores["macro_f1"], share=True),
            Row(f"trivial baseline: always {majority!r} (the most common training label)",
                classification_scores([majority] * len(test), references, labels)["accuracy"], None, share=True)]
    return finish_run(start, results, summary["seconds"], rows=rows, forgetting=forgetting)


def base_as_generator(start: RunStart, base, tokenizer, labels: list[str], asked: list | None):
    """The base model as it is, before a head is added: its zero-shot answers to the test prompts read as
    labels, and its forgetting-probe scores. An encoder has neither (None, None)."""
    if not has_lm_head(base):
        if start.config.is_set("eval.forgetting") and start.config.eval.forgetting:
            raise start.config.error(f"eval.forgetting needs a model with a language-model head; {base.name} is an "
                                     "encoder (its general skills are not measured by generation)", "eval.forgetting")
        return None, None
    model = load_causal_lm(base, start.hw.device)
    answers = None
    if asked and start.config.eval.base:
        answers = zero_shot_labels(model, tokenizer, asked, labels, start.config.eval.batch_size)
    probe = probe_base(start, model, tokenizer)
    del model
    return answers, probe
