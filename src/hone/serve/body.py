"""A check of JSON request bodies that pydantic does not make: every string must be Unicode text.

JSON's `\\ud800` escape decodes to a lone surrogate, a str Python holds but UTF-8 cannot carry: the
tokenizer, SQLite and the response encoder each raised on one (a 500). OpenAI refuses such a body
with a 400; so does hone serve, naming where the string is (`messages.0.content`).
"""
from __future__ import annotations

from fastapi import Request

from hone.serve.errors import APIError


async def unicode_text(request: Request) -> None:
    """FastAPI dependency: a 400 when the JSON body holds a lone surrogate (routers with a JSON body)."""
    content_type = request.headers.get("content-type", "")
    if content_type and "json" not in content_type:   # multipart uploads stream to disk: never read here
        return
    if not await request.body():
        return
    try:
        data = await request.json()   # FastAPI read it already; this returns its cached copy
    except ValueError:
        return   # not JSON: FastAPI's own parse error answers (a 400)
    where = lone_surrogate(data)
    if where is not None:
        raise APIError(400, f"{where or 'body'}: the string holds a lone UTF-16 surrogate (a \\uD800-\\uDFFF escape "
                       "without its pair), which is not Unicode text; send the character itself or its full pair",
                       param=where or None)


def lone_surrogate(data) -> str | None:
    """The dotted path of the first string (or object key) with a lone surrogate; None when there is none.

    Iterative: a body nested a few hundred deep is legal JSON and must not exhaust the recursion limit."""
    stack = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if not _is_text(value):
                return path
        elif isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                if not _is_text(key):
                    return path
                stack.append((f"{path}.{key}" if path else key, item))
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), item) for i, item in reversed(list(enumerate(value))))
    return None


def _is_text(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
