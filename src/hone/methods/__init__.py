"""Adaptation methods: how much of the model changes. One small module per family, one registry."""
from __future__ import annotations

from hone.methods.artifact import artifact_folder_name, load_tuned, save_tuned
from hone.methods.count import count_parameters
from hone.methods.memory import estimate_memory
from hone.methods.probe import attach_head
from hone.methods.quantized import load_base
from hone.methods.registry import METHODS, apply_method, check_method, meta_model

__all__ = ["METHODS", "apply_method", "artifact_folder_name", "attach_head", "check_method",
           "count_parameters", "estimate_memory", "load_base", "load_tuned", "meta_model", "save_tuned"]
