"""JSON from hostile files: every way parsing can fail becomes one BadJSON, and values are bounded.

Python's json raises more than JSONDecodeError: a ValueError for an integer of more than 4,300
digits (the int-string limit, CVE-2020-10735) and a RecursionError for arrays nested ~1,000 deep.
A record can also parse and still break everything after it: a lone surrogate ("\\ud800") is not
encodable as UTF-8 (hashing, tokenizing and training fail on it), and a value nested hundreds of
levels deep overflows the stack of `dataclasses.asdict`, `json.dumps` and the chat template.
`check_value` finds both in one iterative walk, so no record reaches those with them.
"""
from __future__ import annotations

import json
import re
import sys
from typing import Any

MAX_DEPTH = 64      # real records (OpenAI tool schemas included) nest under 20 levels
INT_DIGITS = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 4300
_SURROGATE = re.compile("[\ud800-\udfff]")
_STEP = re.compile(r"\.?[^.\[]+|\[\d+\]")


class BadJSON(ValueError):
    """Text that is not JSON Python can read: `msg` and `lineno` as json.JSONDecodeError has them.

    `over_limit` is True when the text is JSON but past Python's limits (too deep, a huge integer).
    """

    def __init__(self, msg: str, lineno: int = 1, over_limit: bool = False):
        super().__init__(msg)
        self.msg, self.lineno, self.over_limit = msg, lineno, over_limit


class _HugeInt:
    def __init__(self, digits: int):
        self.digits = digits


def _huge_int(text: str):
    return _HugeInt(len(text.lstrip("-"))) if len(text) > INT_DIGITS else int(text)


def raw_decode(decoder: json.JSONDecoder, text: str, position: int = 0):
    """(value, end) of the JSON value at text[position]; BadJSON for anything that cannot be read."""
    try:
        return decoder.raw_decode(text, position)
    except json.JSONDecodeError as exc:
        raise BadJSON(f"{exc.msg} at column {exc.colno}", exc.lineno) from None
    except RecursionError:
        raise BadJSON("nested too deeply for Python's parser", text.count("\n", 0, position) + 1, True) from None
    except ValueError:  # the int-string limit: say which field, so the user can quote it
        line = text.count("\n", 0, position) + 1
        try:
            value, _end = json.JSONDecoder(parse_int=_huge_int).raw_decode(text, position)
        except (ValueError, RecursionError):
            value = None
        where, digits = _find_huge_int(value)
        size = f"{digits:,} digits" if digits else f"more than {INT_DIGITS:,} digits"
        raise BadJSON(f"{where or 'a value'} is an integer of {size} (Python reads at most {INT_DIGITS:,}); "
                      "write it as a string", line, True) from None


def loads(text: str):
    """json.loads that fails only with BadJSON (and says why)."""
    start = len(text) - len(text.lstrip())
    value, end = raw_decode(_DECODER, text, start)
    if text[end:].strip():
        rest = end + len(text[end:]) - len(text[end:].lstrip())
        line = text.count("\n", 0, rest) + 1
        raise BadJSON(f"Extra data at column {rest - text.rfind(chr(10), 0, rest)}", line)
    return value


_DECODER = json.JSONDecoder()


def _children(value, path: str):
    if isinstance(value, dict):
        return ((v, f"{path}.{k}" if path else str(k)) for k, v in value.items())
    return ((v, f"{path}[{i}]") for i, v in enumerate(value))


def _find_huge_int(value) -> tuple[str, int]:
    stack = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, _HugeInt):
            return f"`{path}`" if path else "", item.digits
        if isinstance(item, (dict, list)):
            stack.extend(_children(item, path))
    return "", 0


def check_value(value, path: str = "") -> tuple[str, str, str] | None:
    """(kind, field, message) for the first value too deep or text with a lone surrogate; None if fine.

    Iterative, so a value of any depth is checked without recursion. Every record goes through it,
    so the common case (nothing wrong) runs a lean loop; only a failing value is walked again to name
    the field.
    """
    return None if _is_clean(value) else _locate(value, path)


def _is_clean(value) -> bool:
    search = _SURROGATE.search
    stack: list[tuple[Any, int]] = [([value], -1)]  # wrapped, so a bare string is checked too
    while stack:
        item, depth = stack.pop()
        if depth >= MAX_DEPTH:
            return False
        children = item.values() if type(item) is dict else item
        if type(item) is dict and any(not k.isascii() and search(k) for k in item if type(k) is str):
            return False
        for child in children:
            kind = type(child)
            if kind is str:
                if not child.isascii() and search(child):  # isascii is O(1): most text skips the search
                    return False
            elif kind is dict or kind is list:
                stack.append((child, depth + 1))
    return True


def _locate(value, path: str) -> tuple[str, str, str] | None:
    stack = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            if (found := _SURROGATE.search(item)) is not None:
                return ("bad_encoding", where, f"`{where}` holds a lone surrogate ({found.group()!a} at character "
                        f"{found.start() + 1}), which is not Unicode text; fix the \\u escape (surrogates come in "
                        "pairs) or remove it")
        elif isinstance(item, (dict, list)):
            if depth >= MAX_DEPTH:
                top = "".join(_STEP.findall(where)[:3])  # the first steps name the field; the rest is noise
                return ("nested_too_deep", top, f"`{top}` is nested more than {MAX_DEPTH} levels deep; flatten it")
            if isinstance(item, dict):
                for key in item:
                    if isinstance(key, str) and (found := _SURROGATE.search(key)):
                        return ("bad_encoding", where, f"a key in `{where or 'the record'}` holds a lone surrogate "
                                f"({found.group()!a}); fix the \\u escape or remove it")
            stack.extend((child, at, depth + 1) for child, at in _children(item, where))
    return None
