"""Token classification (NER: one tag per word), top to bottom.

load tagged words -> tag set from train -> align word tags to sub-word tokens -> base with a token
head -> apply the method (the head always trains) -> train with transformers' Trainer -> save ->
entity F1 and word accuracy on the test split -> record.

Alignment works with any fast tokenizer: the words are joined with spaces, and each token is mapped
to the word its first character falls in (offsets). The first token of a word carries the word's
tag; the rest of the word, and special tokens, carry no loss (-100), as in the BERT NER recipe.
A word's prediction is its first token's.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import cast

import torch
from rich.console import Console

from hone.config import RunConfig
from hone.data.load import load_records
from hone.data.records import TagExample
from hone.data.render import IGNORE
from hone.data.split import hold_out
from hone.errors import DataError
from hone.evaluation.classification import entity_f1
from hone.evaluation.generate import generate_batch
from hone.evaluation.metrics import accuracy
from hone.methods import apply_method, count_parameters
from hone.methods.heads import as_causal_lm, has_lm_head, load_head_model, load_head_run, train_new_head
from hone.models.catalogue import resolve_model
from hone.models.load import load_causal_lm, load_tokenizer
from hone.objectives.lifecycle import Row, RunResult, begin_run, finish_run, probe_base, probe_tuned, save_artifact
from hone.registry.runs import update_record
from hone.training.hf_trainer import run_trainer, trainer_arguments, trainer_results


def load_tagged(path: Path) -> list[TagExample]:
    return cast("list[TagExample]", load_records(path))  # objectives/checks.py checked the record type


def zero_shot_tags(model, tokenizer, sentences: list[list[str]], tags: list[str], batch_size: int) -> list[list[str]]:
    """A base model asked in words to tag each word: its answer read as one tag per word, in order
    (anything that is not a known tag reads as O). What the base can do before it has a token head."""
    ask = ("Tag each word of the sentence with one of these tags: {tags}. Answer with exactly one tag per "
           "word, separated by spaces, nothing else.\nSentence: {words}")
    conversations = [[{"role": "user", "content": ask.format(tags=", ".join(tags), words=" ".join(words))}]
                     for words in sentences]
    longest = max((len(words) for words in sentences), default=1)
    answers = generate_batch(model, tokenizer, conversations, 4 * longest + 8, batch_size)
    known = set(tags)
    out = []
    for words, answer in zip(sentences, answers):
        said = answer.split()
        out.append([said[i] if i < len(said) and said[i] in known else "O" for i in range(len(words))])
    return out


def first_tokens(tokenizer, words: list[str], max_length: int) -> tuple[dict, list[int | None]]:
    """Tokenize words joined by spaces; for each token, the index of the word it starts, else None."""
    text, spans, at = "", [], 0
    for word in words:
        spans.append((at, at + len(word)))
        text += word + " "
        at += len(word) + 1
    encoded = tokenizer(text.rstrip(), truncation=True, max_length=max_length, return_offsets_mapping=True)
    starts: list[int | None] = []
    seen: set[int | None] = set()
    for start, end in encoded.pop("offset_mapping"):
        if end <= start:  # special tokens have empty spans
            starts.append(None)
            continue
        start += len(text[start:end]) - len(text[start:end].lstrip())  # a token may carry the leading space
        index = next((i for i, (a, b) in enumerate(spans) if a <= start < b), None)
        starts.append(index if index is not None and index not in seen else None)
        seen.add(index)
    return encoded, starts


def encode(tokenizer, examples: list[TagExample], tags: list[str], max_length: int):
    from datasets import Dataset

    index = {tag: i for i, tag in enumerate(tags)}
    rows: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for example in examples:
        encoded, starts = first_tokens(tokenizer, example.tokens, max_length)
        rows["input_ids"].append(encoded["input_ids"])
        rows["attention_mask"].append(encoded["attention_mask"])
        rows["labels"].append([index[example.tags[w]] if w is not None else IGNORE for w in starts])
    return Dataset.from_dict(rows)


@torch.no_grad()
def predict_tags(model, tokenizer, sentences: list[list[str]], max_length: int) -> list[list[str]]:
    """A tag for every word ("O" for words cut off by truncation)."""
    model.eval()
    names = model.config.id2label
    device = next(model.parameters()).device
    out = []
    for words in sentences:
        encoded, starts = first_tokens(tokenizer, words, max_length)
        batch = {k: torch.tensor([v], device=device) for k, v in encoded.items()}
        best = model(**batch).logits[0].argmax(-1).tolist()
        tags = ["O"] * len(words)
        for position, word in enumerate(starts):
            if word is not None:
                tags[word] = names[best[position]]
        out.append(tags)
    return out


def run_ner(config: RunConfig, run_dir: Path | None = None, console: Console | None = None) -> RunResult:
    """Train a token classifier; `run_dir` of an interrupted run resumes it."""
    from transformers import DataCollatorForTokenClassification, Trainer, TrainingArguments

    console = console or Console(stderr=True)
    # 1. Data: the tag set comes from the training split.
    assert config.data.train is not None  # objectives/checks.py refuses a run without it
    train = load_tagged(config.data.train)
    if config.data.validation:
        validation = load_tagged(config.data.validation)
    else:
        train, validation = hold_out(train, config.data.validation_fraction, config.train.seed)
    test = load_tagged(config.data.test) if config.data.test else validation
    tags = sorted({t for e in train for t in e.tags})
    for example in validation + test:
        unseen = next((t for t in example.tags if t not in tags), None)
        if unseen is not None:
            raise DataError(f"tag {unseen!r} never occurs in the training data (tags: {', '.join(tags)})",
                            file=example.file, line=example.line, field="tags")
    start = begin_run(config, run_dir, console, {
        "train": str(config.data.train), "n_train": len(train), "n_validation": len(validation),
        "n_test": len(test) if config.data.test else 0, "tag_counts": dict(Counter(t for e in train for t in e.tags))})
    update_record(start.run_dir, head="token", labels=tags)

    # 2. The base as it is (zero-shot tags, general skills), then with a new token-classification head.
    base = resolve_model(config.model.name)
    tokenizer = load_tokenizer(base)
    base_tags, probe = None, None
    if has_lm_head(base):
        lm = load_causal_lm(base, start.hw.device)
        if config.eval.base:
            base_tags = zero_shot_tags(lm, tokenizer, [e.tokens for e in test], tags, config.eval.batch_size)
        probe = probe_base(start, lm, tokenizer)
        del lm
    elif config.is_set("eval.forgetting") and config.eval.forgetting:
        raise config.error(f"eval.forgetting needs a model with a language-model head; {base.spec} is an encoder",
                           "eval.forgetting")
    model = load_head_model(base, "token", tags, start.hw.device, seed=config.train.seed)
    model = apply_method(model, config.method)
    train_new_head(model)
    params = count_parameters(model)
    length = min(config.data.max_length,
                 getattr(model.config, "max_position_embeddings", None) or config.data.max_length)
    console.print(f"  data: {len(train)} train, {len(validation)} validation, {len(test)} test sentences; "
                  f"{len(tags)} tags: {', '.join(tags)}")
    console.print(f"  method: {config.method.name}, {params}; lr {config.lr:g}")

    # 3. Train.
    args = trainer_arguments(TrainingArguments, config, start.run_dir, start.hw, validation=bool(validation))
    trainer = Trainer(model=model, args=args, train_dataset=encode(tokenizer, train, tags, length),
                      eval_dataset=encode(tokenizer, validation, tags, length) if validation else None,
                      data_collator=DataCollatorForTokenClassification(tokenizer))
    summary = run_trainer(trainer, start.run_dir, config, start.resume, console)

    # 4. Save, reload what was saved, score it: entity F1 (exact span and type) and word accuracy.
    out = save_artifact(model, tokenizer, start.run_dir, config.method)
    tuned, _, _ = load_head_run(start.run_dir, start.hw.device)
    predicted = predict_tags(tuned, tokenizer, [e.tokens for e in test], length)
    gold = [e.tags for e in test]
    forgetting = probe_tuned(start, probe, as_causal_lm(tuned, base, start.hw.device), tokenizer) if probe else None
    flat = lambda sentences: [t for s in sentences for t in s]  # noqa: E731
    all_o = [["O"] * len(s) for s in gold]
    results = {"metric": "entity_f1", "split": "test" if config.data.test else "validation",
               **trainer_results(summary),
               "base_score": round(entity_f1(base_tags, gold), 4) if base_tags else None,
               "baseline": ("the base model asked in words to tag each word (zero-shot)" if base_tags else
                            "the base is an encoder: it cannot tag without a head"),
               "tuned_score": round(entity_f1(predicted, gold), 4),
               "base_word_accuracy": round(accuracy(flat(gold), flat(base_tags)), 4) if base_tags else None,
               "tuned_word_accuracy": round(accuracy(flat(gold), flat(predicted)), 4),
               "trainable_parameters": params.trainable, "total_parameters": params.total,
               "artifact": out.name}
    rows = [Row("word accuracy", results["base_word_accuracy"], results["tuned_word_accuracy"], share=True),
            Row("trivial baseline: every word tagged O (entity F1)", round(entity_f1(all_o, gold), 4), None,
                share=True)]
    return finish_run(start, results, summary["seconds"], rows=rows, forgetting=forgetting)
