"""Evaluation: metrics and base-vs-tuned comparison."""
