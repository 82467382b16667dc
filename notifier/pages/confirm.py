"""The double opt-in confirmation page: `GET /confirm/{token}` shows a button (link scanners
change nothing), its `POST` confirms the opt-in (`notifier.consent.confirm`)."""

from __future__ import annotations

from aiohttp import web

from notifier import audit, i18n, pages, tokens
from notifier.consent import confirm
from notifier.resources import POOL, SETTINGS


async def get_confirm(request: web.Request) -> web.Response:
    """A page with a button; GET changes nothing (mail scanners follow links)."""
    found = tokens.verify(request.app[SETTINGS].keyring, request.match_info["token"], "confirm")
    if found is None:
        return pages.not_found(request)
    return pages.render(
        request,
        "confirm.html",
        locale=await pages.member_locale(request.app[POOL], found.account_id),
        title=i18n.N_("Confirm your newsletter subscription"),
        done=False,
        nonce=pages.form_nonce(request.app[SETTINGS].secret, request.match_info["token"]),
    )


async def post_confirm(request: web.Request) -> web.Response:
    """Confirm the opt-in named by the token (the form's nonce and origin are checked)."""
    posted = await pages.fresh_form(
        request, "confirm", i18n.N_("press the button on the confirmation page"), again=request.path
    )
    if isinstance(posted, web.Response):
        return posted
    found, _ = posted
    async with request.app[POOL].acquire() as conn, conn.transaction():
        done = await confirm(conn, found.account_id, found.list_id)
        if done:
            await pages.record_event(
                conn, "confirmed", found.account_id, pages.EmailRef(), "confirm-link", {}
            )
            await audit.record(
                conn,
                found.account_id,
                audit.MEMBER,
                "consent.confirm",
                {"topic": "newsletter" if found.list_id is None else f"list:{found.list_id}"},
            )
        locale = await pages.member_locale(conn, found.account_id)
    return pages.render(
        request,
        "confirm.html",
        locale=locale,
        title=i18n.N_("Subscription confirmed"),
        done=True,
        confirmed=done,
        nonce="",
    )


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/confirm/{token}", get_confirm)
    app.router.add_post("/confirm/{token}", post_confirm)
