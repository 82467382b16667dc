"""Reading request headers and cookies that must be text: one decoding path for all of them.

aiohttp hands header bytes that are not UTF-8 over as strings with surrogate escapes; the first
`.encode()` of such a value (hashing an API key or a session id) raised UnicodeEncodeError, a 500.
The values read here (API keys, session ids, CSRF tokens) are printable ASCII by construction,
so anything else is treated as absent: the caller answers as it would without the header
(401, the sign-in page).
"""

from __future__ import annotations

from aiohttp import web

MAX_VALUE = 1024


def is_token_text(value: str) -> bool:
    """True for a value made of printable ASCII (no control characters, no escaped bytes)."""
    return len(value) <= MAX_VALUE and value.isascii() and value.isprintable()


def text_header(request: web.Request, name: str) -> str | None:
    """Header `name` when present and printable ASCII, else None."""
    value = request.headers.get(name)
    return value if value is not None and is_token_text(value) else None


def text_cookie(request: web.Request, name: str) -> str | None:
    """Cookie `name` when present and printable ASCII, else None."""
    value = request.cookies.get(name)
    return value if value is not None and is_token_text(value) else None
