"""Read what another party wrote — the warm parent (the lab user), JupyterLab, a file —
within bounds on its size and its nesting, so that no reply can exhaust root's memory or
stack, and check its shape before anything uses it.

A leaf (json only): `jlservice token` reads state.json through it.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 32  # far deeper than anything jlservice reads: state.json, API replies, TOML


class Malformed(ValueError):
    """Not what was expected; str() says why in a few words and never quotes the content."""


def loads(raw: bytes | str, limit: int) -> Any:
    """The JSON value in `raw`, which must be at most `limit` bytes and nest at most
    MAX_DEPTH lists and objects deep; else Malformed."""
    if len(raw) > limit:
        raise Malformed(f"larger than {limit} bytes")
    try:
        value = json.loads(raw)
    except RecursionError:  # the decoder's own guard, hit long before the stack runs out
        raise Malformed(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # UnicodeDecodeError too
        raise Malformed(f"not JSON ({exc})") from None
    if too_deep(value):
        raise Malformed(f"nested deeper than {MAX_DEPTH} levels")
    return value


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether the lists and dicts in `value` nest deeper than `limit` (checked without
    recursion: a parser may build deeper documents than Python can walk recursively)."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if level > limit:
            return True
        stack.extend((child, level + 1) for child in children)
    return False


def objects(value: Any) -> list[dict[str, Any]]:
    """`value` if it is a list of JSON objects (as JupyterLab's api/kernels and
    api/sessions answer), else Malformed."""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise Malformed("not a list of objects")
    return value
