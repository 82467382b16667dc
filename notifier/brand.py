"""The organisation's house style: name, logo, two colours and a footer line, used by every
e-mail layout (digest, service, newsletter) and every member page.

The NOTIFIER_BRAND_* settings are the defaults; the console's brand page stores overrides in the
one-row `brand` table (a NULL column keeps the setting). A `Brand` checks its values when it is
built, whatever their source, so a colour can only ever be `#rrggbb` and a logo an https URL with
a plain host: templates may put them in a `<style>` block and an `img src` (escaped as every value
is), and pages name the logo's origin in their Content-Security-Policy.

Processes keep the brand in a `BrandCache`, re-read at most every REFRESH_SECONDS: web processes
from a background task, workers before each batch they render; the console's save updates its
own process at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields
from typing import Annotated, Any
from urllib.parse import urlsplit

import asyncpg
from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints

from notifier.db import Q
from notifier.settings import Settings
from notifier.validation import ONE_LINE, check_colour, check_https_image

log = logging.getLogger("notifier.brand")

REFRESH_SECONDS = 15.0
MAX_NAME = 100
MAX_FOOTER = 500


@dataclass(frozen=True)
class Brand:
    """The house style in force. Built only from checked values (`__post_init__` checks again)."""

    name: str = ""
    logo_url: str | None = None
    primary_color: str = "#1d4ed8"
    accent_color: str = "#b45309"
    footer_text: str = ""

    def __post_init__(self) -> None:
        BrandForm.model_validate({f.name: getattr(self, f.name) or None for f in fields(self)})

    @classmethod
    def from_settings(cls, settings: Settings) -> Brand:
        """The NOTIFIER_BRAND_* defaults."""
        return cls(
            name=settings.brand_name,
            logo_url=settings.brand_logo_url,
            primary_color=settings.brand_primary_color,
            accent_color=settings.brand_accent_color,
            footer_text=settings.brand_footer_text,
        )

    def over(self, row: asyncpg.Record | dict[str, Any] | None) -> Brand:
        """This brand with the stored overrides of `row` (its non-NULL columns) on top."""
        if row is None:
            return self
        values = {
            f.name: row[f.name] if row[f.name] is not None else getattr(self, f.name) for f in fields(self)
        }
        return Brand(**values)

    @property
    def logo_origin(self) -> str | None:
        """`https://host[:port]` of the logo, for a page's Content-Security-Policy."""
        if not self.logo_url:
            return None
        parts = urlsplit(self.logo_url)
        return f"{parts.scheme}://{parts.netloc}"


def _none_if_blank(value: str | None) -> str | None:
    return value.strip() or None if isinstance(value, str) else value


Text = Annotated[str, StringConstraints(strip_whitespace=True, pattern=ONE_LINE)]


class BrandForm(BaseModel):
    """Overrides as the console submits them: each field optional (None keeps the setting)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[Text, StringConstraints(max_length=MAX_NAME)] | None = None
    logo_url: Annotated[str, AfterValidator(check_https_image)] | None = None
    primary_color: Annotated[str, AfterValidator(check_colour)] | None = None
    accent_color: Annotated[str, AfterValidator(check_colour)] | None = None
    footer_text: Annotated[Text, StringConstraints(max_length=MAX_FOOTER)] | None = None

    @classmethod
    def of_form(cls, form: dict[str, str]) -> BrandForm:
        """From a submitted form: blank fields are None. Raises pydantic's ValidationError."""
        return cls.model_validate({name: _none_if_blank(form.get(name)) for name in cls.model_fields})


async def load(conn: asyncpg.Connection | asyncpg.Pool, settings: Settings) -> Brand:
    """The brand in force: the settings with the stored overrides on top."""
    return Brand.from_settings(settings).over(await conn.fetchrow(Q.get_brand))


async def stored(conn: asyncpg.Connection | asyncpg.Pool) -> asyncpg.Record | None:
    """The stored overrides (with who saved them, when), or None before the first save."""
    return await conn.fetchrow(Q.get_brand)


async def save(
    conn: asyncpg.Connection | asyncpg.Pool, settings: Settings, form: BrandForm, actor: str
) -> Brand:
    """Store the overrides of `form` (None: the setting applies) and return the brand now in force."""
    row = await conn.fetchrow(
        Q.save_brand, form.name, form.logo_url, form.primary_color, form.accent_color, form.footer_text, actor
    )
    return Brand.from_settings(settings).over(row)


class BrandCache:
    """A process's copy of the brand, re-read from the database when older than `max_age`."""

    def __init__(self, settings: Settings, max_age: float = REFRESH_SECONDS) -> None:
        self.settings = settings
        self.current = Brand.from_settings(settings)
        self.max_age = max_age
        self._read_at = float("-inf")

    async def refresh(self, pool: asyncpg.Pool, *, force: bool = False) -> Brand:
        """The brand, read again when stale (or `force`); returns `current`. When it cannot be
        read (the database away, or not yet migrated), the brand in force stays and the next call
        after `max_age` tries again: a house style never stops a page or an e-mail."""
        now = time.monotonic()
        if force or now - self._read_at >= self.max_age:
            self._read_at = now
            try:
                self.current = await load(pool, self.settings)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("brand not read, keeping the one in force: %s", type(exc).__name__)
        return self.current

    def set(self, brand: Brand) -> None:
        """The brand just saved in this process: in force here at once."""
        self.current = brand
        self._read_at = time.monotonic()
