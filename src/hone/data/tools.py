"""Function calling and reasoning in chat data: the declared tools, every call checked against them, and
hone's tool template for models whose own chat template knows no tools.

The shapes are OpenAI's (fine-tuning guide and the official client): `tools` of
`{"type": "function", "function": {name, description, parameters: JSON schema}}`, assistant `tool_calls`
of `{id, type: "function", function: {name, arguments: JSON string}}`, `tool` messages with
`tool_call_id`; the legacy `functions` / `function_call` / `function` role is read into that shape.

hone's tool template (docs/tools.md), shared by training, evaluation and serving: the tools' JSON
schemas go into the system turn; a call is a fenced JSON object under a fixed marker,

    ```tool_call
    {"name": "lookup_order", "arguments": {"order_id": "A-1001"}}
    ```

one fence per call; a tool's reply comes back as a user turn in a ```tool_result fence (as Qwen's
template sends tool replies as user turns: it works on templates that insist on user/assistant
alternation); reasoning is written before the answer between <think> and </think>.
"""
from __future__ import annotations

import json
import re
from typing import Any

from hone.data.json_values import BadJSON, loads

CALL_MARKER = "```tool_call"
CALL_OPEN, CALL_CLOSE = CALL_MARKER + "\n", "\n```"
RESULT_OPEN, RESULT_CLOSE = "```tool_result\n", "\n```"
THINK_OPEN, THINK_CLOSE = "<think>\n", "\n</think>\n\n"
TOOLS_PREAMBLE = ("You can call these functions (JSON schemas):\n{schemas}\n\nTo call one, answer with\n"
                  f"{CALL_OPEN}{{{{\"name\": <function name>, \"arguments\": <JSON object>}}}}{CALL_CLOSE}\n"
                  "(one block per call); the results come back in ```tool_result blocks.")
_CALL_BLOCK = re.compile(r"```tool_call\s*\n(.*?)(?:\n```|$)", re.S)
_HERMES_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_THINK = re.compile(r"^\s*<think>\n?(.*?)\n?</think>\s*", re.S)


def _type(value) -> str:
    names: dict[type, str] = {dict: "object", list: "list", str: "string"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# --- reading the declared tools ---

def declared_tools(check, record: dict) -> list[dict] | None:
    """The record's `tools` (or legacy `functions`) in OpenAI's shape, each schema checked; None if absent.
    A JSON string is read as its value (LLaMA-Factory's ShareGPT files and CSV cells keep tools as text)."""
    key = "tools" if record.get("tools") is not None else "functions"
    raw = record.get(key)
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        raw = check.structured(record, key, list)
    if not isinstance(raw, list):
        raise check.fail("wrong_type", f"`{key}` must be a list, got {_type(raw)}", key)
    tools, names = [], set()
    for i, tool in enumerate(raw):
        at = f"{key}[{i}]"
        function = tool.get("function") if isinstance(tool, dict) and "function" in tool else tool
        if not isinstance(function, dict):
            raise check.fail("invalid_tool", f"{at} must be an object with a `function`, got {_type(tool)}", at)
        if isinstance(tool, dict) and "function" in tool and tool.get("type", "function") != "function":
            raise check.fail("invalid_tool", f"{at}.type is {tool.get('type')!r}; only \"function\" tools exist", at)
        name = function.get("name")
        if not isinstance(name, str) or not name.strip():
            raise check.fail("invalid_tool", f"{at}.function.name must be a non-empty string", f"{at}.function.name")
        if name in names:
            raise check.fail("invalid_tool", f"{at} declares `{name}` a second time", f"{at}.function.name")
        names.add(name)
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if isinstance(parameters, str):
            parameters = check.structured(function, "parameters", dict, f"{at}.function.parameters")
        problem = schema_problem(parameters)
        if problem:
            raise check.fail("invalid_tool", f"{at}.function.parameters is not a valid JSON schema ({problem})",
                             f"{at}.function.parameters")
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise check.fail("invalid_tool", f"{at}.function.description must be a string",
                             f"{at}.function.description")
        clean = {"name": name, **({"description": description} if description else {}),
                 "parameters": parameters}
        tools.append({"type": "function", "function": clean})
    return tools


def schema_problem(schema) -> str | None:
    """Why `schema` is not a JSON schema (jsonschema's own check), or None."""
    import jsonschema

    if not isinstance(schema, dict):
        return f"an object is needed, got {_type(schema)}"
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        return exc.message
    return None


def arguments_problem(arguments: Any, schema: dict) -> str | None:
    """Why parsed `arguments` do not match a tool's parameter schema (the first error, with its path), or None."""
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    if error is None:
        return None
    path = "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in error.absolute_path)
    return f"{path + ': ' if path else ''}{error.message}"


# --- the legacy function-calling shape, read as tools ---

def from_legacy(messages: list) -> list:
    """`function_call` on assistant turns and `function` role replies (OpenAI's deprecated form) as
    `tool_calls` and `tool` messages; anything malformed is left for validation to name."""
    out, open_calls = [], []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            out.append(message)
            continue
        call = message.get("function_call")
        if message.get("role") == "assistant" and isinstance(call, dict) and "tool_calls" not in message:
            ident = f"call_{i}"
            message = {k: v for k, v in message.items() if k != "function_call"}
            message["tool_calls"] = [{"id": ident, "type": "function", "function": call}]
            open_calls.append((ident, call.get("name")))
        elif message.get("role") == "function":
            name = message.get("name")
            ident = next((c for c, n in open_calls if n == name), open_calls[0][0] if open_calls else "")
            open_calls = [(c, n) for c, n in open_calls if c != ident]
            message = {"role": "tool", "tool_call_id": ident,
                       **{k: v for k, v in message.items() if k not in ("role", "name")}}
        out.append(message)
    return out


# --- every call checked against the declared tools ---

def check_tool_use(check, messages: list[dict], tools: list[dict] | None, where: str = "messages") -> None:
    """Calls name declared tools with arguments that parse to an object matching the tool's schema, and
    every `tool` reply answers an earlier call by its id. Calls without an id get one (call_<turn>_<k>)."""
    schemas = {t["function"]["name"]: t["function"].get("parameters") for t in tools or []}
    pending: dict[str, str] = {}
    for i, message in enumerate(messages):
        at = f"{where}[{i}]"
        if message["role"] == "assistant" and message.get("tool_calls"):
            message["tool_calls"] = [dict(call) for call in message["tool_calls"]]   # the input stays as it was
            for j, call in enumerate(message["tool_calls"]):
                field = f"{at}.tool_calls[{j}]"
                ident = call.get("id")
                if ident is None:
                    ident = call["id"] = f"call_{i}_{j}"
                if not isinstance(ident, str) or not ident:
                    raise check.fail("invalid_tool_call", f"{field}.id must be a non-empty string", f"{field}.id")
                name = call["function"]["name"]
                if tools is not None and name not in schemas:
                    declared = ", ".join(schemas) or "none"
                    raise check.fail("undeclared_tool", f"{field} calls `{name}`, which `tools` does not declare "
                                     f"(declared: {declared})", f"{field}.function.name")
                arguments = loads(call["function"]["arguments"])
                if not isinstance(arguments, dict):
                    raise check.fail("invalid_tool_call", f"{field}.function.arguments must hold a JSON object, got "
                                     f"{_type(arguments)}", f"{field}.function.arguments")
                problem = arguments_problem(arguments, schemas[name]) if schemas.get(name) else None
                if problem:
                    raise check.fail("arguments_mismatch", f"{field}.function.arguments do not match the schema "
                                     f"of `{name}`: {problem}", f"{field}.function.arguments")
                pending[ident] = name
        elif message["role"] == "tool":
            ident = message.get("tool_call_id")
            if ident not in pending:
                known = ", ".join(pending) or "none open"
                raise check.fail("unknown_tool_call_id", f"{at}.tool_call_id {ident!r} answers no earlier call "
                                 f"(open calls: {known})", f"{at}.tool_call_id")
            message.setdefault("name", pending.pop(ident))


def sharegpt_calls(check, value: str, at: str, turn: int) -> list[dict]:
    """A ShareGPT `function_call` turn's value (a JSON object {name, arguments}, or a list of them) as
    OpenAI tool_calls; arguments may be an object or a JSON string."""
    try:
        parsed = loads(value)
    except BadJSON as exc:
        raise check.fail("invalid_tool_call", f"{at}.value is not valid JSON ({exc.msg})", f"{at}.value") from None
    calls = []
    for k, item in enumerate(parsed if isinstance(parsed, list) else [parsed]):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise check.fail("invalid_tool_call", f"{at}.value must be a JSON object with a `name`", f"{at}.value")
        arguments = item.get("arguments", item.get("parameters", {}))
        text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        calls.append({"id": f"call_{turn}_{k}", "type": "function",
                      "function": {"name": item["name"], "arguments": text}})
    return calls


# --- hone's tool template: what the model reads and writes when its own template knows no tools ---

def tools_system_text(tools: list[dict]) -> str:
    schemas = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
    return TOOLS_PREAMBLE.format(schemas=schemas)


def call_text(name: str, arguments: Any) -> str:
    """One call as the model writes it: the fenced JSON object (arguments as an object, compact keys order)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{CALL_OPEN}{body}{CALL_CLOSE}"


def assistant_text(message: dict, with_reasoning: bool = True) -> str:
    """An assistant turn written out in hone's template: reasoning, words, then its calls."""
    parts = []
    reasoning = message.get("reasoning_content")
    if reasoning and with_reasoning:
        parts.append(f"{THINK_OPEN}{reasoning}{THINK_CLOSE}")
    content = message.get("content") or ""
    calls = [call_text(c["function"]["name"], c["function"].get("arguments", {}))
             for c in message.get("tool_calls") or []]
    text = "\n".join([content] + calls if content else calls)
    return "".join(parts) + text


def reasoning_span(message: dict) -> str | None:
    """The reasoning block exactly as hone's template writes it (to locate it for masking)."""
    reasoning = message.get("reasoning_content")
    return f"{THINK_OPEN}{reasoning}{THINK_CLOSE}" if reasoning else None


def tool_result_text(message: dict) -> str:
    return f"{RESULT_OPEN}{message.get('content') or ''}{RESULT_CLOSE}"


# --- reading a generated answer back: reasoning, words, calls ---

def parse_answer(text: str) -> tuple[str | None, str, list[dict]]:
    """(reasoning or None, content, calls as {name, arguments}) from generated text.

    Reads hone's fenced calls, Hermes/Qwen `<tool_call>` tags, and a bare JSON object {name, arguments}
    (or {name, parameters}, Llama 3.1's) that is the whole answer. An unparsable call block stays in
    `content` (the caller sees the model's words rather than losing them)."""
    reasoning, text = split_reasoning(text)
    calls, kept = [], text
    for pattern in (_CALL_BLOCK, _HERMES_BLOCK):
        found = list(pattern.finditer(text))
        parsed = [_call_object(m.group(1)) for m in found]
        if found and all(p is not None for p in parsed):
            calls = [p for p in parsed if p is not None]
            kept = pattern.sub("", text)
            break
    if not calls and (bare := _call_object(text)) is not None:
        calls, kept = [bare], ""
    return reasoning, kept.strip(), calls


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(the <think> block's text or None, the rest) of a generated answer."""
    if (think := _THINK.match(text)):
        return think.group(1), text[think.end():]
    return None, text


def _call_object(text: str) -> dict | None:
    try:
        value = json.loads(text.strip())
    except json.JSONDecodeError:
        return None
    if not (isinstance(value, dict) and isinstance(value.get("name"), str)):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    return {"name": value["name"], "arguments": arguments}
