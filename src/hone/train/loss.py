"""The causal-LM loss, computed only where it counts.

The LM head runs on loss-bearing positions only: with a 49,152-word vocabulary, full fp32 logits for
a batch of 16x128 tokens are 400 MB, and most positions of a chat (system, user) carry no loss.
The caller divides the summed loss by the trained tokens of the whole effective batch, so gradient
accumulation gives the same update as one big batch (the bug behind AX #2262, LF #7443).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from hone.data.render import IGNORE


def _unwrap(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _head_only_on_trained(model, base) -> bool:
    """True when logits are exactly lm_head(decoder(ids)): no soft-capping or scaling after the head,
    and no virtual tokens that only the peft wrapper's own forward adds (prompt/prefix tuning)."""
    config = base.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return False
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return False
    return hasattr(base, "get_decoder") and base.get_output_embeddings() is not None


def trained_logits(model, batch: dict[str, torch.Tensor], keep: torch.Tensor, head_only: bool = True) -> torch.Tensor:
    """Logits predicting the tokens where `keep` (shape of labels[:, 1:]) is true: (n_kept, vocab).

    `head_only=False` computes full-vocabulary logits for every position first (the common way; kept
    to measure what skipping them saves)."""
    base = _unwrap(model)
    if head_only and _head_only_on_trained(model, base):
        # Route through the (possibly peft-wrapped) model's modules: LoRA layers live inside them.
        hidden = base.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                                    position_ids=batch.get("position_ids"), use_cache=False).last_hidden_state
        return base.get_output_embeddings()(hidden[:, :-1][keep])
    return model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                 position_ids=batch.get("position_ids"), use_cache=False).logits[:, :-1][keep]


def summed_loss(model, batch: dict[str, torch.Tensor], head_only: bool = True,
                regularise=None) -> tuple[torch.Tensor, int]:
    """(sum of token cross-entropies, number of trained tokens) for one micro-batch.

    `regularise(model, batch, keep, logits)` adds a summed penalty on the same tokens (train/regularise.py).
    """
    labels = batch["labels"]
    targets = labels[:, 1:]
    keep = targets != IGNORE
    n_tokens = int(keep.sum())
    logits = trained_logits(model, batch, keep, head_only)
    loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
    if regularise is not None:
        loss = loss + regularise(model, batch, keep, logits)
    return loss, n_tokens
