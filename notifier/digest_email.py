"""A digest e-mail: what it holds (categories, newest first, counts and "and N more", when each
message arrived) and how it renders. The pass (notifier/digest.py) builds the content in SQL
(`build_digests`); `build_context` is the same in Python for previews, and a test keeps the two
equal. At send time `DigestRenderer` (the worker's renderer for kind "digest") leaves out
messages read or archived since the pass and renders `templates/mail/digest.*` in the member's
language, with dates for their language and time zone (notifier/i18n.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import jinja2

from notifier import categories, i18n, tokens
from notifier.db import Q
from notifier.mail.render import (
    Language,
    NothingToSend,
    OutgoingEmail,
    Rendered,
    TemplateError,
    Templates,
    languages,
)
from notifier.settings import Settings

TEMPLATE = "digest"
SNIPPET_CHARS = 160


# --- content -----------------------------------------------------------------------------------


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _snippet(body: str) -> tuple[str, bool]:
    """The body's start on one line, and whether it was cut (the template adds an ellipsis, so
    that ASCII content stays ASCII and goes out as 7bit, without encoding work)."""
    text = " ".join(body[:2000].split())
    if len(text) <= SNIPPET_CHARS:
        return text, False
    return text[: SNIPPET_CHARS - 1].rstrip(), True


def build_context(
    account: Mapping[str, Any],
    messages: Sequence[Mapping[str, Any]],
    settings: Settings,
    window_start: datetime,
    window_end: datetime,
) -> dict[str, Any]:
    """The template context of one digest, as the pass stores it in the outbox row (the pass
    builds it in SQL, `build_digests`; this Python twin serves previews, and a test keeps the
    two equal).

    `messages` newest first. Categories are ordered by their newest message; each shows at most
    `settings.digest_max_per_category` messages, newest first, and how many more there are.
    """
    limit = settings.digest_max_per_category
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for m in messages:
        groups.setdefault(m["category"], []).append(m)
    categories = []
    for name, items in groups.items():
        shown = []
        for m in items[:limit]:
            snippet, cut = _snippet(m["body"])
            shown.append(
                {
                    "id": m["id"],
                    "subject": m["subject"],
                    "snippet": snippet,
                    "cut": cut,
                    "url": m["url"],
                    "at": _iso(m["created_at"]),
                }
            )
        categories.append(
            {"name": name, "count": len(items), "messages": shown, "more": len(items) - len(shown)}
        )
    return {
        "name": account["name"],
        "frequency": account["digest_frequency"],
        "total": len(messages),
        "categories": categories,
        "inbox_url": tokens.inbox_link(settings, account["id"]),
        "window_start": _iso(window_start),
        "window_end": _iso(window_end),
    }


# --- rendering at send time ---------------------------------------------------------------------


def leave_out(context: Mapping[str, Any], gone: Mapping[str, set[int]]) -> dict[str, Any]:
    """The context without messages read or archived since the digest was built (`gone`: ids by
    category), counts and "and N more" adjusted. Raises NothingToSend when nothing is left: a
    digest held back (a temporary failure, a queue) must not tell a member about messages they
    have read since."""
    categories = []
    total = 0
    for category in context["categories"]:
        ids = gone.get(category["name"], set())
        count = category["count"] - len(ids)
        if count <= 0:
            continue
        shown = [m for m in category["messages"] if m.get("id") not in ids]
        categories.append({**category, "count": count, "messages": shown, "more": count - len(shown)})
        total += count
    if total == 0:
        raise NothingToSend("every message of the digest was read or archived before it was sent")
    return {**context, "categories": categories, "total": total}


Labels = Mapping[str, Mapping[str, str]]  # declared categories' labels: {key: {language: label}}


def labels_of(declared: Mapping[str, categories.Category]) -> dict[str, dict[str, str]]:
    """The labels of categories already read (`categories.all_categories`)."""
    return {key: dict(c.labels) for key, c in declared.items()}


async def category_labels(pool: asyncpg.Pool | asyncpg.Connection) -> dict[str, dict[str, str]]:
    """Every declared category's labels (a small table, read once per batch)."""
    return labels_of(await categories.all_categories(pool))


def _with_times(context: Mapping[str, Any], language: Language, labels: Labels) -> dict[str, Any]:
    """The context with each message's time (`at`, UTC) written for the member (`when`), once for
    both parts, and each category named by its label in the member's language; contexts stored
    before `at` keep their `when`. (The templates' `when` filter does the same for a renderer that
    skips this, at twice the cost.)"""
    zone, locale = language.timezone, language.locale
    named = [
        {
            **category,
            "name": categories.text_for(labels.get(category["name"]) or {}, locale, category["name"]),
            "messages": [
                {**m, "when": i18n.format_instant(m["at"], zone, locale)} if "at" in m else m
                for m in category["messages"]
            ],
        }
        for category in context["categories"]
    ]
    return {**context, "categories": named, "time_zone": zone}


def render_digest(
    templates: Templates, context: Mapping[str, Any], language: Language, labels: Labels | None = None
) -> Rendered:
    """Subject, text and HTML of a digest in `language`, each message's time written for the
    member's language and time zone and each category by its declared label (`labels`). The HTML
    template carries its styles inline already, so no CSS inliner runs (it would cost more than
    rendering). Raises TemplateError."""
    context = _with_times(context, language, labels or {})
    subject_template, text_template, html_template = templates.compiled(TEMPLATE, language.locale)
    try:
        subject = subject_template.render(context)
        text = text_template.render(context)
        html = html_template.render(context)
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"template {TEMPLATE!r}: {exc.message}", template=TEMPLATE) from None
    return Rendered(" ".join(subject.split()), text, html)


class DigestRenderer:
    """Delivery's renderer for kind "digest": before each batch, one query finds messages read or
    archived since their digest was built, and those are left out of the e-mail."""

    def __init__(self, settings: Settings, templates: Templates) -> None:
        self.templates = templates
        self._gone: dict[int, dict[str, set[int]]] = {}
        self._languages: dict[int, Language] = {}
        self._labels: Labels = {}

    async def prepare(self, pool: asyncpg.Pool, emails: Sequence[OutgoingEmail]) -> None:
        self._languages.update(await languages(pool, emails))
        self._labels = await category_labels(pool)
        digest_ids = [e.digest_id for e in emails if e.digest_id is not None]
        if not digest_ids:
            return
        for row in await pool.fetch(Q.digest_messages_gone, digest_ids):
            self._gone.setdefault(row["digest_id"], {})[row["category"]] = set(row["ids"])

    def render(self, email: OutgoingEmail, context: Mapping[str, Any]) -> Rendered:
        gone = self._gone.pop(email.digest_id, None) if email.digest_id is not None else None
        language = self._languages.pop(email.id, None) or Language()
        return render_digest(
            self.templates, leave_out(context, gone) if gone else context, language, self._labels
        )
