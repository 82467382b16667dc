"""Message bytes written by hand, checked by parsing them back with Python's `email` package."""

from __future__ import annotations

import base64
import subprocess
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage, MIMEPart
from pathlib import Path

import dkim
import pytest

from notifier.mail import compose


def content(part: MIMEPart) -> str:
    """A text part's content with line ends as Python writes them (parsing keeps CRLF)."""
    text = part.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


def parse(data: bytes) -> EmailMessage:
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def build(**overrides: object) -> bytes:
    fields: dict[str, object] = {
        "from_": compose.mailbox("Example Org", "service@example.org"),
        "to": compose.mailbox(None, "ada@example.com"),
        "subject": "Hello",
        "date": compose.format_date(datetime(2026, 11, 25, 16, 0, tzinfo=UTC)),
        "message_id": "<1.abc@example.org>",
        "text": "Plain text\n",
        "html": "<p>HTML</p>",
    }
    fields.update(overrides)
    return compose.build(**fields)  # type: ignore[arg-type]


def test_headers_and_parts_parse_back() -> None:
    data = build(headers=[("List-Id", "<digest.example.org>")])
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    message = parse(data)
    assert message["From"] == "Example Org <service@example.org>"
    assert message["To"] == "ada@example.com"
    assert message["Subject"] == "Hello"
    assert message["Message-ID"] == "<1.abc@example.org>"
    assert message["Date"].datetime == datetime(2026, 11, 25, 16, 0, tzinfo=UTC)
    assert message["List-Id"] == "<digest.example.org>"
    assert message.get_content_type() == "multipart/alternative"
    plain, html = (part for part in message.iter_parts())
    assert plain.get_content_type() == "text/plain" and content(plain) == "Plain text\n"
    assert html.get_content_type() == "text/html" and content(html).strip() == "<p>HTML</p>"
    assert not message.defects


def test_non_ascii_subject_name_and_body_round_trip() -> None:
    subject = "Ihre Übersicht für heute — 12 neue Nachrichten 📬 " + "ünd noch mehr " * 8
    data = build(
        from_=compose.mailbox('Zoë Ørsted, "the" Org', "service@example.org"),
        subject=subject,
        text="Grüße\n" + "x" * 200 + " trailing  \n",
        html="<p>Grüße — " + "é" * 300 + "</p>",
    )
    assert data.isascii()
    assert max(len(line) for line in data.split(b"\r\n")) <= 78
    message = parse(data)
    assert message["Subject"] == " ".join(subject.split())
    assert message["From"].addresses[0].display_name == 'Zoë Ørsted, "the" Org'
    plain, html = (part for part in message.iter_parts())
    assert content(plain) == "Grüße\n" + "x" * 200 + " trailing  \n"
    assert "é" * 300 in content(html)


def test_ascii_names_with_specials_are_quoted() -> None:
    message = parse(build(from_=compose.mailbox('Smith, John "JJ"', "john@example.org")))
    address = message["From"].addresses[0]
    assert (address.display_name, address.addr_spec) == ('Smith, John "JJ"', "john@example.org")


def test_long_ascii_subject_is_folded_and_unfolds_to_the_same_text() -> None:
    subject = " ".join(f"word{i}" for i in range(60))
    data = build(subject=subject)
    assert max(len(line) for line in data.split(b"\r\n")) <= 78
    assert parse(data)["Subject"] == subject


@pytest.mark.parametrize(
    "subject",
    [
        "Hello\r\nBcc: victim@example.net",
        "Hello\nBcc: victim@example.net",
        "Hello\rBcc: victim@example.net",
        "Hello\r\n\r\n<p>body injected</p>",
        "Grüße\r\nBcc: victim@example.net",
    ],
)
def test_subject_cannot_inject_headers_or_body(subject: str) -> None:
    message = parse(build(subject=subject))
    assert message["Bcc"] is None
    assert "\n" not in message["Subject"] and "\r" not in message["Subject"]
    assert "Bcc: victim@example.net" in message["Subject"] or "body injected" in message["Subject"]
    assert len(list(message.iter_parts())) == 2


@pytest.mark.parametrize(
    "address",
    [
        "ada@example.com\r\nBcc: victim@example.net",
        "ada@example.com\nBcc: victim@example.net",
        "Ada <ada@example.com>",
        "ada@example.com, victim@example.net",
        "ada @example.com",
        "ada@",
        "",
        "ada@exa mple.com",
    ],
)
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(compose.HeaderError):
        compose.mailbox("Ada", address)


def test_display_name_cannot_inject() -> None:
    message = parse(build(from_=compose.mailbox("Ada\r\nBcc: victim@example.net", "ada@example.org")))
    assert message["Bcc"] is None
    assert message["From"].addresses[0].addr_spec == "ada@example.org"


def test_extra_headers_refuse_line_breaks() -> None:
    with pytest.raises(compose.HeaderError):
        build(headers=[("List-Id", "<a>\r\nBcc: victim@example.net")])
    with pytest.raises(compose.HeaderError):
        build(headers=[("Bad Name", "x")])


def test_text_only_message() -> None:
    message = parse(build(html=None, text="Only text"))
    assert message.get_content_type() == "text/plain"
    assert content(message) == "Only text\n"


def rsa_key() -> tuple[bytes, bytes]:
    """A fresh 2048-bit RSA key (PEM) and its DKIM DNS record."""
    pem = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        check=True,
        capture_output=True,
    ).stdout
    public = subprocess.run(
        ["openssl", "pkey", "-pubout", "-outform", "DER"], input=pem, check=True, capture_output=True
    ).stdout
    return pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def test_dkim_signature_verifies_and_covers_the_list_headers() -> None:
    pem, record = rsa_key()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"sel._domainkey.example.org."
        return record

    signer = compose.Signer("example.org", "sel", pem)
    headers = [
        ("List-Unsubscribe", "<https://notifier.test/u/TOKEN>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ]
    signed = signer.sign(build(subject="Grüße", headers=headers))
    assert dkim.verify(signed, dnsfunc=dnsfunc)
    signature = parse(signed)["DKIM-Signature"]
    tags = dict(t.strip().split("=", 1) for t in str(signature).split(";") if "=" in t)
    signed_headers = set(tags["h"].replace(" ", "").lower().split(":"))
    assert {"from", "to", "subject", "date", "message-id", "list-unsubscribe", "list-unsubscribe-post"} <= (
        signed_headers
    )
    tampered = signed.replace(b"https://notifier.test/u/TOKEN", b"https://evil.test/u/TOKEN")
    assert not dkim.verify(tampered, dnsfunc=dnsfunc)


@pytest.mark.parametrize(
    "added",
    [
        b"Subject: Your account is locked, sign in here",
        b"To: someone-else@example.net",
        b"Reply-To: attacker@evil.test",
        b"List-Unsubscribe: <https://evil.test/u/x>",
        b"From: Bank <bank@example.org>",
    ],
)
@pytest.mark.parametrize("with_reply_to", [False, True])
def test_dkim_oversigns_so_a_prepended_header_breaks_the_signature(added: bytes, with_reply_to: bool) -> None:
    pem, record = rsa_key()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return record

    headers = [("List-Unsubscribe", "<https://notifier.test/u/TOKEN>")]
    if with_reply_to:
        headers.append(("Reply-To", "help@example.org"))
    signed = compose.Signer("example.org", "sel", pem).sign(build(headers=headers))
    assert dkim.verify(signed, dnsfunc=dnsfunc)
    h = str(parse(signed)["DKIM-Signature"]).replace(" ", "").replace("\n", "").lower().split("h=")[1]
    names = h.split(";")[0].split(":")
    # Each header signed once more than it occurs: present ones twice, absent ones once.
    assert names.count("subject") == 2 and names.count("reply-to") == 1 + with_reply_to
    # Prepended above everything, and inserted just after the signature.
    assert not dkim.verify(added + b"\r\n" + signed, dnsfunc=dnsfunc)
    end = signed.index(b"\r\n", signed.index(b"DKIM-Signature"))
    while signed[end + 2 : end + 3] in (b" ", b"\t"):  # past the folded signature
        end = signed.index(b"\r\n", end + 2)
    assert not dkim.verify(signed[: end + 2] + added + b"\r\n" + signed[end + 2 :], dnsfunc=dnsfunc)


def test_oversigned_headers_count_each_occurrence() -> None:
    message = (
        b"From: a@example.org\r\nTo: b@example.org\r\nto: c@example.org\r\nSubject: x\r\n\r\nTo: body\r\n"
    )
    names = compose.oversigned_headers(message)
    assert names.count(b"to") == 3 and names.count(b"from") == 2 and names.count(b"reply-to") == 1


def test_body_encoding_is_7bit_only_when_safe() -> None:
    ascii_message = parse(build(text="Hello\n.leading dot\n", html="<p>" + "a" * 900 + "</p>"))
    plain, html = (part for part in ascii_message.iter_parts())
    assert plain["Content-Transfer-Encoding"] == "7bit"
    assert content(plain) == "Hello\n.leading dot\n"
    assert html["Content-Transfer-Encoding"] == "7bit"

    long_line = "b" * 1200
    encoded = parse(build(text="Grüße\n", html=f"<p>{long_line}</p>"))
    plain, html = (part for part in encoded.iter_parts())
    assert plain["Content-Transfer-Encoding"] == "quoted-printable"
    assert html["Content-Transfer-Encoding"] == "quoted-printable"  # a line over 998 characters
    assert long_line in content(html)


def test_a_body_cannot_forge_a_part_boundary() -> None:
    data = build(text="--=_fake\nContent-Type: text/html\n\n<script>x</script>\n")
    message = parse(data)
    assert len(list(message.iter_parts())) == 2


def test_a_bad_dkim_key_is_a_configuration_error(tmp_path: Path) -> None:
    from pydantic import SecretStr

    from notifier.settings import ConfigError, Settings

    settings = Settings(
        dkim_domain="example.org", dkim_selector="sel", dkim_private_key=SecretStr("not a key")
    )
    with pytest.raises(ConfigError, match="DKIM"):
        compose.Signer.from_settings(settings)
    assert compose.Signer.from_settings(Settings()) is None
    pem, _ = rsa_key()
    (tmp_path / "key.pem").write_bytes(pem)
    settings = Settings(
        dkim_domain="example.org", dkim_selector="sel", dkim_private_key_path=tmp_path / "key.pem"
    )
    assert compose.Signer.from_settings(settings) is not None
