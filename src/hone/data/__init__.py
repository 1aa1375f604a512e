"""Data: read, validate, render into tokens with loss masks."""
