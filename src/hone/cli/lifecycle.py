"""`hone --help` by lifecycle stage: one table of which command belongs to which stage, listed in that order."""
from __future__ import annotations

import typer

# `hone --help` groups the commands by the stage of the lifecycle they serve, in this order (one table: a new
# command gets a row here, or it is listed under typer's plain "Commands").
PANELS = {
    "Data": ("data", "kb"),
    "Fine-tune": ("demo", "train", "plan", "sweep", "merge", "methods", "models", "config"),
    "Evaluate and use": ("eval", "chat", "generate", "report", "runs"),
    "Ship": ("export", "serve", "worker", "keys"),
    "After deployment": ("monitor", "feedback", "promote"),
}


class Lifecycle(typer.core.TyperGroup):
    """Lists the commands in PANELS' order, so `hone --help` reads from data to deployment."""

    def list_commands(self, ctx) -> list[str]:
        order = [name for names in PANELS.values() for name in names]
        return sorted(super().list_commands(ctx), key=lambda n: (order.index(n) if n in order else len(order), n))


def group_help(app: typer.Typer) -> None:
    """Puts each of `app`'s commands under its PANELS stage, its help's first paragraph on one line."""
    where = {name: panel for panel, names in PANELS.items() for name in names}
    for info in app.registered_commands:
        assert info.callback is not None  # every command here is a decorated function
        info.rich_help_panel = where.get(info.name or info.callback.__name__)
        # the listing shows the docstring's first paragraph as one line (rich keeps a docstring's line breaks)
        first = (info.callback.__doc__ or "").strip().split("\n\n")[0]
        info.short_help = info.short_help or " ".join(first.split())
    for group in app.registered_groups:
        group.rich_help_panel = where.get(group.name or "")
