"""The preference centre, `GET` / `POST /preferences/{token}`: a server-rendered form (no
JavaScript, no cookie) where a member lowers their digest frequency instead of leaving, changes
the hour, weekday and time zone, chooses how often each declared category reaches them, sets
quiet hours, and opts in or out of the newsletter and of every other list (each with its own
wording, `lists.wording`).

POST checks the form's nonce and origin (see notifier.pages), saves through
`preferences.apply_preferences` (audit actor: the member; newsletter consent with the wording
shown), records a `preferences_changed` event (and `unsubscribed` / `resubscribed` for the
newsletter) naming the e-mail the link came from, and shows what was saved.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import asyncpg
from aiohttp import web
from babel import dates

from notifier import audit, categories, consent, i18n, lists, pages, preferences, schedule
from notifier.db import Q
from notifier.resources import POOL, SETTINGS

N_ = i18n.N_
# How the centre names each of schedule.FREQUENCIES, in the order it shows them (English messages,
# translated when the page is rendered).
FREQUENCIES: tuple[tuple[schedule.Frequency, str, str], ...] = (
    (
        "immediate",
        N_("As messages arrive"),
        N_("one e-mail per new message, grouped when several come at once"),
    ),
    ("hourly", N_("Hourly"), N_("at most one summary an hour")),
    ("daily", N_("Daily"), N_("one summary a day at the hour you choose")),
    ("weekly", N_("Weekly"), N_("one summary a week on the day and hour you choose")),
    ("off", N_("Never"), N_("no summaries; your inbox stays on the website")),
)
# What the member should do about a field the domain refused, in their language (the domain's own
# message, in English, for a field not listed).
FIX = {
    "digest_frequency": N_("Choose one of the frequencies shown."),
    "digest_hour": N_("Choose an hour from the list."),
    "digest_weekday": N_("Choose a day of the week from the list."),
    "timezone": N_("Choose a time zone from the list."),
}
LABELS = {
    "digest_frequency": N_("How often"),
    "digest_hour": N_("Hour"),
    "digest_weekday": N_("Day of the week"),
    "timezone": N_("Time zone"),
    "newsletter": N_("Newsletter"),
    "categories": N_("Topics"),
    "quiet_hours": N_("Quiet hours"),
}
# The form's fields for a category's frequency: `category.<key>`; "" is the default.
CATEGORY_FIELD = "category."


@lru_cache(maxsize=1)
def timezones() -> list[str]:
    return sorted(schedule.timezone_names())


def weekdays(locale: str) -> list[str]:
    """Monday to Sunday, named in `locale` (babel's calendar data, capitalised for a list)."""
    names = dates.get_day_names("wide", locale=locale)
    return [names[n][:1].upper() + names[n][1:] for n in range(7)]


def _describe(
    field: str, value: Any, locale: str, declared: Mapping[str, categories.Category] | None = None
) -> str:
    """A saved value as the member reads it, in their language (a category by its label among
    `declared`, else its key)."""
    if field == "digest_frequency":
        label = next((label for key, label, _ in FREQUENCIES if key == value), None)
        return i18n.gettext(locale, label) if label else str(value)
    if field == "digest_hour":
        return f"{int(value):02d}:00"
    if field == "digest_weekday":
        return weekdays(locale)[int(value) - 1]
    if field == "newsletter":
        return i18n.gettext(locale, N_("subscribed") if value else N_("not subscribed"))
    if field == "categories":
        named = declared or {}
        chosen = [
            f"{named[key].label(locale) if key in named else key}: "
            f"{_describe('digest_frequency', c['frequency'], locale)}"
            for key, c in sorted(value.items())
        ]
        return ", ".join(chosen) or i18n.gettext(locale, N_("all as the defaults"))
    if field == "quiet_hours":
        if not value:
            return i18n.gettext(locale, N_("no quiet hours"))
        text = (
            N_("%(start)s to %(end)s and all weekend")
            if value.get("weekends")
            else N_("%(start)s to %(end)s")
        )
        return i18n.gettext(locale, text) % {"start": value["start"], "end": value["end"]}
    return str(value)


def _topics(declared: list[Any], values: dict[str, Any], locale: str) -> list[dict[str, Any]]:
    """One row per declared category for the form: its label and description in the member's
    language, what "default" means for this member, and the member's choice ("" for default)."""
    choices = values.get("categories") or {}
    rows = []
    for c in declared:
        default = categories.effective_frequency(
            c["key"],
            {},
            values["digest_frequency"],
            categories.Category(c["key"], c["default_frequency"], c["required"]),
        )
        chosen = choices.get(c["key"])
        rows.append(
            {
                "key": c["key"],
                "label": categories.text_for(c["labels"], locale, c["key"]),
                "description": categories.text_for(c["descriptions"], locale, ""),
                "required": c["required"],
                "default": _describe("digest_frequency", default, locale),
                "chosen": chosen.get("frequency") if isinstance(chosen, dict) else "",
            }
        )
    return rows


async def _page(
    request: web.Request,
    token: str,
    ref: pages.EmailRef,
    values: dict[str, Any],
    locale: str,
    *,
    status: int = 200,
    saved: list[dict[str, str]] | None = None,
    errors: dict[str, str] | None = None,
    other_lists: list[dict[str, Any]] | None = None,
    conn: asyncpg.Connection | None = None,
) -> web.Response:
    """The form; `conn`: the connection the caller holds, if any (never a second one from the pool)."""
    settings = request.app[SETTINGS]
    declared = await (conn or request.app[POOL]).fetch(Q.categories_for_member)
    return pages.render(
        request,
        "preferences.html",
        status=status,
        locale=locale,
        title=N_("Your e-mail preferences"),
        action=f"/preferences/{token}{ref.query()}",
        nonce=pages.form_nonce(settings.secret, token),
        values=values,
        frequencies=FREQUENCIES,
        weekdays=list(enumerate(weekdays(locale), start=1)),
        hours=range(24),
        timezones=timezones(),
        topics=_topics(declared, values, locale),
        quiet=values.get("quiet_hours") or None,
        wording=i18n.gettext(locale, consent.WORDING),
        double_opt_in=settings.newsletter_double_opt_in,
        saved=saved,
        errors=errors or {},
        other_lists=other_lists or [],
    )


async def _other_lists(conn: Any, account_id: int, locale: str) -> list[dict[str, Any]]:
    """Every list but the default (shown as the newsletter), with the member's choice and the
    wording they agree to, in their language."""
    return [
        {"key": r["key"], "name": r["name"], "wording": lists.wording(r, locale), "subscribed": r["subscribed"],
         "double_opt_in": r["double_opt_in"]}
        for r in await lists.memberships(conn, account_id)
        if not r["is_default"]
    ]  # fmt: skip


async def get_preferences(request: web.Request) -> web.Response:
    """The form, filled with the member's current preferences."""
    linked = await pages.linked_member(request, "preferences")
    if linked is None:
        return pages.not_found(request)
    locale = i18n.normalise(linked.locale)
    other = await _other_lists(request.app[POOL], linked.found.account_id, locale)
    return await _page(request, linked.token, linked.ref, dict(linked.member), locale, other_lists=other)


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
    chosen = {
        str(name)[len(CATEGORY_FIELD) :]: ({"frequency": str(value)} if value else None)
        for name, value in form.items()
        if str(name).startswith(CATEGORY_FIELD)
    }
    if chosen:
        changes["categories"] = chosen
    if "quiet_form" in form:  # the quiet-hours fieldset was on the page that was posted
        changes["quiet_hours"] = (
            {
                "start": str(form.get("quiet_start", "")),
                "end": str(form.get("quiet_end", "")),
                "weekends": form.get("quiet_weekends") == "yes",
            }
            if form.get("quiet") == "yes"
            else None
        )
    return changes


async def post_preferences(request: web.Request) -> web.Response:
    """Save the form. 403 for a stale or cross-site form, 422 (the form again, with messages)
    for invalid values, 200 with the saved values otherwise."""
    token = request.match_info["token"]
    settings = request.app[SETTINGS]
    posted = await pages.fresh_form(
        request, "preferences", N_("submit the preference form from its page"), again=request.path_qs
    )
    if isinstance(posted, web.Response):
        return posted
    found, form = posted
    async with request.app[POOL].acquire() as conn:
        locale = i18n.normalise(await pages.member_locale(conn, found.account_id))
        other_before = await _other_lists(conn, found.account_id, locale)
        changes = _changes(form, other_before)
        ref = await pages.email_ref(conn, found.account_id, request.query.get("e"))
        # The member consents to the wording as the page showed it, in their language.
        wording = i18n.gettext(locale, consent.WORDING)
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
                    wording=wording,
                    wording_version=consent.WORDING_VERSION,
                    locale=locale,
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
                other_after = await _other_lists(conn, found.account_id, locale)
                declared = await categories.all_categories(conn) if "categories" in changed else {}
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
            errors = {
                e["field"]: i18n.gettext(locale, FIX[e["field"]]) if e["field"] in FIX else e["message"]
                for e in exc.errors or []
            }
            values = {**dict(before), **changes} if before is not None else changes
            if isinstance(changes.get("categories"), dict) and before is not None:
                values["categories"] = {
                    **before["categories"],
                    **{k: v for k, v in changes["categories"].items() if v is not None},
                }
            return await _page(
                request,
                token,
                ref,
                values,
                locale,
                status=422,
                errors=errors,
                other_lists=other_before,
                conn=conn,
            )
    saved = [
        {"label": i18n.gettext(locale, LABELS[k]), "value": _describe(k, v["after"], locale, declared)}
        for k, v in changed.items()
    ]
    saved += [
        {"label": x["name"], "value": _describe("newsletter", not x["subscribed"], locale)}
        for x in left_or_joined
    ]
    if (settings.newsletter_double_opt_in and changed.get("newsletter", {}).get("after")) or any(
        x["double_opt_in"] and not x["subscribed"] for x in left_or_joined
    ):
        saved.append(
            {
                "label": i18n.gettext(locale, N_("Next step")),
                "value": i18n.gettext(locale, N_("confirm with the link we are e-mailing you")),
            }
        )
    return await _page(
        request, token, ref, {**dict(before), **after}, locale, saved=saved, other_lists=other_after
    )


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/preferences/{token}", get_preferences)
    app.router.add_post("/preferences/{token}", post_preferences)
