"""Segments: a JSON rule selecting members by attributes, locale, time zone, registration date
and category preferences, validated with field-level errors and compiled to a parameterised SQL condition.

    rule      := {"all": [rule, ...]} | {"any": [rule, ...]} | {"not": rule} | condition
    condition := {"attr": KEY, "op": OP, "value": VALUE}
               | {"field": "locale" | "timezone" | "created_at", "op": OP, "value": VALUE}
               | {"category": KEY, "op": "eq" | "ne" | "in", "value": FREQUENCY | "default"}

A category condition reads the frequency the member chose for that category in their preferences
(`categories`), `default` when they chose none (their own frequency or the category's applies).

Operators: `eq`, `ne`, `in` (value: a list), `lt`, `lte`, `gt`, `gte`, `contains` (a list
attribute holds the value) and `exists` (no value; attributes only). The compiled SQL never holds
text from the rule: attribute keys and values are `$n` parameters, columns and operators come
from the tables below. A rule is at most MAX_DEPTH levels deep and MAX_CONDITIONS conditions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from notifier import attributes, schedule, validation
from notifier.errors import FieldError, Problem

MAX_DEPTH = 6
MAX_CONDITIONS = 50
MAX_IN_VALUES = 200
MAX_RULE_BYTES = 16 * 1024

OPS = ("eq", "ne", "in", "lt", "lte", "gt", "gte", "contains", "exists")
_COMPARE = {"eq": "=", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
# Account columns a rule may name, and the operators each allows.
FIELDS: dict[str, tuple[str, ...]] = {
    "locale": ("eq", "ne", "in"),
    "timezone": ("eq", "ne", "in"),
    "created_at": ("lt", "lte", "gt", "gte"),
}
_CONDITION_KEYS = frozenset({"attr", "field", "category", "op", "value"})
_KINDS = ("attr", "field", "category")
CATEGORY_OPS = ("eq", "ne", "in")
CATEGORY_CHOICES = (*schedule.FREQUENCIES, "default")


class InvalidSegment(Problem):
    """422 naming every invalid part of the rule (`segment.all.2.op`)."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        super().__init__(422, "the segment is not valid", errors=errors)


@dataclass
class Compiled:
    """A SQL condition over the account alias `a` and the parameters it numbers."""

    sql: str
    params: list[Any] = field(default_factory=list)


class _Compiler:
    def __init__(self, first_param: int, alias: str) -> None:
        self.next = first_param
        self.alias = alias
        self.params: list[Any] = []
        self.errors: list[FieldError] = []
        self.conditions = 0

    def param(self, value: Any, cast: str) -> str:
        self.params.append(value)
        self.next += 1
        return f"${self.next - 1}::{cast}"

    def fail(self, where: str, message: str) -> str:
        self.errors.append({"field": where, "message": message})
        return "FALSE"

    def rule(self, node: Any, where: str, depth: int) -> str:
        if not isinstance(node, Mapping):
            return self.fail(where, "must be an object: all, any, not or a condition")
        if depth > MAX_DEPTH:
            return self.fail(where, f"is nested too deep (at most {MAX_DEPTH} levels)")
        groups = [k for k in ("all", "any", "not") if k in node]
        if groups:
            if len(node) != 1:
                return self.fail(where, f"a {groups[0]!r} object has no other keys")
            key = groups[0]
            if key == "not":
                return f"NOT ({self.rule(node['not'], f'{where}.not', depth + 1)})"
            items = node[key]
            if not isinstance(items, list) or not items:
                return self.fail(f"{where}.{key}", "must be a non-empty list of rules")
            joiner = " AND " if key == "all" else " OR "
            parts = [self.rule(item, f"{where}.{key}.{i}", depth + 1) for i, item in enumerate(items)]
            return "(" + joiner.join(f"({p})" for p in parts) + ")"
        return self.condition(node, where)

    def condition(self, node: Mapping[str, Any], where: str) -> str:
        self.conditions += 1
        if self.conditions == MAX_CONDITIONS + 1:
            self.fail(where, f"a segment has at most {MAX_CONDITIONS} conditions")
        unknown = sorted(str(k)[:40] for k in node if k not in _CONDITION_KEYS)
        for key in unknown:
            self.fail(
                f"{where}.{key}", "unknown key: a rule is all, any, not, or attr/field/category, op, value"
            )
        op = node.get("op")
        if op not in OPS:
            return self.fail(f"{where}.op", f"must be one of {', '.join(OPS)}")
        if sum(kind in node for kind in _KINDS) != 1:
            return self.fail(where, "a condition names one of `attr`, `field` or `category`")
        if op == "exists" and "value" in node:
            return self.fail(f"{where}.value", "`exists` takes no value")
        if op != "exists" and "value" not in node:
            return self.fail(f"{where}.value", "is required")
        if "attr" in node:
            return self.attribute(node["attr"], op, node.get("value"), where)
        if "category" in node:
            return self.category(node["category"], op, node.get("value"), where)
        return self.column(node["field"], op, node.get("value"), where)

    def category(self, key: Any, op: str, value: Any, where: str) -> str:
        # Category keys follow the categories' own rule (validation.CATEGORY), not the attributes'.
        if (
            not isinstance(key, str)
            or len(key) > validation.MAX_CATEGORY
            or not re.fullmatch(validation.CATEGORY, key)
        ):
            return self.fail(f"{where}.category", validation.PATTERN_MESSAGES[validation.CATEGORY])
        if op not in CATEGORY_OPS:
            return self.fail(f"{where}.op", f"a category allows {', '.join(CATEGORY_OPS)}")
        values = value if op == "in" else [value]
        if (
            not isinstance(values, list)
            or not values
            or len(values) > len(CATEGORY_CHOICES)
            or any(v not in CATEGORY_CHOICES for v in values)
        ):
            shape = "a list of " if op == "in" else ""
            return self.fail(f"{where}.value", f"must be {shape}one of {', '.join(CATEGORY_CHOICES)}")
        chosen = f"coalesce({self.alias}.digest_categories -> {self.param(key, 'text')} ->> 'frequency', 'default')"
        if op == "ne":
            return f"{chosen} <> {self.param(value, 'text')}"
        return f"{chosen} = ANY({self.param(list(values), 'text[]')})"

    def attribute(self, key: Any, op: str, value: Any, where: str) -> str:
        if not isinstance(key, str) or not attributes.KEY.fullmatch(key):
            return self.fail(f"{where}.attr", attributes.KEY_RULE)
        if not self.value_ok(op, value, f"{where}.value"):
            return "FALSE"
        a = self.alias
        k = self.param(key, "text")
        if op == "exists":
            return f"{a}.attributes ? {k}"
        if op == "in":
            return f"{self.param(value, 'jsonb')} @> jsonb_build_array({a}.attributes -> {k})"
        v = self.param(value, "jsonb")
        if op == "contains":
            return f"coalesce({a}.attributes -> {k} @> {v}, false)"
        if op == "ne":
            return f"({a}.attributes -> {k}) IS DISTINCT FROM {v}"
        if op == "eq":
            return f"coalesce({a}.attributes -> {k} = {v}, false)"
        # Ordering only between values of one JSON type (jsonb orders strings before numbers).
        return (
            f"coalesce(jsonb_typeof({a}.attributes -> {k}) = jsonb_typeof({v}) "
            f"AND {a}.attributes -> {k} {_COMPARE[op]} {v}, false)"
        )

    def column(self, name: Any, op: str, value: Any, where: str) -> str:
        if name not in FIELDS:
            return self.fail(f"{where}.field", f"must be one of {', '.join(FIELDS)}")
        if op not in FIELDS[name]:
            return self.fail(f"{where}.op", f"{name} allows {', '.join(FIELDS[name])}")
        column = f"{self.alias}.{name}"  # a key of FIELDS, never the rule's text
        if name == "created_at":
            instant = _instant(value)
            if instant is None:
                return self.fail(
                    f"{where}.value", "must be a date (2026-01-31) or a date and time with an offset"
                )
            return f"{column} {_COMPARE[op]} {self.param(instant, 'timestamptz')}"
        if not self.value_ok(op, value, f"{where}.value", text_only=True):
            return "FALSE"
        if op == "in":
            return f"{column} = ANY({self.param(list(value), 'text[]')})"
        return f"{column} {'<>' if op == 'ne' else '='} {self.param(value, 'text')}"

    def value_ok(self, op: str, value: Any, where: str, *, text_only: bool = False) -> bool:
        if op == "exists":
            return True
        if op == "in":
            if not isinstance(value, list) or not value or len(value) > MAX_IN_VALUES:
                self.fail(where, f"must be a list of 1 to {MAX_IN_VALUES} values")
                return False
            items = [(f"{where}.{i}", item) for i, item in enumerate(value)]
        else:
            items = [(where, value)]
        good = True
        for place, item in items:
            why = attributes.scalar_problem(item)
            if why is None and text_only and not isinstance(item, str):
                why = "must be a string"
            if why is None and op in ("lt", "lte", "gt", "gte") and isinstance(item, bool):
                why = "must be a number or a string to order by"
            if why is not None:
                self.fail(place, why)
                good = False
        return good


def _instant(value: Any) -> datetime | None:
    """A date (`2026-01-31`: midnight UTC) or a date and time with an offset, in the API's range
    (`validation.parse_instant`); None for anything else."""
    if isinstance(value, str) and len(value) == 10:
        value = f"{value}T00:00:00+00:00"
    try:
        return validation.parse_instant(value)
    except ValueError:
        return None


def compile_rule(rule: Any, first_param: int, *, alias: str = "a", where: str = "segment") -> Compiled:
    """The rule as one SQL condition over accounts aliased `alias`, numbering its parameters from
    `$first_param`. Raises InvalidSegment listing every invalid part (paths from `where`)."""
    if len(json.dumps(rule, ensure_ascii=False).encode()) > MAX_RULE_BYTES:  # parsed JSON: it encodes
        raise InvalidSegment(
            [{"field": where, "message": f"the rule is larger than {MAX_RULE_BYTES:,} bytes"}]
        )
    compiler = _Compiler(first_param, alias)
    sql = compiler.rule(rule, where, 1)
    if compiler.errors:
        raise InvalidSegment(compiler.errors[:50])
    return Compiled(sql, compiler.params)


def check(rule: Any, where: str = "segment") -> None:
    """Raise InvalidSegment unless `rule` is a valid segment rule."""
    compile_rule(rule, 1, where=where)


EVERYONE = Compiled("TRUE")
