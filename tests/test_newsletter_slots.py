"""A newsletter version rendered and sanitised once, with holes for each recipient's values
(notifier/mail/newsletter_slots.py, issue 16): used only where it is as safe as sanitising each
recipient's HTML (issue 17), and writing what that would write."""

from __future__ import annotations

from dataclasses import replace
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from notifier.mail import newsletter_slots
from notifier.mail.newsletter_render import (
    _SANDBOX_HTML,
    PERSONAL_FIELDS,
    Draft,
    Prepared,
    TemplateProblem,
    prepare,
    sample_personal,
)
from notifier.settings import Settings

SETTINGS = Settings(
    env="test",
    secret_key=SecretStr("x" * 32),
    postal_address="1 Example Street",
    public_url="https://news.example.org",
)
PERSONAL = sample_personal(SETTINGS)
HOSTILE_NAMES = [
    '" onmouseover="alert(1)',
    '"><script>alert(1)</script>',
    "'><img src=x onerror=alert(1)>",
    "javascript:alert(1)",
    "</p></td></tr></table><a href='https://evil.example'>unsubscribe</a>",
    "<!-- ",
    "&lt;script&gt;&quot; onclick=&quot;x",
    "{{ 7 * 7 }}{% for x in range(3) %}loop{% endfor %}",
    "NOTIFIERHOLE0X NOTIFIERHOLE4X {0} {name} }{",
    "\x00\r\n\xa0\u202e",
]
# Bodies the fast path takes (personal fields only as bare outputs) ...
LINEAR = [
    "Hello {{ name }}!",
    "<p>Dear <b>{{ first_name }}</b>, you are {{ email }}.</p>",
    '<a href="{{ unsubscribe_url }}" title="leave">Leave</a> <a href="{{ preferences_url }}">Prefs</a>',
    "{% for i in range(3) %}<li>{{ name }}</li>{% endfor %}{% if 1 %}{{ email }}{% else %}x{% endif %}",
    "<table><tr><td>{{ name }}</td></tr></table>",
]
# ... and those it does not: the value reaches a filter, a test, a tag or something that captures
# output, or the body holds the placeholders' mark.
NOT_LINEAR = [
    "{{ name|upper }}",
    "{{ name|safe }}",
    "{% if name %}{{ name }}{% endif %}",
    "{% for c in name %}{{ c }}{% endfor %}",
    "{{ name ~ '!' }}",
    "{{ '%s'|format(name) }}",
    "{% set x = name %}{{ x }}",
    "{% set x %}{{ name }}{% endset %}{{ x|upper }}",
    "{% filter upper %}{{ name }}{% endfilter %}",
    "{% macro m() %}{{ name }}{% endmacro %}{{ m()|upper }}",
    "{% for i in [1] recursive %}{{ name }}{% endfor %}",
    "{% with x = name %}{{ x }}{% endwith %}",
    "{% trans %}Hello {{ name }}{% endtrans %}",
    "NOTIFIERHOLE {{ name }}",
]
IN_TAGS = [
    '<a href="{{ name }}">x</a>',
    '<img src="https://example.org/i.png" alt="{{ first_name }}">',
    '<p title="{{ name }}">x</p>',
    '<a href="mailto:{{ email }}">me</a>',
]


def _prepared(body: str, body_format: str = "html", subject: str = "News for {{ first_name }}") -> Prepared:
    return prepare(SETTINGS, Draft(1, subject, "Preheader", body, body_format))


def _per_recipient(prepared: Prepared) -> Prepared:
    """The same version rendered and sanitised for each recipient (the path before issue 16)."""
    return replace(prepared, filled=None)


class _Markup(HTMLParser):
    """Every tag with its attributes, every text and every comment, in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.events: list[tuple[Any, ...]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.events.append(("tag", tag, tuple(attrs)))

    def handle_endtag(self, tag: str) -> None:
        self.events.append(("end", tag))

    def handle_data(self, data: str) -> None:
        self.events.append(("text", data))

    def handle_comment(self, data: str) -> None:
        self.events.append(("comment", data))


def _parse(html: str) -> list[tuple[Any, ...]]:
    seen = _Markup()
    seen.feed(html)
    seen.close()
    return seen.events


def _structure(html: str) -> list[tuple[str, str, frozenset[str]]]:
    """The document's tags (with their attributes' names), ends and comments, in order."""
    return [
        (e[0], e[1], frozenset(k for k, _ in e[2]) if e[0] == "tag" else frozenset())
        for e in _parse(html)
        if e[0] != "text"
    ]


def _links(html: str) -> list[str]:
    """Every `href` and `src` of the document."""
    return [value or "" for e in _parse(html) if e[0] == "tag" for k, value in e[2] if k in ("href", "src")]


@pytest.mark.parametrize("body", LINEAR)
def test_a_body_that_uses_the_fields_as_plain_outputs_is_rendered_once(body: str) -> None:
    assert newsletter_slots.linear(_SANDBOX_HTML, body, PERSONAL_FIELDS)
    assert _prepared(body).filled is not None


@pytest.mark.parametrize("body", NOT_LINEAR + IN_TAGS)
def test_anything_else_is_rendered_and_sanitised_for_each_recipient(body: str) -> None:
    assert _prepared(body).filled is None


def test_the_benchmarked_newsletter_takes_the_fast_path() -> None:
    from bench.bench_newsletter import BODY

    assert _prepared(BODY, "markdown").filled is not None


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize("body", LINEAR + IN_TAGS + ["{{ name|safe }}"])
def test_a_hostile_value_cannot_inject_markup(body: str, name: str) -> None:
    """Whatever a member calls themselves, the e-mail has the tags it has for "Ada", none added or
    closed early, no attribute it does not have for "Ada", no handler and no `javascript:` link."""
    prepared = _prepared(body)
    benign = prepared.render({**PERSONAL, "name": "Ada", "first_name": "Ada"})
    hostile = prepared.render({**PERSONAL, "name": name, "first_name": name})
    if body != "{{ name|safe }}":  # |safe hands the sanitiser markup: it keeps the harmless part
        ours, theirs = _structure(hostile.html), _structure(benign.html)
        assert [e[:2] for e in ours] == [e[:2] for e in theirs]  # the same tags, ends, comments
        assert all(o[2] <= t[2] for o, t in zip(ours, theirs, strict=True))  # no attribute added
    tags = [e for e in _parse(hostile.html) if e[0] == "tag"]
    assert not any(tag == "script" or any(k.startswith("on") for k, _ in attrs) for _, tag, attrs in tags)
    assert not any(v.strip().lower().startswith("javascript:") for v in _links(hostile.html))


_TEXTS = st.text(
    st.one_of(
        st.sampled_from(list("<>&\"'=/ \r\n\x00\xa0;#{}!-")),
        st.characters(codec="utf-8", exclude_categories=["Cs"]),
    ),
    max_size=60,
)


@given(name=_TEXTS, email=_TEXTS, body=st.sampled_from(LINEAR))
@settings(max_examples=200, deadline=None)
@example(name="a\r\nb\x00c&d<e>f\xa0\"g'", email="", body=LINEAR[1])
def test_filling_the_holes_writes_what_sanitising_each_render_writes(
    name: str, email: str, body: str
) -> None:
    prepared = _prepared(body)
    personal = {**PERSONAL, "name": name, "first_name": name.split(" ", 1)[0], "email": email}
    fast, slow = prepared.render(personal), _per_recipient(prepared).render(personal)
    assert (fast.subject, fast.html, fast.text) == (slow.subject, slow.html, slow.text)


def test_the_fill_is_charged_to_the_budget_like_a_render() -> None:
    """A loop emitting the name 2,000 times is within budget for a short name and over the
    4,000,000 characters for a long one, with the fast path as with the render it replaces. (The
    loop is short enough that preparing it stays far inside the 1 s of CPU on a loaded machine:
    20,000 turns of it once ran past that in CI.)"""
    prepared = _prepared("{% for i in range(2000) %}{{ name }}{% endfor %}")
    assert prepared.filled is not None and not isinstance(prepared.filled, TemplateProblem)
    prepared.render({**PERSONAL, "name": "Ada"})
    for version in (prepared, _per_recipient(prepared)):
        with pytest.raises(TemplateProblem) as caught:
            version.render({**PERSONAL, "name": "x" * 2_100})
        assert caught.value.field == "body" and "characters" in caught.value.message


def test_a_version_that_does_not_render_for_the_placeholders_fails_for_everyone() -> None:
    prepared = _prepared("{{ 1 / 0 }} {{ name }}")
    assert isinstance(prepared.filled, TemplateProblem)
    with pytest.raises(TemplateProblem) as caught:
        prepared.render(PERSONAL)
    assert caught.value.field == "body"
