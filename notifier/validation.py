"""Input rules shared by the API: e-mail addresses, time zones, locales, identifiers and sizes.

Each rule is a plain function raising `ValueError` with a readable message, and an `Annotated`
type that applies it inside a pydantic model (so a 422 lists every bad field at once).

Stored addresses are normalised here; the suppression list hashes them with
`notifier.suppression.address_hash` (trimmed and lower-cased).
"""

from __future__ import annotations

import functools
import json
import re
import zoneinfo
from typing import Annotated, Any
from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, StringConstraints

MAX_EXTERNAL_ID = 128
MAX_NAME = 200
MAX_EMAIL = 254
MAX_SUBJECT = 300
MAX_BODY = 20_000
MAX_CATEGORY = 64
MAX_URL = 2048
MAX_DATA_BYTES = 16 * 1024

# Control characters other than tab and newlines have no place in text we store and mail.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LINE_BREAK = re.compile(r"[\r\n\u2028\u2029]")
_EXTERNAL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+\-]*")
_CATEGORY = re.compile(r"[a-z0-9][a-z0-9._\-]*")
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*")


def normalize_email(value: str) -> str:
    """The address in normalised form (Unicode NFC, lower-case domain); `ValueError` if invalid.

    Syntax only: no DNS look-up, so validation is fast and works offline.
    """
    if len(value) > MAX_EMAIL:
        raise ValueError(f"must be at most {MAX_EMAIL} characters")
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid e-mail address: {exc}") from None
    return str(result.normalized)


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def check_timezone(value: str) -> str:
    """An IANA time-zone name such as `Europe/Berlin` (or `UTC`); `ValueError` otherwise."""
    if value not in _zone_names():
        raise ValueError(f"unknown time zone {value[:64]!r}; use an IANA name such as Europe/Berlin")
    return value


def check_locale(value: str) -> str:
    """A BCP 47-like language tag (`en`, `de-CH`, `pt_BR`), normalised to use a hyphen."""
    if len(value) > 35 or not _LOCALE.fullmatch(value):
        raise ValueError("must be a language tag such as en or de-CH")
    return value.replace("_", "-")


def check_external_id(value: str) -> str:
    """The producer's id of an account: letters, digits and `. _ : @ + -`, starting alphanumeric."""
    if not _EXTERNAL_ID.fullmatch(value):
        raise ValueError("may contain letters, digits and . _ : @ + - and must start with a letter or digit")
    return value


def check_category(value: str) -> str:
    """An inbox category: lower-case letters, digits and `. _ -`."""
    if not _CATEGORY.fullmatch(value):
        raise ValueError(
            "may contain lower-case letters, digits and . _ - and must start with one of the first two"
        )
    return value


def check_line(value: str) -> str:
    """One line of text: no line breaks or control characters (names, subjects)."""
    if _LINE_BREAK.search(value) or _CONTROL.search(value):
        raise ValueError("must be one line without control characters")
    return value


def check_text(value: str) -> str:
    """Free text: line breaks and tabs allowed, other control characters not."""
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


def check_url(value: str) -> str:
    """An absolute http(s) URL with a host."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or _CONTROL.search(value) or " " in value:
        raise ValueError("must be an absolute http:// or https:// URL")
    return value


def check_data(value: dict[str, Any]) -> dict[str, Any]:
    """A JSON object of at most MAX_DATA_BYTES when encoded."""
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_DATA_BYTES:
        raise ValueError(f"is {size} bytes as JSON; the limit is {MAX_DATA_BYTES}")
    return value


Email = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=3), AfterValidator(normalize_email)
]
TimeZone = Annotated[str, StringConstraints(strip_whitespace=True), AfterValidator(check_timezone)]
Locale = Annotated[str, StringConstraints(strip_whitespace=True), AfterValidator(check_locale)]
ExternalId = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_EXTERNAL_ID), AfterValidator(check_external_id)
]
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME),
    AfterValidator(check_line),
]
Category = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_CATEGORY), AfterValidator(check_category)
]
Subject = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_SUBJECT),
    AfterValidator(check_line),
]
Body = Annotated[str, StringConstraints(min_length=1, max_length=MAX_BODY), AfterValidator(check_text)]
Url = Annotated[str, StringConstraints(strip_whitespace=True, max_length=MAX_URL), AfterValidator(check_url)]
Data = Annotated[dict[str, Any], AfterValidator(check_data)]
