"""Adaptation methods: how much of the model changes. One function per method, one registry."""
from __future__ import annotations

from hone.methods.apply import apply_method, count_parameters

__all__ = ["apply_method", "count_parameters"]
