"""The causal-LM loss, computed only where it counts.

The LM head runs on loss-bearing positions only: with a 49,152-word vocabulary, full fp32 logits for
a batch of 16x128 tokens are 400 MB, and most positions of a chat (system, user) carry no loss.
The caller divides the summed loss by the trained tokens of the whole effective batch, so gradient
accumulation gives the same update as one big batch (the bug behind AX #2262, LF #7443).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from hone.data.render import IGNORE


def _unwrap(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _prompt_learning(model) -> bool:
    """Prompt/prefix tuning: virtual tokens that only the peft wrapper's own forward adds."""
    peft_config = getattr(model, "active_peft_config", None)
    return peft_config is not None and getattr(peft_config, "is_prompt_learning", False)


def _head_only_on_trained(model, base) -> bool:
    """True when logits are exactly lm_head(decoder(ids)): no soft-capping or scaling after the head,
    and no virtual tokens (prompt/prefix tuning)."""
    config = base.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return False
    return not _prompt_learning(model) and hasattr(base, "get_decoder") and base.get_output_embeddings() is not None


def _can_share_prefix(model, base) -> bool:
    """A full-attention decoder whose layers keep a cache: sliding windows would drop cached positions,
    gradient checkpointing makes transformers' layers ignore the cache, virtual tokens come first."""
    config = base.config
    if _prompt_learning(model) or not hasattr(base, "get_decoder") or getattr(config, "is_encoder_decoder", False):
        return False
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or []):
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    return not any(getattr(m, "gradient_checkpointing", False) for m in base.modules())


def _shared_prefix_cache(base, ids: torch.Tensor, prefix: int):
    """Keys and values of the first `prefix` tokens (the same in every row) computed for one row and
    repeated for the batch: the rows continue from them, and every row's gradient flows back through
    the one copy (the same sums as running it per row, tested to float tolerance)."""
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache(config=base.config)
    base.get_decoder()(input_ids=ids[:1, :prefix], cache=cache, use_cache=True)
    cache.batch_repeat_interleave(ids.shape[0])
    return cache


def trained_logits(model, batch: dict[str, torch.Tensor], keep: torch.Tensor, head_only: bool = True) -> torch.Tensor:
    """Logits predicting the tokens where `keep` (shape of labels[:, 1:]) is true: (n_kept, vocab).

    A batch's "shared_prefix" (training/batches.py) is run once for all rows. `head_only=False` computes
    full-vocabulary logits for every position first (the common way; kept to measure what skipping
    them saves)."""
    sharded = model.__dict__.get("hone_sharded_logits")  # FSDP2: the same, as the root's forward (training/sharding.py)
    if sharded is not None:
        return sharded(batch, keep, head_only)
    return logits_on_trained(model, batch, keep, head_only)


def logits_on_trained(model, batch: dict, keep: torch.Tensor, head_only: bool = True,
                      whole=None) -> torch.Tensor:
    """`trained_logits` itself; `whole` runs the whole model (default: calling it)."""
    base = _unwrap(model)
    ids, prefix, cache = batch["input_ids"], batch.get("shared_prefix", 0), None
    if prefix and _can_share_prefix(model, base):
        cache = _shared_prefix_cache(base, ids, prefix)
    else:
        prefix = 0
    inputs: dict[str, Any] = {"input_ids": ids[:, prefix:], "attention_mask": batch.get("attention_mask"),
                              "position_ids": batch.get("position_ids"), "use_cache": cache is not None}
    if cache is not None:  # transformers 5.25 names it `cache` (past_key_values warns at every forward)
        inputs["cache"] = cache
    keep = keep[:, prefix:]
    if head_only and _head_only_on_trained(model, base):
        # Route through the (possibly peft-wrapped) model's modules: LoRA layers live inside them.
        hidden = base.get_decoder()(**inputs).last_hidden_state
        return base.get_output_embeddings()(hidden[:, :-1][keep])
    logits = (whole or model)(**inputs).logits
    # Prompt tuning returns logits for its virtual tokens first: keep the input's own positions.
    return logits[:, logits.shape[1] - inputs["input_ids"].shape[1]:][:, :-1][keep]


def summed_loss(model, batch: dict[str, torch.Tensor], head_only: bool = True,
                regularise=None) -> tuple[torch.Tensor, int]:
    """(sum of token cross-entropies, number of trained tokens) for one micro-batch.

    `regularise(model, batch, keep, logits)` adds a summed penalty on the same tokens (training/regularise.py).
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
