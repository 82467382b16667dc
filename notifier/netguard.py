"""Which network addresses a webhook may be sent to: public ones only, unless the settings allow
private, loopback and link-local destinations (development and tests).

Framework-free: the API checks a URL when it is given (`check_destination`), and the webhook
client (notifier.webhook_client) checks every address it connects to, so a name that resolves
to a public address at registration and to a private one later is still refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class DestinationRefused(Exception):
    """The URL's host is, or resolves to, an address webhooks may not reach; the message says why."""


def address_refused(address: str) -> str | None:
    """Why `address` may not be reached (private, loopback, link-local, ...), or None when it is
    a public unicast address. An IPv4 address mapped into IPv6 is judged as the IPv4 one."""
    try:
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind, flag in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("private", ip.is_private),
        ("multicast", ip.is_multicast),
        ("unspecified", ip.is_unspecified),
        ("reserved", ip.is_reserved),
    ):
        if flag:
            return f"{ip} is a {kind} address"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (A and AAAA); DestinationRefused when it does not resolve."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise DestinationRefused(f"the host {host!r} does not resolve ({exc})") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def check_destination(url: str, *, allow_private: bool) -> None:
    """Refuse (DestinationRefused) a URL whose host is or resolves to any address that is not
    public; with `allow_private`, only check that it resolves."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = await resolve(host, port)
    if allow_private:
        return
    for address in addresses:
        why = address_refused(address)
        if why is not None:
            raise DestinationRefused(
                f"{host}: {why}; webhooks go only to public "
                "addresses (NOTIFIER_WEBHOOKS_ALLOW_PRIVATE=true allows others, for development)"
            )
