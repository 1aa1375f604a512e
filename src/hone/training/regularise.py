"""Penalties inside the training step: KL to the base model (forgetting), KL to a teacher (distillation),
and risky learning rates.

KL-to-base adds `weight * KL(base || tuned)` summed over the trained tokens, so the tuned model is
pulled back towards the base's distribution wherever it learns (the frozen base is the teacher on the
training batch). With LoRA the teacher is the same model with its adapters disabled, so no second copy
is held; full fine-tuning loads the base once more from the folder it came from (frozen, no grads).
KL-to-teacher is the same term with another model as the reference (objectives/distill.py): the
word-level knowledge distillation of Hinton et al. 2015 at temperature 1, on the teacher's own answers
(Kim & Rush 2016 combine the two the same way).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from hone.training.loss import trained_logits

# Above these peak rates a run is likely to damage general skills. From practice (full fine-tuning is
# usually run at 1e-5 to 5e-5, LoRA at 1e-4 to 1e-3); docs/forgetting.md measures full at 5e-4 on SmolLM2.
RISKY_LR = {"full": 1e-4, "lora": 3e-3}


def lr_warning(method: str, lr: float, kl_to_base: float = 0.0, replay: float = 0.0) -> str | None:
    """A one-line warning when `lr` is risky for `method` (None when it is not)."""
    limit = RISKY_LR.get(method)
    if limit is None or lr <= limit:
        return None
    mitigated = " (kl_to_base/replay are on, which helps)" if kl_to_base or replay else (
        "; consider a lower --lr, or train.kl_to_base / train.replay")
    return (f"learning rate {lr:g} is high for {method} (above {limit:g}): the model may forget general "
            f"skills{mitigated}")


def _frozen_teacher(model):
    """The base model for full fine-tuning, loaded once from where `model` was loaded (never trained)."""
    teacher = getattr(model, "_hone_kl_teacher", None)
    if teacher is None:
        from hone.models.load import load_causal_lm

        path = model.config._name_or_path
        attention = getattr(model.config, "_attn_implementation", None)
        teacher = load_causal_lm(path, next(model.parameters()).device, attention=attention)
        teacher.requires_grad_(False)
        # Not an nn.Module attribute: the teacher must not appear in the student's parameters or state dict.
        object.__setattr__(model, "_hone_kl_teacher", teacher)
    return teacher


@torch.no_grad()
def base_logits(model, batch: dict[str, torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
    """The base model's logits on the trained positions."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            return trained_logits(model, batch, keep)
    return trained_logits(_frozen_teacher(model), batch, keep)


def summed_kl(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """KL(reference || model) summed over the rows: (n, vocab) logits each. A reference with a wider
    output layer (rows padded past the tokenizer's vocabulary) is cut to the model's width."""
    width = min(logits.shape[-1], reference.shape[-1])
    target = F.log_softmax(reference[..., :width].float(), dim=-1)
    student = F.log_softmax(logits[..., :width].float(), dim=-1)
    # kl_div(input=student, target=teacher) = sum p_teacher * (log p_teacher - log p_student)
    return F.kl_div(student, target, reduction="sum", log_target=True)


def kl_to_base(weight: float):
    """A `regularise` hook for training/loss.py's summed_loss, or None when `weight` is 0."""
    if not weight:
        return None

    def regularise(model, batch, keep, logits):
        return weight * summed_kl(logits, base_logits(model, batch, keep))

    return regularise


def kl_to_teacher(teacher, weight: float):
    """A `regularise` hook pulling the model towards a frozen `teacher`'s distribution on the trained
    tokens (the two share a vocabulary), or None when `weight` is 0."""
    if not weight:
        return None
    teacher.requires_grad_(False)

    def regularise(model, batch, keep, logits):
        with torch.no_grad():
            reference = trained_logits(teacher, batch, keep)
        return weight * summed_kl(logits, reference)

    return regularise


def both(*hooks):
    """One `regularise` hook summing the given ones (None where none is given)."""
    present = [hook for hook in hooks if hook is not None]
    if len(present) <= 1:
        return present[0] if present else None
    return lambda model, batch, keep, logits: sum(hook(model, batch, keep, logits) for hook in present)
