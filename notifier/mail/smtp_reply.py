"""What an SMTP server's refusal means, and its text made fit to store.

`classify(code, text)` reads the enhanced status code (RFC 3463, `5.1.1` after the basic code)
first and only falls back to the wording when there is none:

| reply | category | what delivery does |
|---|---|---|
| 5.1.1, 5.1.6, 5.1.10 (bad, moved or null-MX mailbox) | `bad_mailbox` | fail, suppress the address |
| 5.2.x (mailbox full, over quota) and 552 | `mailbox_full` | temporary: retry, suppress no one |
| 5.7.x (authentication, DMARC, spam policy) | `policy` | fail this e-mail, suppress no one, shown in the console |
| any other 5xx | `permanent` | fail this e-mail, suppress no one |
| 4xx, garbled replies | `temporary` | retry |

A policy rejection such as Gmail's `550 5.7.26 This mail is unauthenticated ... Gmail users`
is about the sender, not the recipient: counting its "users" as an unknown mailbox would
suppress every Gmail address after one DMARC mistake.

`redact(text)` replaces every e-mail address in a reply (`<jo@example.org>: Recipient address
rejected`) so that bounce texts stored in `emails.last_error`, `events.detail` and
`suppressions.detail` carry no address.
"""

from __future__ import annotations

import re
from typing import Literal

Category = Literal["bad_mailbox", "mailbox_full", "policy", "permanent", "temporary"]

# An enhanced status code at the start of the reply text (of its first line; multi-line replies
# repeat it on each): class.subject.detail, RFC 3463 section 2.
_ENHANCED = re.compile(r"\s*([245])\.(\d{1,3})\.(\d{1,3})(?!\d)")
BAD_MAILBOX_CODES = frozenset({"5.1.1", "5.1.6", "5.1.10"})

# Wording of replies without an enhanced code that mean the mailbox does not exist. Bare "user" or
# "mailbox" is not among them: "mailbox unavailable" is RFC 5321's text for any 550, and policy
# rejections talk about "users".
_NO_SUCH_MAILBOX = re.compile(
    r"user unknown|unknown user|no such (?:user|mailbox|recipient)|unknown (?:recipient|mailbox)"
    r"|recipient unknown|(?:mailbox|user|address|recipient) (?:does not|doesn't) exist"
    r"|invalid (?:recipient|mailbox)|mailbox not found|user not found|not a valid mailbox",
    re.IGNORECASE,
)
_MAILBOX_FULL = re.compile(
    r"mailbox (?:is )?full|over ?quota|quota exceeded|insufficient storage", re.IGNORECASE
)
_POLICY = re.compile(
    r"unauthenticated|dmarc|spf|dkim|blocked|blacklist|blocklist|spam|policy|reputation", re.IGNORECASE
)

# Anything shaped like an address: a run of non-space characters around an "@" (UTF-8 local parts
# and IDN domains included), without the brackets and quotes that usually surround it.
_ADDRESS = re.compile(r"""[^\s<>()\[\]"',;:@]+@[^\s<>()\[\]"',;:@]+""")
REDACTED = "[address]"


def enhanced_code(text: str) -> str | None:
    """The enhanced status code at the start of a reply text (`5.7.26`), or None."""
    match = _ENHANCED.match(text)
    return ".".join(match.groups()) if match else None


def classify(code: int, text: str) -> Category:
    """What a reply means for this e-mail and its address (see the module's table)."""
    if not 400 <= code < 600:
        return "temporary"  # aiosmtplib reports a garbled reply as -1
    enhanced = enhanced_code(text)
    # The enhanced class must agree with the basic code (RFC 3463 section 2); a 4xx with a
    # 5.x.x code is still temporary, and its detail is then not trusted.
    if enhanced is not None and enhanced[0] != str(code)[0]:
        enhanced = None
    if code < 500:
        return "temporary"
    if enhanced is None and code == 552:
        return "mailbox_full"
    return classify_status(enhanced, text, code in (550, 551, 553))


def classify_status(status: str | None, text: str, wording_may_say_no_mailbox: bool = True) -> Category:
    """What a permanent failure means, from its enhanced status code (`5.1.1`, as a delivery-status
    report or a provider states it), or from the wording when there is none. The one reading of
    RFC 3463 for in-session replies (`classify`), reports and provider events
    (`notifier.bounces.classify`)."""
    if status is not None and status[:1] in "45" and status.count(".") == 2:
        if status.startswith("4."):
            return "temporary"
        if status in BAD_MAILBOX_CODES:
            return "bad_mailbox"
        if status.startswith("5.2."):
            return "mailbox_full"
        if status.startswith("5.7."):
            return "policy"
        return "permanent"
    if _MAILBOX_FULL.search(text):
        return "mailbox_full"
    if _POLICY.search(text):
        return "policy"
    if wording_may_say_no_mailbox and _NO_SUCH_MAILBOX.search(text):
        return "bad_mailbox"
    return "permanent"


def redact(text: str) -> str:
    """`text` with every e-mail address replaced by `[address]`."""
    if "@" not in text:
        return text
    return _ADDRESS.sub(REDACTED, text)


def summary(code: int | None, text: str, category: str) -> str:
    """A refusal without its words: the codes and what they mean (`550 5.1.1 bad_mailbox`), for
    e-mails that must keep nothing of what a server said about the person (the erasure notice)."""
    basic = str(code) if code is not None else "no code"
    rest = text.removeprefix(basic).lstrip(" -")
    enhanced = enhanced_code(rest)
    return " ".join(part for part in (basic, enhanced, category) if part)
