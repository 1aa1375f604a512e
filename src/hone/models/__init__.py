"""Base models: the built-in catalogue and loading."""
