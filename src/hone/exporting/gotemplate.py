"""Just enough of Go's text/template to render the Ollama TEMPLATE hone writes, to check it before shipping.

Ollama is not installable here (it is a Go binary), so the Modelfile's TEMPLATE is proved by rendering
it with this evaluator and comparing with `tokenizer.apply_chat_template` on the same conversations.
It knows only what `ollama.py` emits:

    text   {{ range $i, $_ := .Messages }} ... {{ end }}
    {{ if COND }} ... {{ else if COND }} ... {{ else }} ... {{ end }}
    {{ .Role }}  {{ .Content }}  {{ $i }}
    COND: eq A B | ne A B | and (COND) (COND)     A, B: .Field, $var, "text", 0

No `{{-` trimming and no pipelines: anything else is refused, so a template that would need them is
never called checked.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Union

from hone.errors import UserError

ACTION = re.compile(r"\{\{(.*?)\}\}", re.S)
ARGUMENT = re.compile(r'\(|\)|"(?:[^"\\]|\\.)*"|[^\s()]+')


@dataclass
class Branch:
    condition: list | None          # None: the final {{ else }}
    body: list = field(default_factory=list)


@dataclass
class If:
    branches: list[Branch]


@dataclass
class Range:
    index: str                      # "$i" (or "$_" when unused)
    over: str                       # ".Messages"
    body: list = field(default_factory=list)


Node = Union[str, list, If, Range]   # text, a value to print (parsed argument), a block


def parse(template: str) -> list:
    """The template as nodes; a construct outside the supported subset is a UserError."""
    root: list = []
    stack: list[Any] = [root]        # open bodies; If/Range objects mark where they begin
    position = 0
    for match in ACTION.finditer(template):
        if match.start() > position:
            stack[-1].append(template[position:match.start()])
        position = match.end()
        action = match.group(1)
        if action.startswith("-") or action.endswith("-"):
            raise UserError("template trimming ({{- / -}}) is not supported by hone's checker")
        words = action.split()
        if not words:
            raise UserError("empty {{ }} in template")
        if words[0] == "range":
            found = re.fullmatch(r"\s*range\s+(\$\w+)\s*,\s*\$\w+\s*:=\s*(\.\w+)\s*", action)
            if not found:
                raise UserError(f"unsupported range: {{{{{action}}}}}")
            loop = Range(found.group(1), found.group(2))
            stack[-1].append(loop)
            stack.extend([loop, loop.body])
        elif words[0] == "if":
            block = If([Branch(_arguments(action.split(None, 1)[1]))])
            stack[-1].append(block)
            stack.extend([block, block.branches[0].body])
        elif words[0] == "else":
            if len(stack) < 3 or not isinstance(stack[-2], If):
                raise UserError("{{ else }} outside an if")
            rest = action.split(None, 1)[1].strip() if len(words) > 1 else ""
            if rest and not rest.startswith("if "):
                raise UserError(f"unsupported else: {{{{{action}}}}}")
            branch = Branch(_arguments(rest[3:]) if rest else None)
            stack[-2].branches.append(branch)
            stack[-1] = branch.body
        elif words[0] == "end":
            if len(stack) < 3:
                raise UserError("{{ end }} without a block")
            del stack[-2:]
        else:
            stack[-1].append(_arguments(action))
    if len(stack) != 1:
        raise UserError("template has a block without {{ end }}")
    if position < len(template):
        root.append(template[position:])
    return root


def _arguments(text: str) -> list:
    """`eq .Role "user"` as ['eq', '.Role', '"user"']; parentheses become nested lists."""
    out: list = []
    stack = [out]
    for token in ARGUMENT.findall(text):
        if token == "(":
            stack[-1].append([])
            stack.append(stack[-1][-1])
        elif token == ")":
            stack.pop()
        else:
            stack[-1].append(token)
    if len(stack) != 1 or not out:
        raise UserError(f"cannot read template expression {text!r}")
    return out


def render(template: str, messages: list[dict]) -> str:
    """The text Ollama would build from `messages` with `template`."""
    out: list[str] = []
    _run(parse(template), {".": {"Messages": messages}}, out)
    return "".join(out)


def _run(nodes: list, scope: dict, out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, Range):
            for i, item in enumerate(_value(node.over, scope)):
                _run(node.body, {**scope, ".": item, node.index: i}, out)
        elif isinstance(node, If):
            for branch in node.branches:
                if branch.condition is None or _truth(_evaluate(branch.condition, scope)):
                    _run(branch.body, scope, out)
                    break
        else:
            value = _evaluate(node, scope)
            out.append("" if value is None else str(value))


def _evaluate(expression: list, scope: dict) -> Any:
    head, *rest = expression
    if isinstance(head, list):
        return _evaluate(head, scope)
    if head in ("eq", "ne"):
        if len(rest) != 2:
            raise UserError(f"{head} takes two arguments here, got {len(rest)}")
        same = _operand(rest[0], scope) == _operand(rest[1], scope)
        return same if head == "eq" else not same
    if head == "and":
        return all(_truth(_operand(r, scope)) for r in rest)
    if rest:
        raise UserError(f"unsupported template function {head!r}")
    return _operand(head, scope)


def _operand(token: Any, scope: dict) -> Any:
    if isinstance(token, list):
        return _evaluate(token, scope)
    return _value(token, scope)


def _value(token: str, scope: dict) -> Any:
    if token.startswith('"'):
        return json.loads(token)  # Go's escapes in a "..." literal are JSON's, for the strings emitted here
    if token.lstrip("-").isdigit():
        return int(token)
    if token.startswith("$"):
        if token not in scope:
            raise UserError(f"undefined template variable {token}")
        return scope[token]
    if token.startswith("."):
        item = scope["."]
        name = token[1:]
        if isinstance(item, dict):
            key = name if name in item else name.lower()
            return item.get(key)
        return getattr(item, name)
    raise UserError(f"unsupported template token {token!r}")


def _truth(value: Any) -> bool:
    return bool(value)
