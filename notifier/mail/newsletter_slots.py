"""A newsletter version rendered and sanitised ONCE, with holes for each recipient's values.

Rendering marketing's template per recipient (three Jinja renders) and sanitising each
recipient's whole HTML with nh3 was about half of a bulk worker's CPU (docs/benchmarks.md, issue
16). Most templates use the personal fields (`newsletter_render.PERSONAL_FIELDS`) only as plain
`{{ name }}` outputs. For those the output for a recipient IS the output for placeholders with
each placeholder replaced by the recipient's value, so the version is rendered once with
placeholders, sanitised once, and split at the placeholders into `Slots`; a recipient costs one
join.

Why that is as safe as sanitising each recipient's HTML (issue 17's hardening):
- `linear` admits a template only when every use of a personal field is a bare `{{ field }}`
  emitted straight into the output (possibly inside `for`, `if` or `with`): no filter, test,
  condition, macro, block, `set` block or `filter` block ever sees the value, so the value cannot
  change the template's structure, only fill the holes.
- The sanitised HTML is nh3's output: every `<` in it starts a tag, text holds no `<` or `&` of
  its own, attribute values are double-quoted with `"` escaped, and no raw-text element
  (`script`, `style`, `textarea`, ...) is allowed; `holes_in_tags` reads it that way. A hole in
  text is filled with the value escaped as nh3 escapes text (`escape_text`: `&`, `<`, `>`), which
  can open no tag, comment or entity: it stays text, byte for byte what sanitising the
  recipient's own render writes there. A hole in a tag is filled with `html.escape` (`"` too),
  which cannot leave the attribute's quotes.
- What sanitising decides by an attribute's VALUE (a `javascript:` link, an `<img src>` that is
  not https) cannot be decided on a placeholder, so a hole inside a tag is allowed only for the
  links the engine makes itself (`TRUSTED_IN_TAGS`); a member's name or address inside a tag
  (`<a href="{{ name }}">`, `alt="{{ name }}"`) sends the version down the per-recipient path.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import jinja2
from jinja2 import nodes
from jinja2.parser import Parser

from notifier.mail.sandbox import Budget

# Holes that may stand inside a tag (an attribute's value): links the engine signs itself.
TRUSTED_IN_TAGS = frozenset({"unsubscribe_url", "preferences_url"})
MARK = "NOTIFIERHOLE"
_HOLE = re.compile(MARK + r"(\d+)X")

# Where an output may emit a personal field: constructs whose output goes straight into the
# template's output (and only their bodies, not their conditions or targets). Anything else that
# holds output (macros, call and filter blocks, `{% set %}` blocks, blocks, recursive loops)
# captures it where a filter could change it.
_BODIES: dict[type[nodes.Node], tuple[str, ...]] = {
    nodes.Template: ("body",),
    nodes.For: ("body", "else_"),
    nodes.If: ("body", "elif_", "else_"),
    nodes.With: ("body",),
    nodes.Scope: ("body",),
}


def placeholders(fields: Iterable[str]) -> dict[str, str]:
    """One inert placeholder per field: letters and digits only, unchanged by HTML escaping."""
    return {field: f"{MARK}{i}X" for i, field in enumerate(fields)}


def linear(env: jinja2.Environment, source: str, fields: Iterable[str]) -> bool:
    """Whether `source` uses `fields` only as bare `{{ field }}` outputs in positions whose output
    is the template's output (see the module), and does not contain the placeholders' mark."""
    if MARK in source:
        return False
    personal = frozenset(fields)
    try:
        tree = Parser(env, source).parse()
    except jinja2.TemplateSyntaxError:
        return False

    def uses(node: nodes.Node) -> bool:
        return any(n.name in personal for n in node.find_all(nodes.Name)) or (
            isinstance(node, nodes.Name) and node.name in personal
        )

    def clean(node: nodes.Node) -> bool:
        if isinstance(node, nodes.Output):
            return all(
                (isinstance(child, nodes.Name) and child.ctx == "load") or not uses(child)
                for child in node.nodes
            )
        bodies = _BODIES.get(type(node))
        if bodies is None or (isinstance(node, nodes.For) and node.recursive):
            return not uses(node)
        for name, value in node.iter_fields():
            children = [
                c for c in (value if isinstance(value, list) else [value]) if isinstance(c, nodes.Node)
            ]
            if not all(clean(c) if name in bodies else not uses(c) for c in children):
                return False
        return True

    return clean(tree)


@dataclass(frozen=True)
class Slots:
    """A text with holes for fields, filled by one `str.format_map` (C, not a Python loop)."""

    template: str  # the text, braces doubled, each hole `{field}`
    counts: tuple[tuple[str, int], ...]  # how many holes each field has
    size: int  # the characters outside the holes

    @classmethod
    def split(cls, text: str, names: Mapping[str, str]) -> Slots:
        """`text` with each placeholder of `names` (field → placeholder) made a hole."""
        by_number = {int(placeholder[len(MARK) : -1]): field for field, placeholder in names.items()}
        parts = _HOLE.split(text)
        texts, fields = parts[0::2], [by_number[int(n)] for n in parts[1::2]]
        template = "".join(
            t.replace("{", "{{").replace("}", "}}") + (f"{{{fields[i]}}}" if i < len(fields) else "")
            for i, t in enumerate(texts)
        )
        counts = tuple((field, fields.count(field)) for field in dict.fromkeys(fields))
        return cls(template, counts, sum(map(len, texts)))

    def fill(self, values: Mapping[str, str], budget: Budget | None = None) -> str:
        """The text for one recipient (`values` already escaped as its place needs), charged to
        `budget` before it is built."""
        if budget is not None:
            budget.charge(self.size + sum(len(values[field]) * n for field, n in self.counts))
        return self.template.format_map(values)


def holes_in_tags(sanitised: str) -> set[str]:
    """The placeholders that stand inside a tag of `sanitised` (nh3's output: every `<` opens a
    tag, attribute values are double-quoted and hold no `"`)."""
    found: set[str] = set()
    at = 0
    while (start := sanitised.find("<", at)) >= 0:
        end, quoted = start + 1, False
        while end < len(sanitised) and (quoted or sanitised[end] != ">"):
            quoted ^= sanitised[end] == '"'
            end += 1
        found.update(m.group(0) for m in _HOLE.finditer(sanitised, start, end))
        at = end + 1
    return found


def html_page(sanitised_body: str, before: str, after: str, names: Mapping[str, str]) -> Slots | None:
    """The whole HTML page as `Slots`, or None when a member's value would stand inside a tag
    (see the module). `before` and `after` are the layout's, with the same placeholders."""
    trusted = {names[f] for f in TRUSTED_IN_TAGS if f in names}
    if holes_in_tags(sanitised_body) - trusted:
        return None
    return Slots.split(before + sanitised_body + after, names)


def escape_text(value: str) -> str:
    """`value` as nh3 writes it when it is the text of an element: what the HTML parser does to
    text (CR LF and CR become LF, NUL is dropped), then `&`, no-break space, `<` and `>` escaped.
    Holds no `<` and no `&` of its own: it can never open a tag, a comment or an entity."""
    if "\r" in value or "\x00" in value:
        value = value.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return value.replace("&", "&amp;").replace("\xa0", "&nbsp;").replace("<", "&lt;").replace(">", "&gt;")


# How each hole of the HTML page is filled: the engine's links (in tags too: attribute values in
# double quotes, so `"` is escaped as well) and the subject (the layout's) as the layout always
# escaped them; a member's values as nh3 writes text (they stand only in text: `html_page`).
PAGE_ESCAPES: dict[str, Callable[[str], str]] = {
    "unsubscribe_url": html.escape,
    "preferences_url": html.escape,
    "subject": html.escape,
}
