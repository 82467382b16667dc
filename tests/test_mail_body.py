"""The fast checks of `compose._body`: a part is 7bit exactly when it is ASCII (no NUL) with every
line at most 998 characters, wherever a long line sits relative to the spans the check scans."""

from __future__ import annotations

import binascii
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.mail import compose


def _encoding(text: str) -> str:
    return compose._body(text)[0]


@pytest.mark.parametrize("offset", [0, 1, 250, 498, 499, 500, 997, 998, 1500])
@pytest.mark.parametrize(("length", "expected"), [(998, "7bit"), (999, "quoted-printable")])
def test_a_line_over_998_characters_anywhere_needs_quoted_printable(
    offset: int, length: int, expected: str
) -> None:
    # Short lines before the long one move it across the 499-byte spans the check looks at.
    before = ("x" * 9 + "\n") * (offset // 10) + "y" * (offset % 10) + "\n"
    text = before + "a" * length + "\nend\n"
    assert _encoding(text) == expected
    assert _encoding("a" * length) == expected  # the only line, no line end
    assert _encoding("short\n" + "a" * length) == expected  # the last line, no line end


def test_many_lines_of_998_stay_7bit_and_round_trip() -> None:
    text = "\n".join(chr(65 + i % 26) * 998 for i in range(40)) + "\n"
    encoding, body = compose._body(text)
    assert encoding == "7bit"
    assert body == text.replace("\n", "\r\n").encode("ascii")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain\r\nwindows\rold mac\n", "7bit"),
        ("caf\u00e9\n", "quoted-printable"),
        ("nul\x00byte\n", "quoted-printable"),
    ],
)
def test_line_ends_and_characters(text: str, expected: str) -> None:
    encoding, body = compose._body(text)
    assert encoding == expected
    assert (
        b"\r\n" in body
        and b"\n" not in body.replace(b"\r\n", b"")
        and b"\r" not in body.replace(b"\r\n", b"")
    )


def test_a_built_message_with_a_long_html_line_parses_back() -> None:
    html = "<p>" + "word " * 400 + "</p>\n" + "<p>short</p>\n" * 50
    data = compose.build(
        from_=compose.mailbox("Example", "service@example.org"),
        to="ada@example.com",
        subject="Hi",
        date="Wed, 25 Nov 2026 16:00:00 +0000",
        message_id="<1.a@example.org>",
        text="Hello\n",
        html=html,
    )
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    plain, rich = message.iter_parts()
    assert plain["Content-Transfer-Encoding"] == "7bit"
    assert rich["Content-Transfer-Encoding"] == "quoted-printable"
    assert rich.get_content().replace("\r\n", "\n") == html


# Lines made of what quoted-printable treats specially: "=", spaces and tabs (at line ends too),
# a lone ".", NUL and other controls, non-ASCII, and lengths around the 76-character soft break.
_QP_LINES = st.lists(
    st.one_of(
        st.text(alphabet=st.sampled_from(list("ab= \t.\x00\x0b\u00e9\u00a0\u20ac")), max_size=90),
        st.builds(
            lambda n, tail: "x" * n + tail,
            st.integers(70, 160),
            st.sampled_from(["", " ", "\t", "=", "\u00e9"]),
        ),
        st.just("."),
    ),
    max_size=12,
)


@settings(max_examples=400, deadline=None)
@given(_QP_LINES)
def test_quoted_printable_line_by_line_is_binascii_s_encoding(lines: list[str]) -> None:
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    expected = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    assert compose._quoted_printable(data) == expected
    assert compose._quoted_printable(data) == expected  # again, from the cache
