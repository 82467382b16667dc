"""The preference centre, `GET` / `POST /preferences/{token}`: a server-rendered form (no
JavaScript, no cookie) where a member lowers their digest frequency instead of leaving, changes
the hour, weekday and time zone, and opts in or out of the newsletter and of every other list
(each with its own wording, `lists.wording`).

POST checks the form's nonce and origin (see notifier.pages), saves through
`preferences.apply_preferences` (audit actor: the member; newsletter consent with the wording
shown), records a `preferences_changed` event (and `unsubscribed` / `resubscribed` for the
newsletter) naming the e-mail the link came from, and shows what was saved.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from aiohttp import web

from notifier import audit, consent, lists, pages, preferences, schedule
from notifier.db import Q
from notifier.resources import POOL, SETTINGS

# How the centre names each of schedule.FREQUENCIES, in the order it shows them.
FREQUENCIES: tuple[tuple[schedule.Frequency, str, str], ...] = (
    ("immediate", "As messages arrive", "one e-mail per new message, grouped when several come at once"),
    ("hourly", "Hourly", "at most one summary an hour"),
    ("daily", "Daily", "one summary a day at the hour you choose"),
    ("weekly", "Weekly", "one summary a week on the day and hour you choose"),
    ("off", "Never", "no summaries; your inbox stays on the website"),
)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
LABELS = {
    "digest_frequency": "How often",
    "digest_hour": "Hour",
    "digest_weekday": "Day of the week",
    "timezone": "Time zone",
    "newsletter": "Newsletter",
}


@lru_cache(maxsize=1)
def timezones() -> list[str]:
    return sorted(schedule.timezone_names())


def _describe(field: str, value: Any) -> str:
    if field == "digest_frequency":
        return next(label for key, label, _ in FREQUENCIES if key == value)
    if field == "digest_hour":
        return f"{int(value):02d}:00"
    if field == "digest_weekday":
        return WEEKDAYS[int(value) - 1]
    if field == "newsletter":
        return "subscribed" if value else "not subscribed"
    return str(value)


def _page(
    request: web.Request,
    token: str,
    ref: pages.EmailRef,
    values: dict[str, Any],
    *,
    status: int = 200,
    saved: list[dict[str, str]] | None = None,
    errors: dict[str, str] | None = None,
    other_lists: list[dict[str, Any]] | None = None,
) -> web.Response:
    settings = request.app[SETTINGS]
    return pages.render(
        request,
        "preferences.html",
        status=status,
        title="Your e-mail preferences",
        action=f"/preferences/{token}{ref.query()}",
        nonce=pages.form_nonce(settings.secret, token),
        values=values,
        frequencies=FREQUENCIES,
        weekdays=list(enumerate(WEEKDAYS, start=1)),
        hours=range(24),
        timezones=timezones(),
        wording=consent.WORDING,
        double_opt_in=settings.newsletter_double_opt_in,
        saved=saved,
        errors=errors or {},
        other_lists=other_lists or [],
    )


async def _other_lists(conn: Any, account_id: int) -> list[dict[str, Any]]:
    """Every list but the default (shown as the newsletter), with the member's choice and the
    wording they agree to."""
    return [
        {"key": r["key"], "name": r["name"], "wording": lists.wording(r), "subscribed": r["subscribed"],
         "double_opt_in": r["double_opt_in"]}
        for r in await lists.memberships(conn, account_id)
        if not r["is_default"]
    ]  # fmt: skip


async def get_preferences(request: web.Request) -> web.Response:
    """The form, filled with the member's current preferences."""
    linked = await pages.linked_member(request, "preferences")
    if linked is None:
        return pages.not_found(request)
    other = await _other_lists(request.app[POOL], linked.found.account_id)
    return _page(request, linked.token, linked.ref, dict(linked.member), other_lists=other)


def _changes(form: Any, other_lists: list[dict[str, Any]]) -> dict[str, Any]:
    changes: dict[str, Any] = {"newsletter": form.get("newsletter") == "yes"}
    if other_lists:
        changes["lists"] = {x["key"]: form.get(f"list-{x['key']}") == "yes" for x in other_lists}
    for field in ("digest_frequency", "timezone"):
        if field in form:
            changes[field] = str(form[field])
    for field in ("digest_hour", "digest_weekday"):
        if field in form:
            raw = str(form[field]).strip()
            changes[field] = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 4 else raw
    return changes


async def post_preferences(request: web.Request) -> web.Response:
    """Save the form. 403 for a stale or cross-site form, 422 (the form again, with messages)
    for invalid values, 200 with the saved values otherwise."""
    token = request.match_info["token"]
    settings = request.app[SETTINGS]
    posted = await pages.signed_form(request, "preferences", "submit the preference form from its page")
    if isinstance(posted, web.Response):
        return posted
    found, form = posted
    if not pages.same_origin(request) or not pages.nonce_valid(
        settings.keyring, token, str(form.get("nonce", ""))
    ):
        return pages.render(
            request, "expired.html", status=403, title="Please try again", again=request.path_qs
        )
    async with request.app[POOL].acquire() as conn:
        other_before = await _other_lists(conn, found.account_id)
        changes = _changes(form, other_before)
        ref = await pages.email_ref(conn, found.account_id, request.query.get("e"))
        try:
            async with conn.transaction():
                before = await conn.fetchrow(Q.member_for_update, found.account_id)
                if before is None:
                    return pages.not_found(request)
                after = await preferences.apply_preferences(
                    conn,
                    found.account_id,
                    changes,
                    audit.MEMBER,
                    "preference-centre",
                    wording=consent.WORDING,
                    wording_version=consent.WORDING_VERSION,
                )
                changed = audit.diff(dict(before), {k: after[k] for k in preferences.FIELDS})
                if changed:
                    await pages.record_event(
                        conn,
                        "preferences_changed",
                        found.account_id,
                        ref,
                        "preference-centre",
                        {k: v["after"] for k, v in changed.items()},
                    )
                if "newsletter" in changed:
                    kind = "resubscribed" if after["newsletter"] else "unsubscribed"
                    await pages.record_event(
                        conn, kind, found.account_id, ref, "preference-centre", {"list": "newsletter"}
                    )
                other_after = await _other_lists(conn, found.account_id)
                left_or_joined = [
                    x
                    for x, y in zip(other_before, other_after, strict=True)
                    if x["subscribed"] != y["subscribed"]
                ]
                for x in left_or_joined:
                    kind = "unsubscribed" if x["subscribed"] else "resubscribed"
                    await pages.record_event(
                        conn, kind, found.account_id, ref, "preference-centre", {"list": x["key"]}
                    )
        except preferences.InvalidPreferences as exc:
            errors = {e["field"]: e["message"] for e in exc.errors or []}
            values = {**dict(before), **changes} if before is not None else changes
            return _page(request, token, ref, values, status=422, errors=errors, other_lists=other_before)
    saved = [{"label": LABELS[k], "value": _describe(k, v["after"])} for k, v in changed.items()]
    saved += [
        {"label": x["name"], "value": _describe("newsletter", not x["subscribed"])} for x in left_or_joined
    ]
    if settings.newsletter_double_opt_in and changed.get("newsletter", {}).get("after"):
        saved.append({"label": "Next step", "value": "confirm with the link we are e-mailing you"})
    if any(x["double_opt_in"] and not x["subscribed"] for x in left_or_joined):
        saved.append({"label": "Next step", "value": "confirm with the link we are e-mailing you"})
    return _page(request, token, ref, {**dict(before), **after}, saved=saved, other_lists=other_after)


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/preferences/{token}", get_preferences)
    app.router.add_post("/preferences/{token}", post_preferences)
