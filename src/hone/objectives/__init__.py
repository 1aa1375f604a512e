"""Objectives: what training optimises. Each module reads top to bottom as the whole procedure."""
