"""Model and run references: `support-bot:3` (version 3 of a name), `support-bot@production` (a tag),
`support-bot` (its newest succeeded version), or a run id."""
from __future__ import annotations

import re
from dataclasses import dataclass

from hone.errors import UserError

REF = re.compile(r"^(?P<name>[^:@\s]+)(?::(?P<version>\d+)|@(?P<tag>[A-Za-z0-9_.-]+))?$")


@dataclass(frozen=True)
class Ref:
    name: str
    version: int | None = None
    tag: str | None = None

    def __str__(self) -> str:
        return self.name + (f":{self.version}" if self.version else f"@{self.tag}" if self.tag else "")


def parse_ref(text: str) -> Ref:
    match = REF.match(text.strip())
    if not match:
        raise UserError(f"{text!r} is not a run reference; use an id, NAME, NAME:VERSION or NAME@TAG")
    version = match["version"]
    return Ref(match["name"], int(version) if version else None, match["tag"])


def resolve_ref(text: str):
    """The registered Run that `text` names, or None when nothing matches."""
    from hone.registry.store import find_by_ref

    return find_by_ref(parse_ref(text))
