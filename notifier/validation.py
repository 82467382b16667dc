"""Input rules shared by the API: e-mail addresses, time zones, instants, locales, identifiers and
sizes.

Each rule is an `Annotated` type for pydantic models (a regular expression or a function raising
`ValueError` with a readable message), so `parse` answers one 422 listing every bad field.

Stored addresses are normalised here; the suppression list hashes them with
`notifier.suppression.address_hash` (trimmed and lower-cased).
"""

from __future__ import annotations

import functools
import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, BeforeValidator, StringConstraints, ValidationError

from notifier import schedule
from notifier.errors import FieldError, Problem

M = TypeVar("M", bound=BaseModel)

MAX_EXTERNAL_ID = 128
MAX_NAME = 200
MAX_EMAIL = 254
MAX_SUBJECT = 300
MAX_BODY = 20_000
MAX_CATEGORY = 64
MAX_URL = 2048
MAX_DATA_BYTES = 16 * 1024

# `\u0000` as JSON writes a NUL: a backslash-u not itself escaped by a backslash.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*")


# RFC 5322 dot-atom local part of ASCII `atext` (as email-validator's DOT_ATOM_TEXT): such a
# local part is valid and already normalised, so only the domain needs the library's work.
_ATEXT = r"[a-zA-Z0-9!#$%&'*+\-/=?^_`{|}~]+"
_ASCII_LOCAL = re.compile(f"{_ATEXT}(?:\\.{_ATEXT})*")
_ASCII_DOMAIN = re.compile(r"[A-Za-z0-9.\-]+")


@functools.lru_cache(maxsize=4096)
def _normalized_domain(domain: str) -> str:
    """The domain as `validate_email` normalises it (ValueError when invalid); cached, since the
    addresses of one import or batch share a few domains and IDNA checks dominate the cost."""
    return _validated(f"a@{domain}").rpartition("@")[2]


def normalize_email(value: str) -> str:
    """The address in normalised form (Unicode NFC, lower-case domain); `ValueError` if invalid.

    Syntax only: no DNS look-up, so validation is fast and works offline. An ASCII dot-atom local
    part with an ASCII domain takes a fast path with exactly email-validator's answer (its local
    part is valid as written; the domain is validated by the library once and remembered);
    everything else goes through the library whole.
    """
    if len(value) > MAX_EMAIL:
        raise ValueError(f"must be at most {MAX_EMAIL} characters")
    local, at, domain = value.rpartition("@")
    if at and _ASCII_LOCAL.fullmatch(local) and _ASCII_DOMAIN.fullmatch(domain):
        try:
            return f"{local}@{_normalized_domain(domain)}"
        except ValueError:
            pass  # the whole address through the library, for its own message
    return _validated(value)


def _validated(value: str) -> str:
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid e-mail address: {exc}") from None
    return str(result.normalized)


def check_timezone(value: str) -> str:
    """An IANA time-zone name such as `Europe/Berlin` (or `UTC`); `ValueError` otherwise,
    also for the names that are not a place (`localtime`, `Factory`, POSIX-style `EST5EDT`):
    the one rule is `schedule.is_valid_timezone`."""
    if not schedule.is_valid_timezone(value):
        raise ValueError(f"unknown time zone {value[:64]!r}; use an IANA name such as Europe/Berlin")
    return value


# Instants the API accepts: anything outside is a typo or an attack (year 1 became PostgreSQL's
# -infinity and sent a newsletter at once; year 9999 with an offset overflows).
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
# RFC 3339: a date, `T` (or a space), a time to the second at most to the microsecond, an offset.
_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:[Zz]|[+-]\d{2}:?\d{2})?")
INSTANT_EXAMPLE = "2026-12-01T09:00:00+01:00"


def parse_instant(value: Any, *, naive: str = "refuse") -> datetime:
    """An ISO 8601 / RFC 3339 date and time between EARLIEST and LATEST, as an aware UTC datetime;
    `ValueError` (a sentence fit to show) for anything else: numbers (epoch seconds), dates
    without a time, other spellings, out-of-range years. Without an offset the value is refused,
    or read as UTC with `naive="utc"` (the CLI, the console's UTC form field)."""
    if isinstance(value, datetime):
        at = value
    elif isinstance(value, str) and len(value) <= 40 and _INSTANT.fullmatch(value.strip()):
        try:
            at = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"is not a real date and time; write it like {INSTANT_EXAMPLE}") from None
    else:
        raise ValueError(f"must be an ISO 8601 date and time such as {INSTANT_EXAMPLE}, not a number")
    if at.tzinfo is None or at.utcoffset() is None:
        if naive != "utc":
            raise ValueError(f"must include a time zone offset, e.g. {INSTANT_EXAMPLE}")
        at = at.replace(tzinfo=UTC)
    if not EARLIEST <= at < LATEST:
        raise ValueError(f"must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
    return at.astimezone(UTC)


def check_locale(value: str) -> str:
    """A BCP 47-like language tag (`en`, `de-CH`, `pt_BR`), normalised to use a hyphen."""
    if len(value) > 35 or not _LOCALE.fullmatch(value):
        raise ValueError("must be a language tag such as en or de-CH")
    return value.replace("_", "-")


_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")
# The host of an https URL shown as an image on pages (and named in their Content-Security-Policy):
# letters, digits, dots and hyphens, an optional port; nothing that could end a CSP directive.
_HTTPS_IMAGE = re.compile(
    r"https://[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?(?::\d{1,5})?/[^\s\x00-\x1f\x7f\"'<>\\`]*"
)


def check_colour(value: str) -> str:
    """A colour written `#rrggbb`, lower-cased; `ValueError` otherwise (nothing that could leave a
    CSS declaration)."""
    if not _COLOUR.fullmatch(value):
        raise ValueError("must be a colour written #rrggbb, such as #1d4ed8")
    return value.lower()


def check_https_image(value: str) -> str:
    """An absolute https URL with a plain host name and a path (`https://www.example.org/logo.png`),
    without spaces, quotes or angle brackets; `ValueError` otherwise."""
    if len(value) > MAX_URL or not _HTTPS_IMAGE.fullmatch(value):
        raise ValueError("must be an https:// URL of an image, such as https://www.example.org/logo.png")
    return value


def check_data(value: dict[str, Any]) -> dict[str, Any]:
    """A JSON object of at most MAX_DATA_BYTES when encoded."""
    encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if _NUL_ESCAPE.search(encoded):  # PostgreSQL's jsonb cannot hold NUL
        raise ValueError("must not contain NUL characters (\\u0000)")
    size = len(encoded.encode())
    if size > MAX_DATA_BYTES:
        raise ValueError(f"is {size} bytes as JSON; the limit is {MAX_DATA_BYTES}")
    return value


# Hot-path rules are regular expressions, checked by pydantic-core without calling Python;
# `errors_of` turns their "should match pattern" messages into the sentences below.
# One line also refuses the text-direction controls (U+202E turns "gpj.exe" into "exe.jpg" in a
# Subject or a From name): names and subjects never need them, right-to-left text does not either.
ONE_LINE = r"^[^\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]*$"
TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
EXTERNAL_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@+\-]*$"
CATEGORY = r"^[a-z0-9][a-z0-9._\-]*$"
# An absolute http(s) URL with a host, without spaces or control characters.
URL = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#\x00-\x1f\x7f]+(?:[/?#][^\s\x00-\x1f\x7f]*)?$"
PATTERN_MESSAGES = {
    ONE_LINE: "must be one line without control or text-direction characters (U+202E ...)",
    TEXT: "must not contain control characters",
    EXTERNAL_ID: "may contain letters, digits and . _ : @ + - and must start with a letter or digit",
    CATEGORY: "may contain lower-case letters, digits and . _ - and must start with a letter or digit",
    URL: "must be an absolute http:// or https:// URL",
}

Email = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=3), AfterValidator(normalize_email)
]
TimeZone = Annotated[str, StringConstraints(strip_whitespace=True), AfterValidator(check_timezone)]
Locale = Annotated[str, StringConstraints(strip_whitespace=True), AfterValidator(check_locale)]
ExternalId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_EXTERNAL_ID, pattern=EXTERNAL_ID)]
Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME, pattern=ONE_LINE)
]
Category = Annotated[str, StringConstraints(min_length=1, max_length=MAX_CATEGORY, pattern=CATEGORY)]
Subject = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_SUBJECT, pattern=ONE_LINE)
]
Body = Annotated[str, StringConstraints(min_length=1, max_length=MAX_BODY, pattern=TEXT)]
Url = Annotated[str, StringConstraints(strip_whitespace=True, max_length=MAX_URL, pattern=URL)]
Data = Annotated[dict[str, Any], AfterValidator(check_data)]
_ONE_LINE = re.compile(ONE_LINE)
# Every date-time input: strict ISO 8601 with an offset, bounded, never an epoch number.
Instant = Annotated[datetime, BeforeValidator(parse_instant)]


def check_one_line(value: str) -> str:
    """`value` when it is one line without control or text-direction characters (`ONE_LINE`,
    for fields that are not a `Name` or `Subject`); `ValueError` otherwise."""
    if not _ONE_LINE.fullmatch(value):
        raise ValueError(PATTERN_MESSAGES[ONE_LINE])
    return value


def errors_of(exc: ValidationError, prefix: str = "", *, whole: str = "body") -> list[FieldError]:
    """Pydantic errors as `[{field, message}]`, with dotted field paths (`messages.3.subject`) and
    readable messages for the patterns this module names.

    `whole` names an error about the value as a whole (e.g. not an object).
    """
    out: list[FieldError] = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"])
        field = f"{prefix}.{loc}" if prefix and loc else (prefix or loc or whole)
        if err["type"] == "string_pattern_mismatch":
            message = PATTERN_MESSAGES.get(str((err.get("ctx") or {}).get("pattern")), err["msg"])
        else:
            message = err["msg"].removeprefix("Value error, ")
        out.append({"field": field, "message": message})
    return out


def parse(model: type[M], data: Any, prefix: str = "") -> M:
    """Validate `data` against `model`; Problem 422 listing every invalid field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Problem(422, "the request body is not valid", errors=errors_of(exc, prefix)) from None
