"""VERP return paths: each e-mail's envelope sender names the e-mail, signed.

`bounces+{email_id}-{signature}@{bounce_domain}`: a delivery-status report sent back to that
address ties to the exact outbox row, and the signature (a truncated HMAC-SHA256 under the server
secret, 13 lower-case base32 characters, so it survives MTAs that fold local parts to one case)
means a report to a made-up address ties to nothing and suppresses no one. Verified against the
keyring (`Settings.keyring`), so rotating the secret keeps in-flight bounces working.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence

PREFIX = "bounces"
_SIG_BYTES = 8
_ADDRESS = re.compile(r"bounces\+([0-9]{1,18})-([a-z2-7]{13})@([a-z0-9.-]+)", re.ASCII)


def _signature(key: bytes, email_id: int) -> str:
    mac = hmac.new(key, b"notifier-verp:%d" % email_id, hashlib.sha256).digest()[:_SIG_BYTES]
    return base64.b32encode(mac).decode().rstrip("=").lower()


def return_path(key: bytes, email_id: int, domain: str) -> str:
    """The envelope sender for outbox row `email_id`."""
    return f"{PREFIX}+{email_id}-{_signature(key, email_id)}@{domain}"


def email_id(keys: Sequence[bytes], address: str, domain: str) -> int | None:
    """The outbox row a return path names, if `address` is one of ours at `domain` and its
    signature is genuine under a key of the ring; None otherwise (forged, altered, another
    domain). Case-insensitive; never raises on bad input."""
    match = _ADDRESS.fullmatch(address.strip().strip("<>").lower())
    if match is None or match[3] != domain.lower():
        return None
    found = int(match[1])
    if any(hmac.compare_digest(match[2], _signature(key, found)) for key in keys):
        return found
    return None


def is_ours(address: str, domain: str) -> bool:
    """Whether `address` is at the bounce domain (signed or not): what the inbound server accepts."""
    return address.strip().strip("<>").lower().rpartition("@")[2] == domain.lower()


def looks_signed(address: str, domain: str) -> bool:
    """Whether `address` has the shape of a return path at `domain` (`bounces+…@domain`), genuine
    or not."""
    local, _, at = address.strip().strip("<>").lower().rpartition("@")
    return at == domain.lower() and local.startswith(PREFIX + "+")
