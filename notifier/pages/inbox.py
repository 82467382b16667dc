"""The hosted inbox page, `GET` / `POST /inbox/{token}`: the member's inbox rendered on the server
and usable with no JavaScript and no cookie, reached from the "Open your inbox" link of digests.

GET shows a view (`?view=unread|all|archived`, `?category=`, `?before=` for older messages) with
times in the member's time zone. POST is a small form per action (read, unread, archive,
unarchive, read-all) carrying the page's nonce; it checks nonce and origin (notifier.pages), acts
through the domain (`notifier.inbox`), tells the member's open inboxes, and answers 303 back to
the view it came from.
"""

from __future__ import annotations

from typing import cast
from urllib.parse import urlencode

from aiohttp import web

from notifier import i18n, inbox, inbox_rings, pages, tokens
from notifier.db import Q
from notifier.resources import POOL, REDIS, SETTINGS

PAGE_SIZE = 20
VIEWS = (("unread", i18n.N_("Unread")), ("all", i18n.N_("All")), ("archived", i18n.N_("Archived")))
ACTIONS = ("read", "unread", "archive", "unarchive")


def _view_query(view: str, category: str | None, before: int | None = None) -> str:
    params: dict[str, str] = {"view": view}
    if category:
        params["category"] = category
    if before is not None:
        params["before"] = str(before)
    return "?" + urlencode(params)


def _before(raw: str | None) -> int | None:
    if raw and raw.isascii() and raw.isdigit() and len(raw) <= 18:
        return int(raw)
    return None


def _category(raw: str | None) -> str | None:
    return raw if raw and len(raw) <= 64 and raw.isprintable() else None


async def get_inbox(request: web.Request) -> web.Response:
    """The member's inbox; 404 page for a forged, altered or erased member's link."""
    token = request.match_info["token"]
    settings = request.app[SETTINGS]
    found = tokens.verify(settings.secret, token, "inbox")
    if found is None:
        return pages.not_found(request)
    pool = request.app[POOL]
    account = await pool.fetchrow(Q.member_account, found.account_id)
    if account is None:
        return pages.not_found(request)
    view = request.query.get("view", "unread")
    if view not in dict(VIEWS):
        view = "unread"
    category = _category(request.query.get("category"))
    before = _before(request.query.get("before"))
    counts = await inbox.member_counts(pool, found.account_id)
    page = await inbox.member_page(
        pool,
        account["external_id"],
        before=before,
        unread=view == "unread",
        category=category,
        archived=inbox.MEMBER_VIEWS[view],
        limit=PAGE_SIZE,
    )
    if page is None:  # erased meanwhile
        return pages.not_found(request)
    language = i18n.normalise(account["locale"])
    items = [
        {
            **inbox.member_item(r),
            "when": i18n.format_when(r["created_at"], account["timezone"], language, with_year=True),
        }
        for r in page.rows
    ]
    base = f"/inbox/{token}"
    return pages.render(
        request,
        "inbox.html",
        locale=language,
        title=i18n.N_("Your inbox"),
        name=account["name"],
        timezone=account["timezone"],
        action=base,
        nonce=pages.form_nonce(settings.secret, token),
        view=view,
        views=[(key, label, base + _view_query(key, category)) for key, label in VIEWS],
        category=category,
        categories=[
            (name, n, base + _view_query(view, name)) for name, n in sorted(counts["by_category"].items())
        ],
        all_categories=base + _view_query(view, None),
        counts=counts,
        items=items,
        older=base + _view_query(view, category, page.next_before) if page.next_before else None,
        back=_view_query(view, category, before),
        done=request.query.get("done"),
    )


async def post_inbox(request: web.Request) -> web.Response:
    """Act on one message (or all): 303 back to the view; 403 for a stale or cross-site form, 404
    for a message that is not the member's, 422 for an unknown action."""
    token = request.match_info["token"]
    posted = await pages.fresh_form(
        request, "inbox", i18n.N_("use the buttons of your inbox page"), again=f"/inbox/{token}"
    )
    if isinstance(posted, web.Response):
        return posted
    found, form = posted
    action = str(form.get("action", ""))
    pool = request.app[POOL]
    if action == "read-all":
        await inbox.member_read_all(pool, found.account_id, _category(str(form.get("category", ""))))
    elif action in ACTIONS:
        raw_id = str(form.get("id", ""))
        message_id = int(raw_id) if raw_id.isascii() and raw_id.isdigit() and len(raw_id) <= 18 else None
        row = None
        if message_id is not None:
            row = await inbox.member_mark(
                pool, found.account_id, message_id, cast(inbox.MemberAction, action)
            )
        if row is None:
            return pages.render(
                request,
                "invalid.html",
                status=404,
                title=i18n.N_("This message is not in your inbox"),
                message=i18n.N_("Nothing was changed. Open your inbox again from the link in your e-mail."),
            )
    else:
        return pages.render(
            request,
            "invalid.html",
            status=422,
            title=i18n.N_("Unknown action"),
            message=i18n.N_("Nothing was changed: use the buttons of your inbox page."),
        )
    await inbox_rings.announce_changed(request.app[REDIS], found.account_id)
    back = str(form.get("back", ""))
    if not back.startswith("?view=") or "\n" in back or "\r" in back:
        back = "?view=unread"
    raise web.HTTPSeeOther(f"/inbox/{token}{back}&done={action}")


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/inbox/{token}", get_inbox)
    app.router.add_post("/inbox/{token}", post_inbox)
