"""Trainable and total parameters, counted as the user thinks of them (a 4-bit weight is still one)."""
from __future__ import annotations

from dataclasses import dataclass

from hone.methods.quantized import logical_numel


@dataclass
class ParameterCount:
    trainable: int
    total: int

    def __str__(self) -> str:
        share = 100 * self.trainable / max(1, self.total)
        return f"{self.trainable:,} trainable of {self.total:,} parameters ({share:.2f}%)"


def count_parameters(model) -> ParameterCount:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ParameterCount(trainable, sum(logical_numel(p) for p in model.parameters()))
