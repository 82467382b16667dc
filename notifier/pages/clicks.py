"""`GET /c/{newsletter}/{link}`: a counted newsletter link (notifier.clicks).

Redirects (302) to the address that newsletter stored as that link, and only there: nothing of
the request is used as a destination, so an unknown newsletter or link is a 404 page, never an
open redirect. No cookie is set and nothing about the visitor is stored.

Counted: a GET. Not counted: HEAD (link checkers and mail scanners probing the address) and a
request that says it is a prefetch (`Sec-Purpose` / `Purpose: prefetch`); both are still
redirected. A security scanner that fetches every link with GET is counted like a person; with
no identity kept, telling one from the other is not possible, so the figure is "followed",
an upper bound of people clicking.
"""

from __future__ import annotations

from aiohttp import web

from notifier import clicks, pages
from notifier.resources import POOL

_MAX_DIGITS = {"newsletter": 18, "link": 9}


def _number(request: web.Request, name: str) -> int | None:
    raw = request.match_info[name]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > _MAX_DIGITS[name]:
        return None
    return int(raw)


def _is_prefetch(request: web.Request) -> bool:
    purpose = " ".join(request.headers.getall("Sec-Purpose", []) + request.headers.getall("Purpose", []))
    return "prefetch" in purpose.lower()


async def follow_link(request: web.Request) -> web.StreamResponse:
    """302 to the newsletter's own link (counted for a GET that is not a prefetch), or a 404 page."""
    newsletter_id, link = _number(request, "newsletter"), _number(request, "link")
    if newsletter_id is None or link is None:
        return pages.not_found(request)
    count = request.method == "GET" and not _is_prefetch(request)
    url = await clicks.follow(request.app[POOL], newsletter_id, link, count=count)
    if url is None:
        return pages.not_found(request)
    return web.Response(
        status=302,
        headers={"Location": url, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/c/{newsletter}/{link}", follow_link)
