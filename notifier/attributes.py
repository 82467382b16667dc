"""Member attributes: a small JSON object the producer keeps on each account (`country`, `plan`,
`interests`...), for segments (notifier/segments.py) to select members by.

Keys are `^[a-z][a-z0-9_]{0,39}$`; values are a string, number or boolean, or a list of those;
the whole object is at most 4 KiB as compact JSON and at most 50 keys. `null` is refused when
setting the whole object; in a PATCH it removes the key (JSON merge patch, RFC 7396).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from notifier.errors import FieldError
from notifier.serialize import merge_patch

KEY = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
KEY_RULE = "must be 1-40 characters: a lower-case letter, then lower-case letters, digits or _"
MAX_BYTES = 4096
MAX_KEYS = 50
MAX_LIST = 50
MAX_STRING = 500

Attributes = dict[str, Any]


def is_scalar(value: Any) -> bool:
    """A string, a finite number or a boolean (what an attribute, or a list item, may hold)."""
    if isinstance(value, bool | str | int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def scalar_problem(value: Any) -> str | None:
    """Why `value` is not an acceptable scalar, or None."""
    if not is_scalar(value):
        return "must be a string, a number or true/false"
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            return f"must be at most {MAX_STRING} characters"
        if "\x00" in value:
            return "must not contain NUL characters"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        return "must be a number between -2^53 and 2^53"
    return None


def problems(attributes: Any, prefix: str = "attributes") -> list[FieldError]:
    """Every reason `attributes` is not a valid attribute object, with field paths
    (`attributes.country`, `attributes.tags.3`); empty when it is valid."""
    if not isinstance(attributes, Mapping):
        return [{"field": prefix, "message": "must be a JSON object"}]
    errors: list[FieldError] = []
    if len(attributes) > MAX_KEYS:
        errors.append({"field": prefix, "message": f"must have at most {MAX_KEYS} keys"})
    for key, value in attributes.items():
        if not isinstance(key, str) or not KEY.fullmatch(key):
            errors.append({"field": f"{prefix}.{str(key)[:50]}", "message": f"key {KEY_RULE}"})
            continue
        where = f"{prefix}.{key}"
        if isinstance(value, list):
            if len(value) > MAX_LIST:
                errors.append({"field": where, "message": f"must have at most {MAX_LIST} items"})
            for i, item in enumerate(value):
                if (why := scalar_problem(item)) is not None:
                    errors.append({"field": f"{where}.{i}", "message": why})
        elif (why := scalar_problem(value)) is not None:
            errors.append({"field": where, "message": f"{why}, or a list of those"})
    if not errors and size(attributes) > MAX_BYTES:
        errors.append({"field": prefix, "message": f"must be at most {MAX_BYTES} bytes as JSON"})
    return errors


def size(attributes: Mapping[str, Any]) -> int:
    """Bytes of the object as compact UTF-8 JSON (the measure of the size limit)."""
    return len(json.dumps(attributes, separators=(",", ":"), ensure_ascii=False).encode())


def merge(before: Mapping[str, Any], patch: Mapping[str, Any]) -> Attributes:
    """`before` with a JSON merge patch applied: a `null` removes the key, anything else sets it.
    The result is not validated: call `problems` on it."""
    return merge_patch(before, patch)
