"""Input rules shared by the API: e-mail addresses, time zones, locales, identifiers and sizes.

Each rule is an `Annotated` type for pydantic models (a regular expression or a function raising
`ValueError` with a readable message), so `parse` answers one 422 listing every bad field.

Stored addresses are normalised here; the suppression list hashes them with
`notifier.suppression.address_hash` (trimmed and lower-cased).
"""

from __future__ import annotations

import functools
import json
import re
import zoneinfo
from typing import Annotated, Any, TypeVar

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, StringConstraints, ValidationError

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
ONE_LINE = r"^[^\x00-\x1f\x7f\u2028\u2029]*$"
TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
EXTERNAL_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@+\-]*$"
CATEGORY = r"^[a-z0-9][a-z0-9._\-]*$"
# An absolute http(s) URL with a host, without spaces or control characters.
URL = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#\x00-\x1f\x7f]+(?:[/?#][^\s\x00-\x1f\x7f]*)?$"
PATTERN_MESSAGES = {
    ONE_LINE: "must be one line without control characters",
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


def errors_of(exc: ValidationError, prefix: str = "", *, whole: str = "body") -> list[FieldError]:
    """`[{field, message}]` like `problems.validation_errors`, with readable pattern messages.

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
