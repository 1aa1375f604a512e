"""The shapes data comes in, recognised from a record's keys and normalised to canonical records.

Each `to_record` call validates one raw record and raises a RecordError naming the field; the
loader (load.py) decides whether that skips the record or stops the run. Chat validation accepts
what OpenAI's fine-tuning API accepts (tool calls, the `tool` role, null assistant content beside
tool calls, text-part content, `weight` 0/1 on assistant turns) and nothing looser.
"""
from __future__ import annotations

from hone.data.json_values import BadJSON, check_value, loads
from hone.data.problems import RecordError
from hone.data.records import ChatExample, LabelExample, PreferenceExample, Record, TagExample, TextExample
from hone.data.tools import check_tool_use, declared_tools, from_legacy, sharegpt_calls

ROLES = ("system", "user", "assistant", "tool")
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call", "refusal",
                "reasoning_content", "reasoning", "thinking"}
# Where assistant turns carry their reasoning: DeepSeek/vLLM's `reasoning_content`, OpenRouter's `reasoning`,
# gpt-oss's `thinking`; all read as `reasoning_content`.
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
# ShareGPT speakers as found in the wild (FastChat, LLaMA-Factory, Axolotl) -> OpenAI roles.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
                  "system": "system", "tool": "tool", "observation": "tool", "function_response": "tool",
                  "function_call": "assistant"}
# Single-turn shapes that become a user message and an assistant answer.
PAIR_SHAPES = {"prompt_completion": ("prompt", "completion"), "question_answer": ("question", "answer"),
               "input_output": ("input", "output")}
SHAPES = ("chat", "sharegpt", "alpaca", *PAIR_SHAPES, "preference", "openai_preference", "label", "tags",
          "text")
CHAT_SHAPES = ("chat", "sharegpt", "alpaca", *PAIR_SHAPES)


def detect_shape(record: dict) -> str | None:
    """The shape a record's keys say it has, or None. Order matters: the most specific keys first."""
    keys = set(record)
    if "messages" in keys:
        return "chat"
    if "conversations" in keys:
        return "sharegpt"
    if {"input", "preferred_output"} <= keys:
        return "openai_preference"
    if {"chosen", "rejected"} <= keys:
        return "preference"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    for shape, (ask, answer) in PAIR_SHAPES.items():
        if {ask, answer} <= keys:
            return shape
    if "tokens" in keys and keys & {"tags", "ner_tags"}:
        return "tags"
    if {"text", "label"} <= keys:
        return "label"
    if "text" in keys:
        return "text"
    return None


class Checker:
    """Raises RecordErrors located at one record (file, line)."""

    def __init__(self, file: str, line: int | None):
        self.file, self.line = file, line

    def fail(self, kind: str, message: str, field: str | None = None) -> RecordError:
        return RecordError(kind, message, file=self.file, line=self.line, field=field)

    def string(self, record: dict, key: str, where: str | None = None, allow_empty: bool = False) -> str:
        where = where or key
        if key not in record:
            raise self.fail("wrong_type", f"`{where}` is missing", where)
        value = record[key]
        if not isinstance(value, str):
            raise self.fail("wrong_type", f"`{where}` must be a string, got {_type(value)}", where)
        if not allow_empty and not value.strip():
            raise self.fail("missing_content", f"`{where}` is empty", where)
        return value

    def structured(self, record: dict, key: str, kind: type, where: str | None = None):
        """A list/dict field; a JSON string is accepted (CSV cells can only hold text)."""
        where = where or key
        value = record.get(key)
        if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
            try:
                value = loads(value)
            except BadJSON as exc:
                if exc.over_limit:  # JSON, but too deep or with a huge integer: not just a string
                    raise self.fail("invalid_json", f"`{where}` holds JSON Python cannot read ({exc.msg})",
                                    where) from None
            else:
                self.values(value, where)
        if not isinstance(value, kind):
            raise self.fail("wrong_type", f"`{where}` must be a {'list' if kind is list else 'object'}, "
                            f"got {_type(value)}", where)
        return value

    def values(self, value, where: str = "") -> None:
        """Refuse a value nested too deeply or text with a lone surrogate (json_values.check_value)."""
        found = check_value(value, where)
        if found:
            kind, field, message = found
            raise self.fail(kind, message, field or None)


def _type(value) -> str:
    names: dict[type, str] = {dict: "object", list: "list", str: "string"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _content_text(check: Checker, content, where: str, thinking: list[str] | None = None):
    """Message content as a string: a string, or a list of text parts joined (OpenAI parts format).
    `thinking` (assistant turns only) collects the text of `{"type": "thinking", "thinking": ...}` parts."""
    if isinstance(content, str) or content is None:
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if thinking is not None and kind == "thinking" and isinstance(part.get("thinking"), str):
                thinking.append(part["thinking"])
                continue
            if not (kind == "text" and isinstance(part.get("text"), str)):
                raise check.fail("wrong_type", f"{where}.content[{j}] must be a text part "
                                 '{"type": "text", "text": "..."}' + (' or a thinking part {"type": "thinking", '
                                                                      '"thinking": "..."}' if thinking is not None
                                                                      else ""), f"{where}.content[{j}]")
            texts.append(part["text"])
        return "".join(texts)
    raise check.fail("wrong_type", f"{where}.content must be a string, got {_type(content)}", f"{where}.content")


def _reasoning(check: Checker, message: dict, role: str, at: str, parts: list[str]) -> str | None:
    """The turn's reasoning trace: a reasoning field or thinking parts (assistant turns only)."""
    found = [k for k in REASONING_KEYS if message.get(k) is not None]
    if found and role != "assistant":
        raise check.fail("wrong_type", f"{at}.{found[0]} is only read on assistant messages", f"{at}.{found[0]}")
    texts = list(parts)
    for key in found:
        if not isinstance(message[key], str):
            raise check.fail("wrong_type", f"{at}.{key} must be a string, got {_type(message[key])}", f"{at}.{key}")
        texts.append(message[key])
    text = "\n".join(t for t in texts if t.strip())
    return text or None


def _tool_calls(check: Checker, calls, where: str) -> None:
    if not isinstance(calls, list) or not calls:
        raise check.fail("invalid_tool_call", f"{where}.tool_calls must be a non-empty list", f"{where}.tool_calls")
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        if isinstance(call, dict) and call.get("type", "function") != "function":
            raise check.fail("invalid_tool_call", f"{at}.type is {call.get('type')!r}; expected \"function\"",
                             f"{at}.type")
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise check.fail("invalid_tool_call", f"{at}.function.name must be a string", f"{at}.function.name")
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            raise check.fail("invalid_tool_call", f"{at}.function.arguments must be a JSON string, got "
                             f"{_type(arguments)}", f"{at}.function.arguments")
        try:
            loads(arguments)
        except BadJSON as exc:
            raise check.fail("invalid_tool_call", f"{at}.function.arguments is not valid JSON ({exc.msg})",
                             f"{at}.function.arguments") from None


def check_message_list(check: Checker, messages, where: str = "messages", need_assistant: bool = True) -> list[dict]:
    """Validate OpenAI chat messages; return clean copies (content as a string)."""
    if not isinstance(messages, list) or not messages:
        raise check.fail("missing_messages_list", f"expected a non-empty `{where}` list (OpenAI chat format)", where)
    clean = []
    for i, message in enumerate(messages):
        at = f"{where}[{i}]"
        if not isinstance(message, dict):
            raise check.fail("data_type", f"{at} must be an object, got {_type(message)}", at)
        if "role" not in message:
            raise check.fail("message_missing_key", f"{at} has no `role`", f"{at}.role")
        role = message["role"]
        if role not in ROLES:
            raise check.fail("unrecognized_role", f"{at}.role is {role!r}; expected system, user, assistant or tool",
                             f"{at}.role")
        extra = sorted(set(message) - MESSAGE_KEYS)
        if extra:
            raise check.fail("message_unrecognized_key", f"{at} has unrecognised key {extra[0]!r}; allowed: "
                             "role, content, name, weight, tool_calls, tool_call_id, reasoning_content",
                             f"{at}.{extra[0]}")
        calls = message.get("tool_calls") or message.get("function_call")
        if "tool_calls" in message and role == "assistant":
            _tool_calls(check, message["tool_calls"], at)
        if "content" not in message and not (role == "assistant" and calls):
            raise check.fail("message_missing_key", f"{at} has no `content`", f"{at}.content")
        thinking: list[str] = []
        content = _content_text(check, message.get("content"), at, thinking if role == "assistant" else None)
        reasoning = _reasoning(check, message, role, at, thinking)
        if content is None and role == "system":
            raise check.fail("missing_content", f"{at}.content is null; give the system message text or leave "
                             "the message out", f"{at}.content")
        if not (content and content.strip()) and role != "system" and not (role == "assistant" and calls):
            raise check.fail("missing_content", f"{at}.content is {'null' if content is None else 'empty'}",
                             f"{at}.content")
        if "name" in message and not isinstance(message["name"], str):
            raise check.fail("wrong_type", f"{at}.name must be a string, got {_type(message['name'])}", f"{at}.name")
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise check.fail("message_missing_key", f"{at} is a tool result without a `tool_call_id`",
                             f"{at}.tool_call_id")
        if "weight" in message:
            weight = message["weight"]
            if role != "assistant" or type(weight) is not int or weight not in (0, 1):
                raise check.fail("invalid_weight", f"{at}.weight is {weight!r}; weight must be 0 or 1 and only on "
                                 "assistant messages", f"{at}.weight")
        kept = {k: v for k, v in message.items() if k not in REASONING_KEYS}
        clean.append({**kept, "content": content, **({"reasoning_content": reasoning} if reasoning else {})})
    if need_assistant and not any(m["role"] == "assistant" and m.get("weight", 1) == 1 for m in clean):
        raise check.fail("example_missing_assistant_message",
                         "no assistant message (with weight 1): nothing to learn from this example", where)
    return clean


def check_messages(record: dict, file: str, line: int) -> list[dict]:
    """Validate one chat record's `messages`; return them (the API other modules call)."""
    return check_message_list(Checker(file, line), record.get("messages"))


def _sharegpt(check: Checker, record: dict, tools: list[dict] | None) -> list[dict]:
    turns = check.structured(record, "conversations", list)
    messages: list[dict] = []
    waiting: list[str] = []
    for i, turn in enumerate(turns):
        at = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise check.fail("data_type", f"{at} must be an object, got {_type(turn)}", at)
        speaker = turn.get("from", turn.get("role"))
        if speaker is None:
            raise check.fail("message_missing_key", f"{at} has no `from`", f"{at}.from")
        role = SHAREGPT_ROLES.get(str(speaker).lower())
        if role is None:
            raise check.fail("unrecognized_role", f"{at}.from is {speaker!r}; expected human, gpt or system",
                             f"{at}.from")
        value = turn.get("value", turn.get("content"))
        if not isinstance(value, str):
            raise check.fail("message_missing_key" if value is None else "wrong_type",
                             f"{at}.value must be a string, got {_type(value)}", f"{at}.value")
        if str(speaker).lower() == "function_call":   # LLaMA-Factory / Glaive: the call as a JSON object
            calls = sharegpt_calls(check, value, at, i)
            messages.append({"role": "assistant", "content": None, "tool_calls": calls})
            waiting = [c["id"] for c in calls]
            continue
        if role == "tool":   # replies answer the calls before them, in order
            messages.append({"role": "tool", "content": value, "tool_call_id": waiting.pop(0) if waiting else ""})
            continue
        messages.append({"role": role, "content": value})
    clean = check_message_list(check, messages, "conversations")
    check_tool_use(check, clean, tools, "conversations")
    return clean


def _answer(check: Checker, value, key: str) -> str:
    """A preference answer: a string, or assistant messages (the last one's content)."""
    if isinstance(value, str):
        if not value.strip():
            raise check.fail("missing_content", f"`{key}` is empty", key)
        return value
    if isinstance(value, list) and value:
        last = value[-1]
        if isinstance(last, dict) and last.get("role") == "assistant" and isinstance(last.get("content"), str):
            return last["content"]
        raise check.fail("wrong_type", f"`{key}` must end with an assistant message with string content", key)
    raise check.fail("wrong_type", f"`{key}` must be a string or a list of messages, got {_type(value)}", key)


def _preference(check: Checker, record: dict) -> PreferenceExample:
    chosen, rejected = record.get("chosen"), record.get("rejected")
    prompt = record.get("prompt")
    if prompt is None and isinstance(chosen, list) and len(chosen) > 1:
        prompt = chosen[:-1]  # conversational pairs that repeat the prompt in both answers
    if isinstance(prompt, list):
        messages = check_message_list(check, prompt, "prompt", need_assistant=False)
    else:
        messages = [{"role": "user", "content": check.string(record, "prompt")}]
    return PreferenceExample(messages, _answer(check, chosen, "chosen"), _answer(check, rejected, "rejected"),
                             check.file, check.line or 0)


def _openai_preference(check: Checker, record: dict) -> PreferenceExample:
    given = check.structured(record, "input", dict)
    messages = check_message_list(check, given.get("messages"), "input.messages", need_assistant=False)
    answers = []
    for key in ("preferred_output", "non_preferred_output"):
        output = check.structured(record, key, list)
        if len(output) != 1 or not isinstance(output[0], dict) or output[0].get("role") != "assistant":
            raise check.fail("wrong_type", f"`{key}` must hold exactly one assistant message", key)
        answers.append(check.string(output[0], "content", f"{key}[0].content"))
    return PreferenceExample(messages, answers[0], answers[1], check.file, check.line or 0)


def _label(check: Checker, record: dict) -> LabelExample:
    label = record.get("label")
    if isinstance(label, bool) or isinstance(label, (int, str)):
        text_label = str(label).lower() if isinstance(label, bool) else str(label)
    elif isinstance(label, float) and label.is_integer():
        text_label = str(int(label))
    else:
        raise check.fail("wrong_type", f"`label` must be a string or an integer, got {_type(label)}", "label")
    if not text_label.strip():
        raise check.fail("missing_content", "`label` is empty", "label")
    return LabelExample(check.string(record, "text"), text_label, check.file, check.line or 0)


def _tags(check: Checker, record: dict) -> TagExample:
    key = "tags" if "tags" in record else "ner_tags"
    tokens, tags = check.structured(record, "tokens", list), check.structured(record, key, list)
    if not tokens:
        raise check.fail("missing_content", "`tokens` is empty", "tokens")
    for name, values in (("tokens", tokens), (key, tags)):
        for i, value in enumerate(values):
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise check.fail("wrong_type", f"{name}[{i}] must be a string, got {_type(value)}", f"{name}[{i}]")
    if len(tokens) != len(tags):
        raise check.fail("length_mismatch", f"`tokens` has {len(tokens)} items but `{key}` has {len(tags)}", key)
    return TagExample([str(t) for t in tokens], [str(t) for t in tags], check.file, check.line or 0)


def is_empty(record: dict) -> bool:
    return all(value is None or value == "" or value == [] or value == {} for value in record.values())


def to_record(record: dict, shape: str, file: str, line: int | None) -> Record:
    """Validate one raw record of a known shape and normalise it to a canonical record."""
    check = Checker(file, line)
    if is_empty(record):
        raise check.fail("empty_record", "record is empty")
    check.values(record)
    if shape == "chat":
        if "weight" in record:
            raise check.fail("invalid_weight", "example-level `weight`: put weight 0/1 on assistant messages", "weight")
        raw = check.structured(record, "messages", list) if isinstance(record.get("messages"), str) \
            else record.get("messages")
        messages = check_message_list(check, from_legacy(raw) if isinstance(raw, list) else raw)
        tools = declared_tools(check, record)
        check_tool_use(check, messages, tools)
        return ChatExample(messages, file, line or 0, tools=tools)
    if shape == "sharegpt":
        tools = declared_tools(check, record)
        return ChatExample(_sharegpt(check, record, tools), file, line or 0, tools=tools)
    if shape == "alpaca":
        prompt = check.string(record, "instruction")
        extra = record.get("input") or ""
        if not isinstance(extra, str):
            raise check.fail("wrong_type", f"`input` must be a string, got {_type(extra)}", "input")
        prompt = f"{prompt}\n\n{extra}" if extra.strip() else prompt
        return ChatExample([{"role": "user", "content": prompt},
                            {"role": "assistant", "content": check.string(record, "output")}], file, line or 0)
    if shape in PAIR_SHAPES:
        ask, answer = PAIR_SHAPES[shape]
        return ChatExample([{"role": "user", "content": check.string(record, ask)},
                            {"role": "assistant", "content": check.string(record, answer)}], file, line or 0)
    if shape in ("preference", "openai_preference"):
        example = (_preference if shape == "preference" else _openai_preference)(check, record)
        if example.chosen.strip() == example.rejected.strip():
            raise check.fail("chosen_equals_rejected", "the chosen and rejected answers are identical: "
                             "nothing to prefer", "rejected")
        example.line = line or 0
        return example
    if shape == "label":
        return _label(check, record)
    if shape == "tags":
        return _tags(check, record)
    if shape == "text":
        return TextExample(check.string(record, "text"), file, line or 0)
    raise check.fail("unrecognized_shape", f"unknown format {shape!r}; expected one of {', '.join(SHAPES)}")
