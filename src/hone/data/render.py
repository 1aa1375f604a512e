"""Chat -> tokens with a loss mask on the assistant's words and tool calls (and the end-of-turn token).

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
from hone.data.tools import THINK_CLOSE, THINK_OPEN, assistant_text, tool_result_text, tools_system_text
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


def knows(tokenizer) -> tuple[bool, bool]:
    """(tools, reasoning): whether the model's own chat template renders `tools`/`tool_calls` and
    `reasoning_content`. Where it does not, hone's tool template (data/tools.py) writes them as text."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if not isinstance(template, str):   # a dict of named templates: the default one
        template = template.get("default", "") if isinstance(template, dict) else ""
    return ("tool_calls" in template and "tools" in template.replace("tool_calls", "")), "reasoning_content" in template


def template_messages(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> tuple[list[dict], dict]:
    """The messages the model's chat template renders, and the keyword arguments it gets (`tools=`).

    A template that knows tools gets them as they are (arguments as objects, as transformers documents);
    otherwise hone's tool template writes the tools into the system turn, calls as fenced JSON and tool
    replies as user turns. `weight` is kept for trained_spans (and dropped before rendering)."""
    native_tools, native_reasoning = knows(tokenizer)
    out: list[dict] = []
    if tools and not native_tools:
        text = tools_system_text(tools)
        if messages and messages[0]["role"] == "system":
            out.append({**messages[0], "content": f"{messages[0].get('content') or ''}\n\n{text}".lstrip()})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": text})
    for message in messages:
        clean = {k: v for k, v in message.items() if v is not None}
        calls_as_text = message["role"] == "assistant" and bool(message.get("tool_calls")) and not native_tools
        trace_as_text = bool(message.get("reasoning_content")) and not native_reasoning
        if calls_as_text or trace_as_text:
            written = {**message, "tool_calls": message.get("tool_calls") if calls_as_text else None}
            clean["content"] = assistant_text(written, with_reasoning=trace_as_text)
            for key, drop in (("tool_calls", calls_as_text), ("reasoning_content", trace_as_text)):
                if drop:
                    clean.pop(key, None)
        elif message["role"] == "tool" and not native_tools:
            if out and out[-1].get("from_tool"):   # replies in a row: one user turn, as Qwen's template does
                out[-1]["content"] += "\n" + tool_result_text(message)
                continue
            clean = {"role": "user", "content": tool_result_text(message), "from_tool": True}
        if clean.get("tool_calls"):
            clean["tool_calls"] = [_call_with_object(c) for c in clean["tool_calls"]]
        clean.setdefault("content", "")
        out.append(clean)
    return out, ({"tools": tools} if tools and native_tools else {})


def _call_with_object(call: dict) -> dict:
    function = dict(call.get("function", {}))
    if isinstance(function.get("arguments"), str):
        try:
            function["arguments"] = json.loads(function["arguments"])
        except json.JSONDecodeError:
            pass
    return {**call, "function": function}


def _apply(tokenizer, messages: list[dict], extra: dict, add_generation_prompt: bool) -> str:
    clean = [{k: v for k, v in m.items() if k not in ("weight", "from_tool")} for m in messages]
    return tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=add_generation_prompt, **extra)


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False,
           tools: list[dict] | None = None) -> str:
    """The conversation (and the tools it may call) as the model's chat template writes it."""
    converted, extra = template_messages(tokenizer, messages, tools)
    return _apply(tokenizer, converted, extra, add_generation_prompt)


def trained_spans(tokenizer, messages: list[dict], tools: list[dict] | None = None,
                  reasoning: str = "train") -> tuple[str, list[tuple[int, int]]]:
    """The full rendered text and the character spans of each trained assistant turn (calls included);
    with `reasoning="mask"` each turn's reasoning is rendered but not trained."""
    converted, extra = template_messages(tokenizer, messages, tools)
    full = _apply(tokenizer, converted, extra, False)
    eos = tokenizer.eos_token or ""
    spans = []
    for i, message in enumerate(converted):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        prefix = _apply(tokenizer, converted[:i], extra, True) if i else ""
        upto = _apply(tokenizer, converted[: i + 1], extra, False)
        if not (upto.startswith(prefix) and full.startswith(upto)):
            raise DataError(f"the chat template renders messages[{i}] differently inside and at the "
                            "end of a conversation, so the trained tokens cannot be located")
        end = len(upto)
        if eos and (stop := upto.rfind(eos)) >= len(prefix):
            end = stop + len(eos)  # train the end-of-turn token, not the newline after it
        spans.extend(_without_reasoning(full, (len(prefix), end), message, i) if reasoning == "mask"
                     else [(len(prefix), end)])
    return full, spans


def _without_reasoning(full: str, span: tuple[int, int], message: dict, i: int) -> list[tuple[int, int]]:
    """A turn's span minus its reasoning block (hone's <think> block, or the trace a template wrote)."""
    trace = message.get("reasoning_content")
    content = message.get("content") or ""
    block = trace if trace else (content[: content.index(THINK_CLOSE) + len(THINK_CLOSE)]
                                 if content.startswith(THINK_OPEN) and THINK_CLOSE in content else None)
    if not block:
        return [span]
    at = full.find(block, *span)
    if at < 0:
        raise DataError(f"data.reasoning is 'mask' but the chat template does not write the reasoning of "
                        f"messages[{i}], so it cannot be masked; use reasoning: train or drop the traces")
    return [(a, b) for a, b in ((span[0], at), (at + len(block), span[1])) if b > a]


def tokenize_chat(tokenizer, messages: list[dict], max_length: int, tools: list[dict] | None = None,
                  reasoning: str = "train") -> TokenizedExample:
    """Token ids and labels for one conversation, truncated to `max_length` tokens."""
    text, spans = trained_spans(tokenizer, messages, tools, reasoning)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    labels = [IGNORE] * len(ids)
    for t, (start, _end) in enumerate(offsets):
        if any(a <= start < b for a, b in spans):
            labels[t] = ids[t]
    truncated = len(ids) > max_length
    return TokenizedExample(ids[:max_length], labels[:max_length], truncated)


def prompt_for_generation(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> str:
    """The text a model continues to answer: the conversation (and its tools) plus the assistant header."""
    return render(tokenizer, messages, add_generation_prompt=True, tools=tools)


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
