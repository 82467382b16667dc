"""Declared categories: what a category of inbox messages is called (per language), how often it
is e-mailed unless the member chooses (`default_frequency`; None: the member's own default) and
whether members may turn it off (`required`). See docs/digests.md, "Categories".

`declare` is the one writer (the `PUT /v1/categories/{key}` route); intake declares an unknown
category with the defaults in the statement that stores its message (sql/inbox.sql), so a
producer never has to declare first. `effective_frequency` is the one rule that says how often a
member gets a category's messages; the digest pass, intake and the preference centre all use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from notifier import audit, schedule
from notifier.audit import Actor
from notifier.db import Q
from notifier.validation import ONE_LINE, TEXT, Locale

MAX_LABEL = 200
MAX_DESCRIPTION = 2000
MAX_LANGUAGES = 50

Label = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_LABEL, pattern=ONE_LINE)
]
Description = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=MAX_DESCRIPTION, pattern=TEXT)
]


class CategoryIn(BaseModel):
    """A category's declaration (`PUT /v1/categories/{key}`): the whole of it; fields left out
    take their defaults. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    labels: dict[Locale, Label] = Field(
        default_factory=dict,
        max_length=MAX_LANGUAGES,
        description="the category's name per language tag, shown to members",
        examples=[{"en": "Certificates", "de": "Zertifikate"}],
    )
    descriptions: dict[Locale, Description] = Field(
        default_factory=dict, max_length=MAX_LANGUAGES, description="one or two sentences per language tag"
    )
    default_frequency: schedule.Frequency | None = Field(
        default=None, description="how often members who have not chosen get it; null: the member's default"
    )
    required: bool = Field(default=False, description="members cannot turn it off (e.g. certificate expiry)")

    @model_validator(mode="after")
    def _required_is_sent(self) -> CategoryIn:
        if self.required and self.default_frequency == "off":
            raise ValueError("default_frequency: a required category cannot be off by default")
        return self


@dataclass(frozen=True)
class Category:
    """A declared category as the schedule needs it, and what it is called (`labels`: per
    language tag)."""

    key: str
    default_frequency: str | None
    required: bool
    labels: Mapping[str, str] = field(default_factory=dict, compare=False)

    def label(self, locale: str) -> str:
        """What the category is called in `locale` (see `text_for`; else its key)."""
        return text_for(self.labels, locale, self.key)


def effective_frequency(
    key: str,
    choices: Mapping[str, Any],
    member_default: str,
    category: Category | None,
) -> str:
    """How often a member gets the messages of category `key`: their own choice for it
    (`choices`, the preferences' `categories`); else "off" when they turned digests off (a
    required category then follows its default, or "daily"); else the category's
    `default_frequency`; else the member's default frequency. A required category is never off."""
    required = category is not None and category.required
    chosen = choices.get(key)
    frequency = chosen.get("frequency") if isinstance(chosen, Mapping) else None
    if frequency is None:
        if member_default == "off":
            frequency = "off"
        else:
            frequency = (category.default_frequency if category else None) or member_default
    if frequency == "off" and required:
        assert category is not None
        frequency = category.default_frequency if category.default_frequency not in (None, "off") else "daily"
    return frequency


def frequencies_in_use(
    choices: Mapping[str, Any], member_default: str, categories: Mapping[str, Category]
) -> set[str]:
    """Every frequency some category of this member runs on (a category not declared yet follows
    the member's default): the digest windows the member needs."""
    used = {effective_frequency(key, choices, member_default, c) for key, c in categories.items()}
    used.add(effective_frequency("", {}, member_default, None))
    used.update(
        effective_frequency(key, choices, member_default, None) for key in choices if key not in categories
    )
    return used


def text_for(texts: Mapping[str, str], locale: str, fallback: str) -> str:
    """A category's label or description in the member's language (`de-AT`: `de-AT`, then `de`),
    else in English, else `fallback`."""
    return texts.get(locale) or texts.get(locale.split("-")[0]) or texts.get("en") or fallback


async def all_categories(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, Category]:
    """Every declared category by key, with its labels (a short list: read per batch or per change)."""
    rows = await conn.fetch(Q.categories_all)
    return {r["key"]: Category(r["key"], r["default_frequency"], r["required"], r["labels"]) for r in rows}


async def declare(
    conn: asyncpg.Connection, key: str, category: CategoryIn, actor: Actor
) -> tuple[asyncpg.Record, bool]:
    """Create or replace the declaration of `key`; (the row, whether it was created). Audited
    (`category.declare`, before and after) when something changed."""
    c = conn
    async with c.transaction():
        before = await c.fetchrow(Q.category_for_update, key)
        row = await c.fetchrow(
            Q.category_upsert,
            key,
            category.labels,
            category.descriptions,
            category.default_frequency,
            category.required,
        )
        assert row is not None
        fields = ("labels", "descriptions", "default_frequency", "required")
        changed = audit.diff(dict(before) if before else {}, {f: row[f] for f in fields})
        if changed:
            await audit.record(c, None, actor, "category.declare", {"key": key, **changed})
        return row, before is None
