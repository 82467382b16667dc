"""Newsletter rendering: marketing's Markdown or HTML with Jinja personalisation, in a sandbox.

What all recipients share (Markdown conversion, the layout with its footer, CSS inlining, the
compiled templates) is prepared ONCE per newsletter version by `prepare()`; `Prepared.render()`
then only fills the personal parts (name, unsubscribe and preference links) per recipient. When
marketing's templates use the personal fields only as plain `{{ name }}` outputs (most do), the
body too is rendered and sanitised once, and a recipient costs one fill of its holes
(`newsletter_slots`, which says why that is as safe as sanitising each recipient's HTML).
"""

from __future__ import annotations

import html
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, cast

import css_inline
import jinja2
import nh3
from markupsafe import Markup

from notifier import i18n, templating
from notifier.brand import Brand
from notifier.mail import newsletter_slots as slots
from notifier.mail.newsletter_source import (
    JINJA,
    MAX_TRACKED_LINKS,
    TRACKABLE,
    anchor_hrefs,
    html_to_text,
    markdown_to_html,
    track_html,
    track_text,
)
from notifier.mail.sandbox import Budget, MeteredSandbox, OverBudget, metered
from notifier.settings import Settings

# What marketing's templates may use. Anything else is an error caught when the draft is saved.
PERSONAL_FIELDS = ("name", "first_name", "email", "unsubscribe_url", "preferences_url")

_BODY_START, _BODY_END = "<!--notifier:body-->", "<!--notifier:end-->"
_UNSUBSCRIBE, _PREFERENCES = "@@notifier-unsubscribe-url@@", "@@notifier-preferences-url@@"
_SUBJECT = "@@notifier-subject@@"
_BODY_SLOT = Markup("<!--notifier:body--><!--notifier:end-->")
# What marketing's HTML body may contain once rendered: the sanitiser (nh3, i.e. ammonia) parses
# it and writes it out balanced, so an unclosed comment, `<textarea>`, `<style>` or `<div>` ends
# with the body and can never swallow the footer (unsubscribe, preferences, postal address).
_ATTRIBUTES = {
    **nh3.ALLOWED_ATTRIBUTES,
    "*": {"style", "class", "id", "align", "valign", "width", "height", "bgcolor", "dir", "lang", "title"},
    "a": {"href", "hreflang", "name", "target"},
    "table": {"border", "cellpadding", "cellspacing", "summary"},
    "td": {"colspan", "rowspan", "headers", "nowrap"},
    "th": {"colspan", "rowspan", "headers", "scope", "nowrap"},
    "img": {"src", "alt", "border", "width", "height"},
    "font": {"color", "face", "size"},
}


def _https_images(tag: str, attribute: str, value: str) -> str | None:
    """An image loads only over https: `http:` leaks who reads over the network, `data:` and
    `cid:` carry what a list server should not (tracking pixels, oversized inline payloads), so
    any other `src` is dropped and the image shows its alt text."""
    if tag == "img" and attribute == "src" and not value.strip().lower().startswith("https://"):
        return None
    return value


_CLEANER = nh3.Cleaner(
    tags=nh3.ALLOWED_TAGS | {"font", "tfoot", "section", "main"},
    attributes=_ATTRIBUTES,
    attribute_filter=_https_images,
    url_schemes={"http", "https", "mailto", "tel", "cid", "data"},
    link_rel=None,
    strip_comments=True,
)


def sanitise(fragment: str) -> str:
    """Marketing's rendered HTML body, balanced and stripped of scripts, comments and handlers."""
    cleaned: str = _CLEANER.clean(fragment)
    return cleaned


_SANDBOX_HTML = cast(MeteredSandbox, templating.environment(None, env_class=MeteredSandbox))
_SANDBOX_TEXT = cast(MeteredSandbox, templating.environment(None, html=False, env_class=MeteredSandbox))
# The layout (footer) in each language.
_LAYOUTS = {
    locale: templating.environment("mail", locale=locale, keep_trailing_newline=True)
    for locale in i18n.LOCALES
}


class TemplateProblem(ValueError):
    """Marketing's template does not compile or uses something it may not; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self) -> tuple[type[TemplateProblem], tuple[str, str]]:
        return TemplateProblem, (self.field, self.message)  # crosses process boundaries intact


@dataclass(frozen=True)
class Draft:
    """The parts of a newsletter that rendering needs."""

    id: int
    subject: str
    preheader: str
    body: str
    body_format: str
    version: datetime | None = None
    # The newsletter's numbered links when it counts clicks (`newsletter_links`, link = index):
    # each is rewritten to `{PUBLIC_URL}/c/{id}/{link}`. Empty: links stay as written.
    links: tuple[str, ...] = ()
    # The language of the layout's own words (the footer); the newsletter's variant for a
    # language carries that language here (notifier.newsletter.for_language).
    locale: str = i18n.DEFAULT
    brand: Brand | None = None  # the house style; None: the NOTIFIER_BRAND_* settings


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str


def body_html_source(draft: Draft) -> str:
    """The body as an HTML template (Markdown converted, Jinja tags intact)."""
    return markdown_to_html(draft.body) if draft.body_format == "markdown" else draft.body


def trackable_links(draft: Draft) -> list[str]:
    """The links of the body whose clicks can be counted, each once, in order of appearance:
    absolute http(s) addresses of `<a href>` written out in full, in ASCII (percent-encoded), at
    most 2,048 characters and
    MAX_TRACKED_LINKS of them. A link built with a template tag (`{{ unsubscribe_url }}`, a URL
    with `{{ email }}` in it) is personal and is never counted, nor are mailto:, tel: or anchors."""
    links: dict[str, None] = {}
    for url in anchor_hrefs(body_html_source(draft)):
        # ASCII only (Markdown percent-encodes its links): the address becomes a Location header.
        if len(url) <= 2048 and url.isascii() and TRACKABLE.fullmatch(url) and len(links) < MAX_TRACKED_LINKS:
            links.setdefault(url, None)
    return list(links)


def _compile(env: MeteredSandbox, field: str, source: str) -> jinja2.Template:
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateProblem(field, f"template error on line {exc.lineno}: {exc.message}") from None


@dataclass(frozen=True)
class Prepared:
    """One newsletter, ready to personalise: compiled templates and pre-rendered shells."""

    subject: jinja2.Template
    body_html: jinja2.Template
    body_text: jinja2.Template
    html_before: str
    html_after: str
    text_before: str
    text_after: str
    # The version rendered and sanitised once, with holes for the personal fields, when its
    # templates allow it (newsletter_slots); None: each recipient is rendered and sanitised.
    # A version whose templates do not render even for the placeholders: its problem, for every
    # recipient (as `PreparedCache` remembers the problem of a version found with sample data).
    filled: Filled | TemplateProblem | None = None

    def render(self, personal: Mapping[str, Any], budget: Budget | None = None) -> Rendered:
        """The e-mail for one recipient. `personal` holds PERSONAL_FIELDS. Subject and body share
        one budget (sandbox.Budget: steps, characters, CPU time). Raises TemplateProblem."""
        if isinstance(self.filled, TemplateProblem):
            raise TemplateProblem(self.filled.field, self.filled.message)
        if self.filled is not None:
            return self.filled.render(personal, budget)
        unsubscribe = html.escape(str(personal["unsubscribe_url"]))
        preferences = html.escape(str(personal["preferences_url"]))
        subject, body_html, body_text = self.parts(personal, budget)
        page = (
            _links(self.html_before, unsubscribe, preferences).replace(_SUBJECT, html.escape(subject))
            + body_html
            + _links(self.html_after, unsubscribe, preferences)
        )
        text = (
            _links(self.text_before, str(personal["unsubscribe_url"]), str(personal["preferences_url"]))
            + body_text
            + _links(self.text_after, str(personal["unsubscribe_url"]), str(personal["preferences_url"]))
        )
        return Rendered(subject, page, text)

    def parts(self, personal: Mapping[str, Any], budget: Budget | None = None) -> tuple[str, str, str]:
        """Marketing's templates rendered for `personal`: the subject (one line), the sanitised
        HTML body and the text body. Raises TemplateProblem."""
        # Marketing's template is untrusted code: whatever it raises (a sandbox refusal, an
        # exhausted budget, 1/0, `{% include %}` without a loader, a range too big) is a problem
        # with the draft.
        with metered(budget):
            try:
                subject = " ".join(self.subject.render(personal).split())
            except Exception as exc:
                raise TemplateProblem("subject", str(exc) or type(exc).__name__) from None
            try:
                return subject, sanitise(self.body_html.render(personal)), self.body_text.render(personal)
            except Exception as exc:
                raise TemplateProblem("body", str(exc) or type(exc).__name__) from None


def _links(part: str, unsubscribe: str, preferences: str) -> str:
    return part.replace(_UNSUBSCRIBE, unsubscribe).replace(_PREFERENCES, preferences)


@dataclass(frozen=True)
class Filled:
    """A version rendered and sanitised once with placeholders (`newsletter_slots`): subject, HTML
    page and text with holes for the personal fields (and the page's for the subject)."""

    subject: slots.Slots
    html: slots.Slots
    text: slots.Slots

    def render(self, personal: Mapping[str, Any], budget: Budget | None = None) -> Rendered:
        """What `Prepared.render` returns for `personal`, by filling the holes."""
        raw = {field: str(personal[field]) for field in PERSONAL_FIELDS}
        with metered(budget) as spent:
            try:
                subject = " ".join(self.subject.fill(raw, spent).split())
            except OverBudget as exc:
                raise TemplateProblem("subject", str(exc)) from None
            escaped = {field: slots.PAGE_ESCAPES.get(field, slots.escape_text)(v) for field, v in raw.items()}
            escaped["subject"] = slots.PAGE_ESCAPES["subject"](subject)
            try:
                return Rendered(subject, self.html.fill(escaped, spent), self.text.fill(raw, spent))
            except OverBudget as exc:
                raise TemplateProblem("body", str(exc)) from None


def _filled(prepared: Prepared, sources: tuple[str, str, str]) -> Filled | TemplateProblem | None:
    """`prepared` rendered once with placeholders, when its templates (subject, HTML body, text
    body: `sources`) use the personal fields only as bare outputs (their values then change no
    step of a render), or the problem that render met; None when the templates do not allow it."""
    layout = prepared.html_before + prepared.html_after + prepared.text_before + prepared.text_after
    envs = (_SANDBOX_TEXT, _SANDBOX_HTML, _SANDBOX_TEXT)
    if not all(slots.linear(env, source, PERSONAL_FIELDS) for env, source in zip(envs, sources, strict=True)):
        return None
    if slots.MARK in layout:
        return None
    names = slots.placeholders((*PERSONAL_FIELDS, "subject"))
    personal = {field: names[field] for field in PERSONAL_FIELDS}
    try:
        subject, body_html, body_text = prepared.parts(personal)
    except TemplateProblem as exc:
        return exc

    def holes(part: str) -> str:
        return _links(part, names["unsubscribe_url"], names["preferences_url"]).replace(
            _SUBJECT, names["subject"]
        )

    page = slots.html_page(body_html, holes(prepared.html_before), holes(prepared.html_after), names)
    if page is None:
        return None
    text = holes(prepared.text_before) + body_text + holes(prepared.text_after)
    return Filled(slots.Slots.split(subject, names), page, slots.Slots.split(text, names))


def prepare(settings: Settings, draft: Draft) -> Prepared:
    """Compile marketing's templates and render the shared layout once. Raises TemplateProblem."""
    subject = _compile(_SANDBOX_TEXT, "subject", draft.subject)
    body_source = body_html_source(draft)
    text_source = draft.body.strip() + "\n" if draft.body_format == "markdown" else html_to_text(draft.body)
    if draft.links:
        targets = {url: f"{settings.public_url}/c/{draft.id}/{i}" for i, url in enumerate(draft.links)}
        body_source = track_html(body_source, targets)
        text_source = track_text(text_source, targets)
    layout = {
        "brand": draft.brand or Brand.from_settings(settings),
        "subject": _SUBJECT,
        "preheader": draft.preheader,
        "postal_address": settings.postal_address,
        "unsubscribe_url": _UNSUBSCRIBE,
        "preferences_url": _PREFERENCES,
    }
    shell = (
        _LAYOUTS[i18n.normalise(draft.locale)]
        .get_template("newsletter.html")
        .render(**layout, body=_BODY_SLOT)
    )
    document = shell.replace(_BODY_START + _BODY_END, _BODY_START + body_source + _BODY_END)
    inlined = css_inline.inline(document)
    start, end = inlined.find(_BODY_START), inlined.find(_BODY_END)
    inlined_body = inlined[start + len(_BODY_START) : end]
    if start < 0 or end < 0 or JINJA.findall(inlined_body) != JINJA.findall(body_source):
        # The HTML parser moved or escaped a Jinja tag (e.g. `>` in a condition): keep the
        # body as written and inline only the layout.
        inlined = css_inline.inline(shell)
        start, end = inlined.find(_BODY_START), inlined.find(_BODY_END)
        inlined_body = body_source
    text_shell = (
        _LAYOUTS[i18n.normalise(draft.locale)]
        .get_template("newsletter.txt")
        .render(**layout, body="@@notifier-body@@")
    )
    text_before, _, text_after = text_shell.partition("@@notifier-body@@")
    prepared = Prepared(
        subject=subject,
        body_html=_compile(_SANDBOX_HTML, "body", inlined_body),
        body_text=_compile(_SANDBOX_TEXT, "body", text_source),
        html_before=inlined[:start],
        html_after=inlined[end + len(_BODY_END) :],
        text_before=text_before,
        text_after=text_after,
    )
    return replace(prepared, filled=_filled(prepared, (draft.subject, inlined_body, text_source)))


def sample_personal(settings: Settings) -> dict[str, str]:
    """Personal fields for checking a draft when no account is at hand."""
    return {
        "name": "Ada Lovelace",
        "first_name": "Ada",
        "email": "ada@example.org",
        "unsubscribe_url": f"{settings.public_url}/u/example",
        "preferences_url": f"{settings.public_url}/preferences/example",
    }


def check(settings: Settings, draft: Draft) -> None:
    """Raise TemplateProblem when the draft would not render for a recipient."""
    prepare(settings, draft).render(sample_personal(settings))


class PreparedCache:
    """Per-process memory of prepared newsletters, keyed by id, version (`updated_at`), language
    and brand.

    A version is checked once (rendered for sample data) when it is first prepared; a version
    that does not render, or not within its budget, is remembered as such, so each of its e-mails
    fails at once with the same reason instead of spending the budget again."""

    def __init__(self, size: int = 8) -> None:
        self._items: OrderedDict[
            tuple[int, datetime | None, str, Brand | None], Prepared | TemplateProblem
        ] = OrderedDict()
        self._size = size
        self.misses = 0

    def get(self, settings: Settings, draft: Draft) -> Prepared:
        """The prepared version. Raises TemplateProblem (remembered) when it does not render."""
        key = (draft.id, draft.version, draft.locale, draft.brand)
        found = self._items.get(key)
        if found is None:
            self.misses += 1
            try:
                found = prepare(settings, draft)
                found.render(sample_personal(settings))
            except TemplateProblem as exc:
                found = exc
            self._items[key] = found
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        self._items.move_to_end(key)
        if isinstance(found, TemplateProblem):
            raise TemplateProblem(found.field, found.message)
        return found


# The fields of a draft that are templates, in the order a form shows them.
_TEMPLATE_FIELDS = ("subject", "body")


def field_problems(settings: Settings, draft: Draft) -> dict[str, str]:
    """Every field of `draft` whose template does not render for the sample member, as
    field → message (subject before body), so that a form can mark all of them at once. Empty
    when the draft renders; renders once then."""
    found: dict[str, str] = {}
    probe = draft
    while True:
        try:
            check(settings, probe)
        except TemplateProblem as exc:
            if exc.field in found or exc.field not in _TEMPLATE_FIELDS:
                found.setdefault(exc.field, exc.message)
                break
            found[exc.field] = exc.message
            # The first problem stopped rendering: try the rest with that field blanked.
            probe = replace(probe, subject="") if exc.field == "subject" else replace(probe, body="")
        else:
            break
    order = {field: i for i, field in enumerate(_TEMPLATE_FIELDS)}
    return dict(sorted(found.items(), key=lambda item: order.get(item[0], len(order))))
