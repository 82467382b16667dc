"""Rendering e-mails from templates, and the renderers of a worker process by kind of e-mail.

Templates live in `templates/mail/`. An e-mail template `NAME` (e.g. `service/welcome`) is three files:
`NAME.subject.txt` (one line), `NAME.html` and `NAME.txt`; the HTML and text files extend the one
shared layout (`base.html`, `base.txt`). HTML is autoescaped, text is not; both use
`StrictUndefined`, so a missing variable is an error that names it, never an empty string. CSS in
the HTML is inlined (`css-inline`) because many mail clients ignore `<style>`.

E-mails speak their member's language (`accounts.locale`, read at send time by `languages`; an
e-mail without an account speaks the `locale` its context was stored with): the templates' texts
come from the gettext catalogues (notifier/i18n.py), and a template may also have a variant per
language, `FOLDER/LANG/NAME.*` (e.g. `service/de/welcome.html`), used instead of `FOLDER/NAME.*`
for members of that language; without one, the shared template in the member's language.

The worker renders at send time. Which renderer an e-mail uses depends on its kind: the default
(`TemplateRenderer`) renders the row's `template` with its `context`; the worker names the others
when it builds its `Renderers` (`workers.jobs.renderers`) — e.g. newsletters render the shared
body once per newsletter and only the personal parts per recipient (see docs/delivery.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import css_inline
import jinja2

from notifier import i18n, templating
from notifier.brand import BrandCache
from notifier.db import Q
from notifier.settings import Settings

TEMPLATES_DIR = templating.TEMPLATES_DIR / "mail"


class TemplateError(Exception):
    """An unknown template or a variable the template needs that the context lacks."""

    def __init__(self, message: str, *, template: str, variable: str | None = None) -> None:
        super().__init__(message)
        self.template = template
        self.variable = variable


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


@dataclass(frozen=True)
class OutgoingEmail:
    """A claimed outbox row, as a renderer sees it."""

    id: int
    kind: str
    account_id: int | None
    to_address: str
    template: str | None
    subject: str | None
    context: Mapping[str, Any]
    digest_id: int | None = None
    newsletter_id: int | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> OutgoingEmail:
        """The e-mail an `emails` row describes (as claimed by delivery)."""
        return cls(
            id=row["id"],
            kind=row["kind"],
            account_id=row["account_id"],
            to_address=row["to_address"],
            template=row["template"],
            subject=row["subject"],
            context=row["context"] or {},
            digest_id=row["digest_id"],
            newsletter_id=row["newsletter_id"],
        )


@dataclass(frozen=True)
class Language:
    """What an e-mail is written in: a shipped language and the member's time zone."""

    locale: str = i18n.DEFAULT
    timezone: str = "UTC"


def language_of(email: OutgoingEmail) -> Language:
    """The language an e-mail's own context names (stored when it was queued), else English."""
    return Language(i18n.normalise(email.context.get("locale")))


async def languages(pool: asyncpg.Pool, emails: Sequence[OutgoingEmail]) -> dict[int, Language]:
    """The language of each e-mail (by e-mail id) as its member chose it now, in one query; an
    e-mail without an account (or whose account is gone) gets `language_of` it."""
    found = {e.id: language_of(e) for e in emails}
    account_ids = sorted({e.account_id for e in emails if e.account_id is not None})
    if account_ids:
        rows = {r["id"]: r for r in await pool.fetch(Q.account_languages, account_ids)}
        for email in emails:
            row = rows.get(email.account_id) if email.account_id is not None else None
            if row is not None:
                found[email.id] = Language(i18n.normalise(row["locale"]), row["timezone"])
    return found


_UNDEFINED = re.compile(r"^'([^']+)' is undefined$")
_NO_ATTRIBUTE = re.compile(r"has no attribute '([^']+)'$")


def _missing_name(exc: jinja2.UndefinedError) -> str:
    message = str(exc.message or exc)
    match = _UNDEFINED.match(message) or _NO_ATTRIBUTE.search(message)
    return match[1] if match else message


def _one_line(text: str) -> str:
    return " ".join(text.split())


class Templates:
    """The Jinja environments over `templates/mail/` (one per language, made on first use) and
    the CSS inliner; build one per process."""

    def __init__(self, directory: Path = TEMPLATES_DIR) -> None:
        self.directory = directory
        self._envs: dict[str, jinja2.Environment] = {}
        self.env = self.env_for(i18n.DEFAULT)
        self.inliner = css_inline.CSSInliner(keep_style_tags=False, load_remote_stylesheets=False)
        self._exists: dict[str, bool] = {}
        self._compiled: dict[tuple[str, str], tuple[jinja2.Template, jinja2.Template, jinja2.Template]] = {}

    def env_for(self, locale: str) -> jinja2.Environment:
        """The environment whose templates speak `locale` (a shipped language)."""
        env = self._envs.get(locale)
        if env is None:
            env = templating.environment(
                None,
                locale=locale,
                loader=jinja2.FileSystemLoader(self.directory),
                autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
                trim_blocks=True,
                lstrip_blocks=True,
                keep_trailing_newline=True,
                auto_reload=False,
                cache_size=-1,
            )
            self._envs[locale] = env
        return env

    def exists(self, name: str) -> bool:
        """Whether e-mail template `name` has its three files (looked up once per process)."""
        known = self._exists.get(name)
        if known is None:
            known = (
                ".." not in name
                and not name.startswith("/")
                and all(
                    (self.directory / f"{name}{suffix}").is_file()
                    for suffix in (".subject.txt", ".html", ".txt")
                )
            )
            self._exists[name] = known
        return known

    def names(self, folder: str) -> list[str]:
        """The e-mail templates in a folder, e.g. `names("service")` -> ["service/welcome", ...]."""
        base = self.directory / folder
        return sorted(f"{folder}/{p.name.removesuffix('.subject.txt')}" for p in base.glob("*.subject.txt"))

    def compiled(self, name: str, locale: str) -> tuple[jinja2.Template, jinja2.Template, jinja2.Template]:
        """The subject, text and HTML templates of `name` in `locale` (compiled once per process)."""
        compiled = self._compiled.get((locale, name))
        if compiled is None:
            get = self.env_for(locale).get_template
            compiled = (get(f"{name}.subject.txt"), get(f"{name}.txt"), get(f"{name}.html"))
            self._compiled[locale, name] = compiled
        return compiled

    def localised(self, name: str, locale: str) -> str:
        """The variant of template `name` for `locale` (`FOLDER/LOCALE/NAME`) when there is one,
        else `name` itself (whose texts the catalogue of `locale` translates)."""
        folder, _, base = name.rpartition("/")
        variant = f"{folder}/{locale}/{base}" if folder else f"{locale}/{base}"
        return variant if self.exists(variant) else name

    def render(
        self, name: str, context: Mapping[str, Any], locale: str = i18n.DEFAULT, timezone: str = "UTC"
    ) -> Rendered:
        """Subject, text and HTML (CSS inlined) of template `name` in `locale` (its variant for
        that language if there is one), dates in `timezone`. Raises TemplateError for an unknown
        template or a missing variable."""
        if not self.exists(name):
            raise TemplateError(f"unknown template {name!r}", template=name)
        name = self.localised(name, locale)
        context = {**context, "locale": locale, "time_zone": timezone}
        subject_template, text_template, html_template = self.compiled(name, locale)
        try:
            subject = subject_template.render(context)
            text = text_template.render(context)
            html = html_template.render(context)
        except jinja2.UndefinedError as exc:
            variable = _missing_name(exc)
            raise TemplateError(
                f"template {name!r} needs {variable!r}, which was not given", template=name, variable=variable
            ) from None
        return Rendered(_one_line(subject), text, self.inline(html))

    def inline(self, html: str) -> str:
        """Move `<style>` rules into `style` attributes."""
        return self.inliner.inline(html)


class NothingToSend(Exception):
    """A renderer's verdict that an e-mail is no longer needed (a digest whose every message was
    read since it was built): delivery records it as cancelled, sends nothing, and does not retry."""


class Renderer(Protocol):
    """Turns claimed outbox rows into subject, text and HTML.

    `prepare` runs once per claimed batch (load what the batch shares, e.g. a newsletter's body,
    in one query); `render` runs per e-mail and must be cheap and synchronous. `context` is the
    row's context merged with what delivery adds (`unsubscribe_url`, `preferences_url`,
    `public_url`, `postal_address`, `to_address`). Raise TemplateError to fail that e-mail
    permanently, NothingToSend to cancel it.
    """

    async def prepare(self, pool: asyncpg.Pool, emails: Sequence[OutgoingEmail]) -> None: ...

    def render(self, email: OutgoingEmail, context: Mapping[str, Any]) -> Rendered: ...


@dataclass
class TemplateRenderer:
    """The default renderer: the row's `template` with its context; the row's `subject`, when
    set, replaces the template's subject line."""

    templates: Templates
    _languages: dict[int, Language] = field(default_factory=dict)

    async def prepare(self, pool: asyncpg.Pool, emails: Sequence[OutgoingEmail]) -> None:
        self._languages.update(await languages(pool, emails))

    def render(self, email: OutgoingEmail, context: Mapping[str, Any]) -> Rendered:
        if not email.template:
            raise TemplateError("the e-mail names no template", template="")
        language = self._languages.pop(email.id, None) or language_of(email)
        rendered = self.templates.render(email.template, context, language.locale, language.timezone)
        if email.subject:
            return Rendered(_one_line(email.subject), rendered.text, rendered.html)
        return rendered


RendererFactory = Callable[[Settings, Templates], Renderer]


@dataclass
class Renderers:
    """The renderers of one worker process, by kind: `factories[kind](settings, templates)` is
    built on first use; kinds without a factory use TemplateRenderer. `brand` is the process's
    house style, refreshed by delivery before each batch."""

    settings: Settings
    factories: Mapping[str, RendererFactory] = field(default_factory=dict)
    templates: Templates = field(default_factory=Templates)
    _built: dict[str, Renderer] = field(default_factory=dict)
    brand: BrandCache = field(init=False)

    def __post_init__(self) -> None:
        self.brand = BrandCache(self.settings)

    def use(self, kind: str, renderer: Renderer) -> None:
        """Use `renderer` for `kind` in this process, whatever is registered (tests, previews)."""
        self._built[kind] = renderer

    def for_kind(self, kind: str) -> Renderer:
        renderer = self._built.get(kind)
        if renderer is None:
            factory = self.factories.get(kind)
            renderer = factory(self.settings, self.templates) if factory else TemplateRenderer(self.templates)
            self._built[kind] = renderer
        return renderer
