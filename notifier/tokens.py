"""Signed, opaque tokens for links in e-mails (unsubscribe, preference centre, confirmation, the
hosted inbox page).

A token names a member (account id), a list and a purpose, and carries a truncated HMAC-SHA256
under the server secret. It is 35 URL-safe characters and reveals nothing readable. Tokens do not
expire: an unsubscribe link must keep working for as long as the e-mail exists.

The secret can be rotated: tokens are signed with the current key and verified against a keyring
(`Settings.keyring`: the current key, then NOTIFIER_OLD_SECRET_KEYS), so links signed with an
older key keep working for as long as that key stays on the ring.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from notifier.settings import Settings

Purpose = Literal["unsubscribe", "preferences", "confirm", "inbox"]
# `list`: one of the lists of notifier/lists.py other than the default (`newsletter`), by id.
ListName = Literal["digest", "newsletter", "all", "list"]

_PURPOSES: dict[str, int] = {"unsubscribe": 1, "preferences": 2, "confirm": 3, "inbox": 4}
_LISTS: dict[str, int] = {"digest": 1, "newsletter": 2, "all": 3, "list": 4}
_PURPOSE_NAMES = {v: k for k, v in _PURPOSES.items()}
_LIST_NAMES = {v: k for k, v in _LISTS.items()}
_LAYOUT = struct.Struct(">BBQ")  # version+purpose, list, account id
_LIST_ID = struct.Struct(">I")  # follows the layout when the list is `list`: the list's id
_MAC_BYTES = 16
_VERSION = 1


@dataclass(frozen=True)
class Token:
    purpose: Purpose
    list: ListName
    account_id: int
    list_id: int | None = None  # set when `list` is "list"


def _mac(secret: bytes, payload: bytes) -> bytes:
    # The one-shot `hmac.digest` (OpenSSL, no HMAC object): a bulk e-mail signs two links.
    return hmac.digest(secret, b"notifier-token:" + payload, "sha256")[:_MAC_BYTES]


def sign(
    secret: bytes, purpose: Purpose, account_id: int, list_name: ListName = "all", list_id: int | None = None
) -> str:
    """A token for `purpose` naming the account and list (`list` with the list's `list_id`; 40
    characters then, 35 otherwise)."""
    if (list_name == "list") != (list_id is not None):
        raise ValueError("a list id goes with the list name `list`, and only with it")
    payload = _LAYOUT.pack((_VERSION << 4) | _PURPOSES[purpose], _LISTS[list_name], account_id)
    if list_id is not None:
        payload += _LIST_ID.pack(list_id)
    return base64.urlsafe_b64encode(payload + _mac(secret, payload)).decode().rstrip("=")


def verify(keys: bytes | Sequence[bytes], token: str, purpose: Purpose) -> Token | None:
    """The token's contents if it is genuine under one of `keys` (a keyring, current key first,
    or one key) and made for `purpose`; None for anything else (forged, altered, truncated,
    another purpose, signed with a key no longer on the ring). Never raises on bad input."""
    if not token or len(token) > 64:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(raw) not in (_LAYOUT.size + _MAC_BYTES, _LAYOUT.size + _LIST_ID.size + _MAC_BYTES):
        return None
    # The decoder skips characters outside the alphabet, accepts `+/` and padding, and ignores
    # the spare bits of the last character: only the one canonical spelling is the token.
    if base64.urlsafe_b64encode(raw).decode().rstrip("=") != token:
        return None
    payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    keyring = (keys,) if isinstance(keys, bytes) else keys
    if not any(hmac.compare_digest(mac, _mac(key, payload)) for key in keyring):
        return None
    head, list_code, account_id = _LAYOUT.unpack(payload[: _LAYOUT.size])
    if head >> 4 != _VERSION or _PURPOSE_NAMES.get(head & 0x0F) != purpose or list_code not in _LIST_NAMES:
        return None
    list_id = None
    if len(payload) > _LAYOUT.size:
        if _LIST_NAMES[list_code] != "list":
            return None
        (list_id,) = _LIST_ID.unpack(payload[_LAYOUT.size :])
    elif _LIST_NAMES[list_code] == "list":
        return None
    return Token(purpose, _LIST_NAMES[list_code], account_id, list_id)  # type: ignore[arg-type]


def inbox_link(settings: Settings, account_id: int) -> str:
    """Where e-mails send a member to read their inbox: NOTIFIER_INBOX_URL when the organisation
    has its own page, else the hosted page under a signed link (`/inbox/{token}`)."""
    if settings.inbox_url:
        return settings.inbox_url
    return f"{settings.public_url}/inbox/{sign(settings.secret, 'inbox', account_id)}"
