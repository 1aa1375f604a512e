"""Function calling in chat requests: `tools`, `tool_choice`, `response_format`, and the answer read back
as OpenAI's `tool_calls` (whole, or streamed as deltas of the arguments string) and `reasoning_content`.

The prompt is rendered exactly as training rendered it (hone.data.render with `tools=`: the model's own
template when it knows tools, else hone's tool template). `tool_choice`:
- `auto` (the default with tools): the model answers freely; fenced calls in its text become `tool_calls`;
- `none`: the tools are left out of the prompt, so the model answers in words;
- `required` / `{"type": "function", "function": {"name": ...}}`: hone's call marker is written into the
  prompt and decoding is constrained (xgrammar, docs/decisions.md) to a JSON object
  `{"name": ..., "arguments": ...}` whose arguments match the tool's schema: they always parse and match;
- `response_format: {"type": "json_schema" | "json_object"}` uses the same constraint on the whole answer.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hone.data.render import knows, prompt_for_generation
from hone.data.tools import CALL_MARKER, CALL_OPEN, declared_tools, parse_answer, schema_problem, split_reasoning
from hone.serve.errors import APIError

ARGUMENT_PIECE = 24    # characters of the arguments string per streamed delta
_MARKERS = (CALL_MARKER, "<tool_call>")
_THINK, _THINK_END = "<think>", "</think>"


# The code of every refusal of a schema-valid `tools` / `tool_choice` / `response_format`: what the OpenAPI schema
# cannot say (a parameters object that is not a JSON schema, two tools with one name, a choice naming an
# undeclared tool, tools beside a json_schema response format).
INVALID_TOOLS = "invalid_tools"


class FunctionDef(BaseModel):
    """A tool's function, as OpenAI's chat API declares it (its name rule included)."""
    model_config = ConfigDict(extra="allow")
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="a JSON schema of the arguments object")
    strict: bool | None = None


class ToolDef(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDef


class ChosenFunction(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: ChosenFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field("response", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


def request_fields(tools: list[ToolDef] | None, tool_choice: ToolChoice | None,
                   response_format: ResponseFormat | None) -> tuple[Any, Any, Any]:
    """The typed request fields as the plain JSON plan_tools reads."""
    dump = lambda m: m.model_dump(exclude_none=True, by_alias=True)  # noqa: E731
    return ([dump(t) for t in tools] if tools else None,
            dump(tool_choice) if isinstance(tool_choice, BaseModel) else tool_choice,
            dump(response_format) if response_format is not None else None)


class _RequestCheck:
    """data/tools.py's checks report through `fail`: here a 400 naming the request field."""

    def fail(self, kind: str, message: str, field: str | None = None) -> APIError:
        return APIError(400, message, param=field, code=INVALID_TOOLS)

    def structured(self, record: dict, key: str, kind: type, where: str | None = None):
        value = record.get(key)
        if not isinstance(value, kind):
            raise self.fail("wrong_type", f"`{where or key}` must be a {'list' if kind is list else 'object'}",
                            where or key)
        return value


@dataclass
class ToolPlan:
    """What one chat request asks of the tools: how to render the prompt, how to constrain, how to answer."""
    tools: list[dict] | None = None       # rendered into the prompt (None: no tools)
    choice: str = "none"                  # auto, none, required, function (a named one), json (response_format)
    schema: dict | None = None            # the constraint on the generated text, or None
    prefill: str = ""                     # text written after the assistant header (hone's call marker)
    names: list[str] = field(default_factory=list)

    @property
    def reads_calls(self) -> bool:
        return self.choice in ("auto", "required", "function")

    def prompt(self, tokenizer, messages: list[dict]) -> str:
        native_tools, _ = knows(tokenizer)
        text = prompt_for_generation(tokenizer, messages, self.tools)
        return text + (self.prefill if not native_tools else "")


def plan_tools(tools: Any, tool_choice: Any, response_format: Any) -> ToolPlan | None:
    """The request's tool plan, or None when it asks for nothing tool-shaped; a bad field is a 400."""
    check = _RequestCheck()
    declared = declared_tools(check, {"tools": tools}) if tools else None
    names = [t["function"]["name"] for t in declared or []]
    if response_format is not None:
        schema = _response_schema(response_format)
        if schema is not None:
            if tool_choice not in (None, "none") or declared:
                raise APIError(400, "response_format json_schema cannot be combined with tools",
                               param="response_format", code=INVALID_TOOLS)
            return ToolPlan(choice="json", schema=schema)
    if declared is None:
        if tool_choice not in (None, "none", "auto"):
            raise APIError(400, "tool_choice needs `tools` to choose from", param="tool_choice", code=INVALID_TOOLS)
        return None
    choice = "auto" if tool_choice is None else tool_choice
    if choice == "none":
        return ToolPlan(None, "none", names=names)
    if choice == "auto":
        return ToolPlan(declared, "auto", names=names)
    if choice == "required":
        return ToolPlan(declared, "required", call_schema(declared), CALL_OPEN, names)
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) and choice.get("type") == "function" \
        else None
    if not isinstance(name, str):
        raise APIError(400, "tool_choice must be 'none', 'auto', 'required' or {\"type\": \"function\", "
                       "\"function\": {\"name\": ...}}", param="tool_choice")
    if name not in names:
        raise APIError(400, f"tool_choice names `{name}`, which `tools` does not declare ({', '.join(names)})",
                       param="tool_choice", code=INVALID_TOOLS)
    chosen = [t for t in declared if t["function"]["name"] == name]
    return ToolPlan(declared, "function", call_schema(chosen), CALL_OPEN, names)


def _response_schema(response_format: Any) -> dict | None:
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind != "json_schema":
        raise APIError(400, f"response_format.type {kind!r} is not one of text, json_object, json_schema",
                       param="response_format")
    schema = (response_format.get("json_schema") or {}).get("schema")
    problem = schema_problem(schema)
    if problem:
        raise APIError(400, f"response_format.json_schema.schema is not a JSON schema ({problem})",
                       param="response_format", code=INVALID_TOOLS)
    return schema


def call_schema(tools: list[dict]) -> dict:
    """The JSON schema of one call to any of `tools`: {"name": <const>, "arguments": <its parameters>}."""
    options = [{"type": "object", "properties": {"name": {"const": t["function"]["name"]},
                                                 "arguments": t["function"]["parameters"]},
                "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    return options[0] if len(options) == 1 else {"anyOf": options}


def request_message(message: dict, extra: dict) -> dict:
    """A chat message with the tool fields the template renders (an assistant's earlier calls, a tool's reply)."""
    for key in ("tool_calls", "tool_call_id", "name", "reasoning_content"):
        if extra.get(key) is not None:
            message[key] = extra[key]
    return message


# --- the answer: text read back into content, reasoning and calls ---

def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def openai_calls(calls: list[dict]) -> list[dict]:
    return [{"id": _call_id(), "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
            for c in calls]


def read_answer(plan: ToolPlan | None, text: str) -> tuple[str | None, str | None, list[dict]]:
    """(reasoning, content, calls) of a finished answer."""
    if plan is not None and plan.schema is not None and plan.choice != "json":
        try:
            value = json.loads(text)
            return None, None, [{"name": value["name"], "arguments": value["arguments"]}]
        except (json.JSONDecodeError, KeyError, TypeError):
            return None, text, []   # cut off by max_tokens before the object closed
    if plan is None or not plan.reads_calls:
        reasoning, content = split_reasoning(text)
        return reasoning, content, []
    return parse_answer(text)


def chat_message_out(plan: ToolPlan | None, text: str, finish: str | None) -> tuple[dict, str | None]:
    """The response's `message` and finish_reason for one finished choice."""
    reasoning, content, calls = read_answer(plan, text)
    message: dict = {"role": "assistant", "content": content if (content or not calls) else None, "refusal": None}
    if calls:
        message["tool_calls"] = openai_calls(calls)
        finish = "tool_calls" if finish == "stop" else finish
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return message, finish


class StreamReader:
    """One streamed choice: content deltas as they come, reasoning deltas inside <think>, and a call held
    from its marker until the answer ends, then sent as tool_calls deltas (id and name first, then the
    arguments string in pieces, as OpenAI streams them)."""

    def __init__(self, plan: ToolPlan | None):
        self.plan = plan
        self.text = ""
        self.sent = 0              # characters of `text` already sent (as content or reasoning)
        self.in_think: bool | None = None       # None: not decided yet; True inside <think>; False after or without
        self.thought = False       # a reasoning delta was sent
        self.after_think = False   # just past </think>: white space skipped
        self.held = plan is not None and plan.schema is not None and plan.choice != "json"

    def feed(self, piece: str) -> list[dict]:
        self.text += piece
        if self.held:
            return []
        deltas = []
        if self.in_think is None:
            start = self.text.lstrip()
            if len(start) < len(_THINK) and _THINK.startswith(start):
                return []
            self.in_think = start.startswith(_THINK)
            if self.in_think:
                self.sent = self.text.index(_THINK) + len(_THINK)
        if self.in_think:
            end = self.text.find(_THINK_END, self.sent)
            upto = end if end >= 0 else len(self.text) - _partial(self.text, (_THINK_END,))
            while upto > self.sent and self.text[upto - 1] == "\n":   # the newline before </think> is the tag's
                upto -= 1
            piece = self.text[self.sent:upto] if self.thought else self.text[self.sent:upto].lstrip("\n")
            if piece:
                deltas.append({"reasoning_content": piece})
                self.thought = True
            self.sent = max(self.sent, upto)
            if end < 0:
                return deltas
            self.in_think, self.sent, self.after_think = False, end + len(_THINK_END), True
        if self.after_think:   # the blank line after </think> belongs to neither part
            while self.sent < len(self.text) and self.text[self.sent] in "\n ":
                self.sent += 1
            if self.sent == len(self.text):
                return deltas
            self.after_think = False
        if self.plan is not None and self.plan.reads_calls:
            rest = self.text[self.sent:]
            if rest.lstrip().startswith("{") and not self.text[:self.sent].strip():
                self.held = True       # a bare JSON call (Llama 3.1's form) may be coming: wait for the end
                return deltas
            marks = [i for i in (rest.find(m) for m in _MARKERS) if i >= 0]
            upto = self.sent + (min(marks) if marks else len(rest) - _partial(rest, _MARKERS))
            if marks:
                self.held = True
        else:
            upto = len(self.text)
        if upto > self.sent:
            deltas.append({"content": self.text[self.sent:upto]})
            self.sent = upto
        return deltas

    def finish(self, finish: str | None) -> tuple[list[dict], str | None]:
        """The deltas still owed when the answer ends, and the finish_reason."""
        _, content, calls = read_answer(self.plan, self.text)
        deltas: list[dict] = []
        if not calls:
            rest = self.text[self.sent:]
            return ([{"content": rest}] if rest else []), finish
        if content and not self.text[:self.sent].strip():
            deltas.append({"content": content})
        for k, call in enumerate(openai_calls(calls)):
            arguments = call["function"]["arguments"]
            deltas.append({"tool_calls": [{"index": k, "id": call["id"], "type": "function",
                                           "function": {"name": call["function"]["name"], "arguments": ""}}]})
            for start in range(0, len(arguments), ARGUMENT_PIECE):
                deltas.append({"tool_calls": [{"index": k, "function":
                                               {"arguments": arguments[start:start + ARGUMENT_PIECE]}}]})
        return deltas, "tool_calls" if finish == "stop" else finish


def _partial(text: str, markers: tuple[str, ...]) -> int:
    """How many trailing characters could be the start of a marker (held back until the next piece)."""
    longest = 0
    for marker in markers:
        for k in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:k]):
                longest = k
                break
    return longest


# --- constrained decoding: xgrammar's JSON-schema grammar, one matcher per constrained row ---

@lru_cache(maxsize=4)
def _compiler(tokenizer, vocab_size: int):
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
    return xgr.GrammarCompiler(info)


class SchemaConstraint:
    """A transformers logits processor: rows with a schema may only write tokens that keep their text a
    prefix of JSON matching it (and the end-of-turn token once it is complete); other rows are untouched."""

    def __init__(self, tokenizer, vocab_size: int, schemas: dict[int, dict]):
        import xgrammar as xgr

        compiler = _compiler(tokenizer, vocab_size)
        # compact, with json.dumps' separators: the JSON reads exactly as hone's tool template writes calls
        self.matchers = {row: xgr.GrammarMatcher(compiler.compile_json_schema(
            json.dumps(schema), any_whitespace=False, separators=(", ", ": "))) for row, schema in schemas.items()}
        self.vocab_size = vocab_size
        self.started = False

    def __call__(self, input_ids, scores):
        import xgrammar as xgr

        if self.started:
            for row, matcher in self.matchers.items():
                if not matcher.is_terminated():
                    matcher.accept_token(int(input_ids[row, -1]))
        self.started = True
        rows = list(self.matchers)
        mask = xgr.allocate_token_bitmask(scores.shape[0], self.vocab_size)
        for row in rows:
            self.matchers[row].fill_next_token_bitmask(mask, row)
        xgr.apply_token_bitmask_inplace(scores, mask.to(scores.device), indices=rows)
        return scores
