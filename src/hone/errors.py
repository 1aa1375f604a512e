"""Errors a user can fix. The CLI prints them on one line and exits 2; anything else is a bug."""
from __future__ import annotations


class UserError(Exception):
    """Bad input or an impossible request: the message names the file, line, field and the fix."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.file, self.line, self.field = file, line, field
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        super().__init__(where + message)


class DataError(UserError):
    """A data file cannot be read or a record is malformed."""


class ConfigError(UserError):
    """The run configuration is invalid."""


class ModelNotFound(UserError):
    """A model name or path does not resolve to weights on this machine."""


class Interrupted(Exception):
    """Training was interrupted; a checkpoint was saved at `step` (`what`: where else a run stopped, such as
    a distillation teacher's answers, and what it kept)."""

    def __init__(self, step: int, what: str | None = None):
        super().__init__(what or f"interrupted at step {step}; checkpoint saved")
        self.step = step
