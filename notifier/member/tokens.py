"""Member tokens: short-lived bearer tokens that name one member (by external id) for the member
API and the `<notifier-inbox>` component.

A token is ``v1.<id>.<issued>.<expires>.<mac>`` where ``<id>`` is the external id in unpadded
URL-safe base64, ``<issued>`` and ``<expires>`` are Unix seconds, and ``<mac>`` is the lowercase hex
HMAC-SHA256, keyed with the inbox secret (as its ASCII text), of everything before the last dot.
An organisation's backend can mint one without calling notifier (docs/inbox.md); the operator
prints the inbox secret with ``notifier inbox-secret``. It is derived from NOTIFIER_SECRET_KEY, so
changing that key ends every member token.

A token is refused (None) when it is malformed, altered or forged, expired, issued in the future,
lives longer than MAX_TTL, or was issued before its account was registered (less CLOCK_SKEW): an
erased account's tokens end with it and never open a later account with the same external id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

VERSION = "v1"
MIN_TTL = 60
MAX_TTL = 86400
DEFAULT_TTL = 3600
CLOCK_SKEW = 300  # seconds a minting backend's clock may be ahead of ours
MAX_LENGTH = 1024


def inbox_secret(secret_key: bytes) -> str:
    """The secret an organisation mints member tokens with, derived from the server secret."""
    return hmac.new(secret_key, b"notifier-inbox-token-secret", hashlib.sha256).hexdigest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _mac(secret: str, signed: str) -> str:
    return hmac.new(secret.encode(), signed.encode(), hashlib.sha256).hexdigest()


def mint(secret: str, external_id: str, expires: int, issued: int | None = None) -> str:
    """A token for the member with `external_id`, valid until the Unix time `expires`."""
    issued = int(time.time()) if issued is None else issued
    signed = f"{VERSION}.{_b64(external_id.encode())}.{issued}.{expires}"
    return f"{signed}.{_mac(secret, signed)}"


class Claims:
    """What a genuine token says: whose it is and when it was issued and ends."""

    __slots__ = ("expires", "external_id", "issued")

    def __init__(self, external_id: str, issued: int, expires: int) -> None:
        self.external_id = external_id
        self.issued = issued
        self.expires = expires


def _number(text: str) -> int | None:
    if not (text.isascii() and text.isdigit()) or len(text) > 12 or (len(text) > 1 and text[0] == "0"):
        return None
    return int(text)


def verify(secret: str, token: str, now: float | None = None) -> Claims | None:
    """The claims of a genuine, current token; None for anything else. Never raises on bad input.
    The caller still checks that the account exists and was registered before `issued`
    (`issued_for`)."""
    if not token or len(token) > MAX_LENGTH or not token.isascii():
        return None
    parts = token.split(".")
    if len(parts) != 5 or parts[0] != VERSION:
        return None
    signed, mac = token.rpartition(".")[0], parts[4]
    if not hmac.compare_digest(mac.encode(), _mac(secret, signed).encode()):
        return None
    issued, expires = _number(parts[2]), _number(parts[3])
    if issued is None or expires is None:
        return None
    current = time.time() if now is None else now
    if not issued - CLOCK_SKEW <= current < expires or expires - issued > MAX_TTL + CLOCK_SKEW:
        return None
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        external_id = raw.decode()
    except (binascii.Error, ValueError):
        return None
    if not external_id or _b64(raw) != parts[1]:
        return None
    return Claims(external_id, issued, expires)


def issued_for(claims: Claims, registered_at: float) -> bool:
    """Whether a token was issued for the account registered at `registered_at` (Unix time) and
    not for an earlier, erased account that had the same external id."""
    return claims.issued >= registered_at - CLOCK_SKEW
