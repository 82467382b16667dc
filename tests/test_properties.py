"""Properties over generated input: signed tokens, header encoding, template escaping and the
marketing sandbox. Each property says what must hold for every input, not for a few examples."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from markupsafe import escape
from pydantic import SecretStr

from notifier import digest_email, tokens
from notifier.mail import compose, newsletter_render
from notifier.mail.render import Language, Templates
from notifier.settings import Settings

SECRET = b"property-secret"
PURPOSES: tuple[tokens.Purpose, ...] = ("unsubscribe", "preferences", "confirm")
LISTS: tuple[tokens.ListName, ...] = ("digest", "newsletter", "all")
ACCOUNT_IDS = st.integers(min_value=0, max_value=2**64 - 1)
# Text with the characters that break things over-represented: line breaks of every kind, NUL,
# other controls, quotes, angle brackets, encoded-word look-alikes and non-ASCII.
NASTY = st.text(
    st.one_of(
        st.sampled_from(list("\r\n\x00\x0b\x0c\x1c\x85\u2028\u2029\t \"'<>&\\=?;:,@()[]{}%")),
        st.characters(codec="utf-8", exclude_categories=["Cs"]),
    ),
    max_size=300,
)

# --- tokens -----------------------------------------------------------------------------------


@given(purpose=st.sampled_from(PURPOSES), list_name=st.sampled_from(LISTS), account_id=ACCOUNT_IDS)
def test_every_token_verifies_to_what_was_signed(purpose: Any, list_name: Any, account_id: int) -> None:
    token = tokens.sign(SECRET, purpose, account_id, list_name)
    assert len(token) == 35 and token.isascii()
    assert tokens.verify(SECRET, token, purpose) == tokens.Token(purpose, list_name, account_id)
    for other in PURPOSES:
        if other != purpose:
            assert tokens.verify(SECRET, token, other) is None


@given(text=st.text(max_size=100), purpose=st.sampled_from(PURPOSES))
@example(text="", purpose="unsubscribe")
def test_verify_never_raises_and_accepts_only_genuine_tokens(text: str, purpose: tokens.Purpose) -> None:
    found = tokens.verify(SECRET, text, purpose)
    if found is not None:
        assert text == tokens.sign(SECRET, purpose, found.account_id, found.list)


@st.composite
def mutations(draw: st.DrawFn) -> tuple[str, str, tokens.Purpose]:
    """A genuine token and a different string made from it by edits."""
    purpose = draw(st.sampled_from(PURPOSES))
    token = tokens.sign(SECRET, purpose, draw(ACCOUNT_IDS), draw(st.sampled_from(LISTS)))
    mutated = token
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(mutated)))
        edit = draw(st.sampled_from(["replace", "insert", "delete", "swapcase", "truncate"]))
        char = draw(st.one_of(st.sampled_from(list("=+/-_.!~ \n\x00A0a")), st.characters()))
        if edit == "replace":
            mutated = mutated[:i] + char + mutated[i + 1 :]
        elif edit == "insert":
            mutated = mutated[:i] + char + mutated[i:]
        elif edit == "delete":
            mutated = mutated[:i] + mutated[i + 1 :]
        elif edit == "swapcase":
            mutated = mutated[:i] + mutated[i : i + 1].swapcase() + mutated[i + 1 :]
        else:
            mutated = mutated[:i]
    return token, mutated, purpose


@given(mutations())
@settings(max_examples=400)
def test_no_mutation_of_a_token_is_accepted(case: tuple[str, str, tokens.Purpose]) -> None:
    token, mutated, purpose = case
    if mutated != token:
        assert tokens.verify(SECRET, mutated, purpose) is None


# --- headers ----------------------------------------------------------------------------------

HEADER_NAMES = [
    b"From",
    b"To",
    b"Subject",
    b"Date",
    b"Message-ID",
    b"List-Id",
    b"MIME-Version",
    b"Content-Type",
]


def _head(message: bytes) -> bytes:
    head, sep, _ = message.partition(b"\r\n\r\n")
    assert sep
    return head


@given(subject=NASTY, name=NASTY)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@example(subject="Hi\r\nBcc: victim@example.org", name="Eve\r\nBcc: x@example.org")
@example(subject="x" * 2000, name="y" * 400)
@example(subject="a\x00b", name="c\x00d")
def test_header_values_never_inject_lines(subject: str, name: str) -> None:
    message = compose.build(
        from_=compose.mailbox(name, "sender@example.org"),
        to=compose.mailbox(name, "member@example.com"),
        subject=subject,
        date=compose.format_date(datetime(2026, 11, 25, tzinfo=UTC)),
        message_id="<1.abc@example.org>",
        text="text",
        html="<p>html</p>",
        headers=[("List-Id", "<news.example.org>")],
    )
    head = _head(message)
    lines = head.split(b"\r\n")
    assert all(b"\r" not in line and b"\n" not in line and b"\x00" not in line for line in lines)
    assert all(len(line) <= 998 for line in lines)
    assert all(b < 0x80 for b in head)
    starts = [line.split(b":", 1)[0] for line in lines if not line.startswith((b" ", b"\t"))]
    assert starts == HEADER_NAMES
    parsed = message_from_bytes(message, policy=policy.default)
    assert len(parsed.get_all("Bcc") or []) == 0
    assert [a.addr_spec for a in parsed["To"].addresses] == ["member@example.com"]
    if "=?" not in subject:  # literal encoded-word look-alikes are decoded by any reader
        # Whitespace runs become one space; control and text-direction characters are dropped.
        assert str(parsed["Subject"]) == compose.one_line(subject)
        assert not set(str(parsed["Subject"])) & set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@given(value=NASTY)
def test_raw_header_refuses_what_it_cannot_keep_on_one_line(value: str) -> None:
    try:
        header = compose.raw_header("List-Unsubscribe", value)
    except compose.HeaderError:
        assert any(c in value for c in "\r\n\x00") or not value.isascii()
        return
    assert header.replace("\r\n ", " ").replace("\r\n\t", "\t") == f"List-Unsubscribe: {value}"
    assert "\n" not in header.replace("\r\n ", "").replace("\r\n\t", "")


@given(address=NASTY)
def test_address_check_refuses_anything_but_an_addr_spec(address: str) -> None:
    try:
        compose.check_address(address)
    except compose.HeaderError:
        return
    # International addresses pass (issue 17.6): they go out with their domain in ASCII.
    assert address.count("@") == 1
    assert not any(c in address for c in ' \r\n\x00<>,;"()')
    assert compose.wire_address(address).rpartition("@")[2].isascii()


# --- template escaping ----------------------------------------------------------------------------


class Shape(HTMLParser):
    """The element structure of a page: tags with their attribute names."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, tuple[str, ...]]] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, tuple(name for name, _ in attrs)))


TEMPLATES = Templates()


def _welcome(name: str) -> str:
    context = {"account": {"name": name, "email": "m@example.com", "external_id": "m"}, "postal_address": "x"}
    return TEMPLATES.render("service/welcome", context).html


def _digest(value: str, url: str) -> str:
    message = {"id": 1, "subject": value, "snippet": value, "url": url, "when": value}
    context = {
        "name": value,
        "frequency": "daily",
        "total": 1,
        "categories": [{"name": value, "count": 1, "messages": [message], "more": 0}],
        "inbox_url": "https://example.org/inbox",
        "unsubscribe_url": "https://example.org/u/t",
        "preferences_url": "https://example.org/preferences/t",
        "postal_address": value,
    }
    return digest_email.render_digest(TEMPLATES, context, Language()).html


@given(value=NASTY)
@settings(max_examples=150, deadline=None)
@example(value='<script>alert(1)</script>"><img src=x onerror=alert(1)>')
def test_data_cannot_change_the_structure_of_a_service_email(value: str) -> None:
    assert Shape(_welcome(value)).tags == Shape(_welcome("Ada")).tags


@given(value=NASTY)
@settings(max_examples=150, deadline=None)
@example(value='"><script>alert(1)</script><a href="')
def test_data_cannot_change_the_structure_of_a_digest(value: str) -> None:
    value = "v" + value  # the template leaves out empty snippets and links
    url = "https://example.org/" + value.replace(" ", "")
    assert Shape(_digest(value, url)).tags == Shape(_digest("Ada", "https://example.org/")).tags
    assert str(escape(value)) in _digest(value, url)


# --- the marketing sandbox ------------------------------------------------------------------------

NEWSLETTER_SETTINGS = Settings(env="test", secret_key=SecretStr("x" * 32), postal_address="1 Street")
PERSONAL = newsletter_render.sample_personal(NEWSLETTER_SETTINGS)

OBJECTS = [
    "''",
    "[]",
    "{}",
    "()",
    "name",
    "first_name",
    "cycler",
    "joiner",
    "namespace",
    "lipsum",
    "range",
    "self",
]
REACHES = [
    ".__class__",
    ".__mro__",
    ".__subclasses__()",
    ".__globals__",
    ".__init__",
    ".__builtins__",
    ".__dict__",
    ".mro()",
    ".gi_frame",
    ".f_globals",
    ".__getattribute__('__class__')",
    "|attr('__class__')",
    "['__class__']",
    ".format.__self__",
    ".__reduce_ex__(2)",
    ".__call__",
    ".func_globals",
    ".__closure__",
    ".__code__",
    ".environment",
    "._TemplateReference__context",
    ".__self__",
    ".pop",
    ".append(1)",
    ".update({'a': 1})",
]


@given(obj=st.sampled_from(OBJECTS), chain=st.lists(st.sampled_from(REACHES), min_size=1, max_size=4))
@settings(max_examples=300, deadline=None)
@example(obj="''", chain=[".__class__", ".__mro__", "[1]", ".__subclasses__()"])
@example(obj="cycler", chain=[".__init__", ".__globals__", ".os"])
@example(obj="'{0.__class__}'", chain=[".format(name)"])
def test_marketing_templates_cannot_leave_the_sandbox(obj: str, chain: list[str]) -> None:
    expression = obj + "".join(chain)
    draft = newsletter_render.Draft(1, "News", "", f"Hello {{{{ {expression} }}}}", "html")
    try:
        rendered = newsletter_render.prepare(NEWSLETTER_SETTINGS, draft).render(PERSONAL)
    except newsletter_render.TemplateProblem:
        return
    # Printing a bound method's repr (`[].pop`) is harmless; classes, modules, functions'
    # globals and the environment are what an escape would reach.
    for leaked in ("<class", "&lt;class", "<module", "&lt;module", "<function", "&lt;function", "environ"):
        assert leaked not in rendered.html + rendered.text, (expression, leaked)


@given(name=NASTY)
@settings(max_examples=150, deadline=None)
@example(name="{{ 7 * 7 }}{% for x in range(3) %}loop{% endfor %}")
def test_personal_fields_are_data_never_template(name: str) -> None:
    draft = newsletter_render.Draft(1, "News for {{ name }}", "", "Hello {{ name }}!", "markdown")
    rendered = newsletter_render.prepare(NEWSLETTER_SETTINGS, draft).render({**PERSONAL, "name": name})
    # The body is sanitised (balanced, re-serialised): the name is text, serialised as text is.
    assert f"Hello {newsletter_render.sanitise(str(escape(name)))}!" in rendered.html
    assert f"Hello {name}!" in rendered.text
    assert rendered.subject == " ".join(f"News for {name}".split())


@pytest.mark.parametrize(
    "body",
    [
        "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{{ c }}{% endfor %}",
        "{{ lipsum.__globals__['os'].popen('id').read() }}",
        "{{ cycler.__init__.__globals__.os.environ }}",
        "{{ self._TemplateReference__context }}",
        "{% set x = namespace() %}{{ x.__class__.__init__.__globals__ }}",
        "{{ range(100000000) | list | length }}",
        "{{ 'a' * 100000000 }}",
        "{{ ['a'] * 100000000 }}",
        "{{ 9 ** 999 }}",
        "{{ (9 ** 64) ** 64 }}",
        "{{ 1 / 0 }}",
        "{% include '/etc/passwd' %}",
        "{% extends 'base.html' %}",
        "{% import 'newsletter.html' as x %}",
    ],
)
def test_known_sandbox_escapes_are_refused(body: str) -> None:
    draft = newsletter_render.Draft(1, "News", "", body, "html")
    with pytest.raises(newsletter_render.TemplateProblem):
        newsletter_render.prepare(NEWSLETTER_SETTINGS, draft).render(PERSONAL)


_LOCAL_CHARS = st.sampled_from(list("abcXYZ019.!#$%&'*+-/=?^_`{|}~\"@ é"))
_DOMAINS = st.sampled_from(
    [
        "example.com",
        "EXAMPLE.org",
        "mail.example.co.uk",
        "example",
        "localhost",
        "-bad.com",
        "a..b.com",
        "example.com.",
        "xn--bcher-kva.example",
        "bücher.example",
        "1.2.3.4",
        "[1.2.3.4]",
        "ex_ample.com",
        "",
    ]
)


@given(local=st.text(_LOCAL_CHARS, max_size=70), domain=_DOMAINS)
@example(local="a" * 65, domain="example.com")
@example(local=".a", domain="example.com")
@settings(max_examples=400, deadline=None)
def test_the_email_fast_path_answers_as_the_library_does(local: str, domain: str) -> None:
    """`normalize_email`'s fast path (ASCII dot-atom, cached domain) gives email-validator's answer."""
    from notifier.validation import _validated, normalize_email

    address = f"{local}@{domain}"
    try:
        expected: str | None = _validated(address) if len(address) <= 254 else None
    except ValueError:
        expected = None
    try:
        got: str | None = normalize_email(address)
    except ValueError:
        got = None
    assert got == expected
