"""Perplexity on held-out text: of the assistant's turns for chat data, of every token for raw text.

Per item we keep (summed negative log-likelihood, token count), so the corpus perplexity is
exp(total NLL / total tokens) — token-weighted, like a language-model evaluation — and a bootstrap
can resample items. The LM head runs only on scored positions (a 49,152-word vocabulary makes full
logits the biggest tensor by far).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from hone.data.records import ChatExample, TextExample
from hone.data.render import IGNORE, TokenizedExample, tokenize_chat
from hone.evaluation.metrics import Metric


def perplexity_metric() -> Metric:
    def aggregate(rows: np.ndarray) -> float:
        return math.exp(rows[:, 0].sum() / max(1.0, rows[:, 1].sum()))

    def item_score(rows: np.ndarray) -> np.ndarray:
        return np.exp(rows[:, 0] / np.maximum(1.0, rows[:, 1]))

    return Metric("perplexity", "exp of the mean negative log-likelihood per reference token (lower is better)",
                  aggregate, item_score, higher_is_better=False, percent=False, mean=False)


def tokenize_for_perplexity(tokenizer, example: ChatExample | TextExample, max_length: int) -> TokenizedExample:
    if isinstance(example, ChatExample):
        return tokenize_chat(tokenizer, example.messages, max_length, example.tools)
    ids = tokenizer(example.text, add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = (bos + ids)[:max_length]
    return TokenizedExample(ids, list(ids), len(bos) + len(ids) > max_length)


def head_only_on_scored(model) -> bool:
    """True when logits are exactly lm_head(decoder(ids)): no soft-capping or scaling after the head."""
    config = getattr(model, "config", None)
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return False
    return hasattr(model, "get_decoder") and model.get_output_embeddings() is not None


@torch.no_grad()
def perplexity_statistics(model, tokenizer, examples: list, max_length: int = 1024,
                          batch_size: int = 8) -> np.ndarray:
    """Rows of (summed NLL, scored tokens), one per example, in input order."""
    tokenized = [tokenize_for_perplexity(tokenizer, e, max_length) for e in examples]
    order = sorted(range(len(tokenized)), key=lambda i: len(tokenized[i].input_ids))
    rows = np.zeros((len(examples), 2))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.eval()
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(tokenized[i].input_ids) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            n = len(tokenized[i].input_ids)
            ids[row, :n] = torch.tensor(tokenized[i].input_ids)
            labels[row, :n] = torch.tensor(tokenized[i].labels)
            mask[row, :n] = 1
        ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
        targets = labels[:, 1:]
        keep = targets != IGNORE
        if head_only_on_scored(model):
            hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            logits = model.get_output_embeddings()(hidden[:, :-1][keep])
        else:
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1][keep]
        nll = F.cross_entropy(logits.float(), targets[keep], reduction="none")
        per_row = torch.zeros(len(chunk), device=device).index_add_(0, keep.nonzero()[:, 0], nll)
        for row, i in enumerate(chunk):
            rows[i] = (float(per_row[row]), float(keep[row].sum()))
    return rows
