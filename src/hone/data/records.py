"""The canonical record types: every input shape is normalised to one of these.

Loaders (data/) produce them; objectives consume them. Each record remembers the file and line it
came from, so any later problem (too long, label unseen in training) can still name its source.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ChatExample:
    """A conversation (OpenAI chat shape): SFT, and the prompt side of every chat-shaped task."""
    messages: list[dict]
    file: str = ""
    line: int = 0
    meta: dict = field(default_factory=dict)
    tools: list[dict] | None = None

    @property
    def answer(self) -> str | None:
        """The last assistant message: what a test item expects the model to say (a tool-call turn as
        hone's tool template writes it, data/tools.py; reasoning left out)."""
        from hone.data.tools import assistant_text

        for message in reversed(self.messages):
            if message["role"] == "assistant":
                if message.get("tool_calls"):
                    return assistant_text(message, with_reasoning=False)
                return message.get("content") or ""
        return None

    @property
    def prompt_messages(self) -> list[dict]:
        """The conversation before the last assistant message: what a test item asks."""
        for i in range(len(self.messages) - 1, -1, -1):
            if self.messages[i]["role"] == "assistant":
                return self.messages[:i]
        return list(self.messages)


@dataclass
class TextExample:
    """Raw text for continued pre-training (domain adaptation)."""
    text: str
    file: str = ""
    line: int = 0


@dataclass
class LabelExample:
    """Text with one label: sequence classification."""
    text: str
    label: str
    file: str = ""
    line: int = 0


@dataclass
class TagExample:
    """Tokens with one tag each: token classification (NER)."""
    tokens: list[str]
    tags: list[str]
    file: str = ""
    line: int = 0


@dataclass
class PreferenceExample:
    """A prompt (chat messages) with a preferred and a rejected assistant answer: DPO, reward models."""
    prompt: list[dict]
    chosen: str
    rejected: str
    file: str = ""
    line: int = 0


Record = ChatExample | TextExample | LabelExample | TagExample | PreferenceExample
