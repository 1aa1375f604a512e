"""Chat -> tokens with a loss mask on the assistant's words (and the end-of-turn token).

Template-agnostic: the mask comes from rendering growing prefixes of the conversation with the
model's own chat template and mapping character spans to tokens through offsets. SmolLM2's template
has no `{% generation %}` markers, so TRL's `assistant_only_loss` refuses it; this works on any
template whose render of a prefix is a prefix of the full render (checked, with a clear error).
The end-of-turn token is trained too, or the tuned model never stops (TRL #2059, #1623).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from hone.data.records import ChatExample
from hone.errors import DataError

IGNORE = -100


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]          # IGNORE where the token is not trained
    truncated: bool = False

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as the model's chat template writes it."""
    knows_tools = "tool_calls" in (tokenizer.chat_template or "")
    clean = [_for_template(m, knows_tools) for m in messages]
    return tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=add_generation_prompt)


def _for_template(message: dict, knows_tools: bool) -> dict:
    """A message a template can render: text content, never null.

    transformers drops a null `content` before rendering, so templates that read `message['content']`
    (SmolLM2's does) fail with jinja2's UndefinedError on an OpenAI tool-call turn. On a template that
    does not know `tool_calls`, the calls are written into the text as JSON, so they are trained and
    seen rather than silently dropped.
    """
    clean = {k: v for k, v in message.items() if k != "weight"}
    content = clean.get("content") or ""
    calls = clean.get("tool_calls")
    if calls and not knows_tools:
        written = json.dumps([c.get("function", c) if isinstance(c, dict) else c for c in calls], ensure_ascii=False)
        content = f"{content}\n{written}" if content else written
    clean["content"] = content
    return clean


def trained_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The full rendered text and the character spans of each trained assistant turn."""
    full = render(tokenizer, messages)
    eos = tokenizer.eos_token or ""
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        prefix = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = render(tokenizer, messages[: i + 1])
        if not (upto.startswith(prefix) and full.startswith(upto)):
            raise DataError(f"the chat template renders messages[{i}] differently inside and at the "
                            "end of a conversation, so the trained tokens cannot be located")
        end = len(upto)
        if eos and (stop := upto.rfind(eos)) >= len(prefix):
            end = stop + len(eos)  # train the end-of-turn token, not the newline after it
        spans.append((len(prefix), end))
    return full, spans


def tokenize_chat(tokenizer, messages: list[dict], max_length: int) -> TokenizedExample:
    """Token ids and labels for one conversation, truncated to `max_length` tokens."""
    text, spans = trained_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    labels = [IGNORE] * len(ids)
    for t, (start, _end) in enumerate(offsets):
        if any(a <= start < b for a, b in spans):
            labels[t] = ids[t]
    truncated = len(ids) > max_length
    return TokenizedExample(ids[:max_length], labels[:max_length], truncated)


def prompt_for_generation(tokenizer, messages: list[dict]) -> str:
    """The text a model continues to answer: the conversation plus the assistant header."""
    return render(tokenizer, messages, add_generation_prompt=True)


def show_mask(tokenizer, example: TokenizedExample) -> str:
    """The example as text with trained tokens in [[double brackets]], for eyeballing a mask."""
    out, inside = [], False
    for token, label in zip(example.input_ids, example.labels):
        trained = label != IGNORE
        if trained != inside:
            out.append("[[" if trained else "]]")
            inside = trained
        out.append(tokenizer.decode([token]))
    return "".join(out) + ("]]" if inside else "")


def classifier_text(tokenizer, messages: list[dict]) -> str:
    """What a classifier trained from chat data reads: the rendered prompt, or (a model without a chat
    template, such as an encoder) the user's last message."""
    if getattr(tokenizer, "chat_template", None):
        return prompt_for_generation(tokenizer, messages)
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def with_system_prompt(examples: list[ChatExample], system_prompt: str | None) -> list[ChatExample]:
    if not system_prompt:
        return examples
    for example in examples:
        if example.messages[0]["role"] != "system":
            example.messages.insert(0, {"role": "system", "content": system_prompt})
    return examples


def common_system_prompt(examples: list[ChatExample]) -> str | None:
    """The system message nearly every training example starts with: chat and generate default to it,
    so the tuned model is asked the way it was taught."""
    firsts = Counter(e.messages[0]["content"] for e in examples if e.messages[0]["role"] == "system")
    if firsts:
        text, count = firsts.most_common(1)[0]
        if count >= 0.9 * len(examples):
            return text
    return None
