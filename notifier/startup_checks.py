"""Start-up checks for production: settings that make mail fail the receivers' rules are a
refusal or a warning, each with a one-line reason, before `notifier web` or `notifier worker`
starts anything (notifier.cli)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Literal
from urllib.parse import urlsplit

from notifier.settings import ConfigError, Settings

log = logging.getLogger("notifier.startup")


@dataclass(frozen=True)
class Finding:
    level: Literal["refuse", "warn"]
    reason: str


def _domain(address: str) -> str:
    return parseaddr(address)[1].rpartition("@")[2].lower().rstrip(".")


def _aligned(from_domain: str, dkim_domain: str) -> bool:
    """DMARC relaxed alignment, approximated without the public suffix list: the same domain, or
    one a subdomain of the other."""
    return (
        from_domain == dkim_domain
        or from_domain.endswith("." + dkim_domain)
        or dkim_domain.endswith("." + from_domain)
    )


def findings(settings: Settings) -> list[Finding]:
    """What is wrong for production with these settings (nothing outside production)."""
    if settings.env != "production":
        return []
    out: list[Finding] = []
    if urlsplit(settings.public_url).scheme != "https":
        out.append(
            Finding(
                "refuse",
                f"NOTIFIER_PUBLIC_URL is {settings.public_url}: one-click unsubscribe (RFC 8058) "
                "needs https links",
            )
        )
    senders = {
        "NOTIFIER_SERVICE_FROM": settings.service_from,
        "NOTIFIER_NEWSLETTER_FROM": settings.newsletter_from,
    }
    for name, address in senders.items():
        domain = _domain(address)
        if domain == "localhost" or domain.endswith(".localhost") or not domain:
            out.append(
                Finding("refuse", f"{name} is {address!r}: receivers reject mail from a localhost domain")
            )
    dkim = (settings.dkim_domain or "").lower().rstrip(".")
    if not dkim:
        out.append(
            Finding("warn", "NOTIFIER_DKIM_DOMAIN is not set: mail is unsigned and DMARC rests on SPF alone")
        )
    else:
        for name, address in senders.items():
            domain = _domain(address)
            if domain and domain != "localhost" and not _aligned(domain, dkim):
                out.append(
                    Finding(
                        "warn",
                        f"NOTIFIER_DKIM_DOMAIN {dkim} does not align with the {name} domain {domain}: "
                        "DMARC will not pass on DKIM",
                    )
                )
    if settings.webhooks_allow_private:
        out.append(
            Finding(
                "warn",
                "NOTIFIER_WEBHOOKS_ALLOW_PRIVATE is true: webhooks may reach private and loopback addresses",
            )
        )
    return out


def check_production(settings: Settings) -> list[Finding]:
    """Log each warning (one line each); raise ConfigError naming every refusal, on one line.
    Returns the findings when nothing is refused."""
    found = findings(settings)
    for finding in found:
        if finding.level == "warn":
            log.warning("start-up check: %s", finding.reason)
    refused = [f.reason for f in found if f.level == "refuse"]
    if refused:
        raise ConfigError("refused in production: " + "; ".join(refused))
    return found
