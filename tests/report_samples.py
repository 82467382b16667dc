"""Real-shaped reports about a message the tests sent: what Postfix, Exchange, Gmail, qmail and
Yahoo's feedback loop send back, and an out-of-office reply. Each takes the message as the
in-process SMTP server received it (its VERP return path and bytes)."""

from __future__ import annotations

from email import message_from_bytes, policy

from tests.conftest import Received


def _headers(received: Received) -> str:
    """The original's header block as a receiving MTA quotes it (with the Return-Path it adds)."""
    head = received.data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode()
    return f"Return-Path: <{received.sender}>\r\n" + head.replace("\r\n", "\n").replace("\n", "\r\n")


def _crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def postfix_dsn(received: Received, to: str | None = None, status: str = "5.1.1") -> bytes:
    rcpt = received.recipients[0]
    return _crlf(f"""Return-Path: <>
Received: by mx.example.com (Postfix) id 4F2A1C0123; Tue,  1 Dec 2026 10:00:03 +0000 (UTC)
Date: Tue,  1 Dec 2026 10:00:03 +0000 (UTC)
From: MAILER-DAEMON@mx.example.com (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: {to or received.sender}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
	boundary="4F2A1C0123.1764583203/mx.example.com"
Message-Id: <20261201100003.4F2A1C0123@mx.example.com>

This is a MIME-encapsulated message.

--4F2A1C0123.1764583203/mx.example.com
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.example.com.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

<{rcpt}>: host mx2.example.com[192.0.2.25] said: 550 {status} <{rcpt}>:
    Recipient address rejected: User unknown in local recipient table (in reply
    to RCPT TO command)

--4F2A1C0123.1764583203/mx.example.com
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.com
X-Postfix-Queue-ID: 4F2A1C0123
X-Postfix-Sender: rfc822; {received.sender}
Arrival-Date: Tue,  1 Dec 2026 10:00:02 +0000 (UTC)

Final-Recipient: rfc822; {rcpt}
Original-Recipient: rfc822;{rcpt}
Action: failed
Status: {status}
Remote-MTA: dns; mx2.example.com
Diagnostic-Code: smtp; 550 {status} <{rcpt}>: Recipient address rejected: User
    unknown in local recipient table

--4F2A1C0123.1764583203/mx.example.com
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

{_headers(received)}

--4F2A1C0123.1764583203/mx.example.com--
""")


def exchange_dsn(received: Received) -> bytes:
    rcpt = received.recipients[0]
    original = received.data.decode().replace("\r\n", "\n")
    return _crlf(f"""From: Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@corp.example.net>
To: <{received.sender}>
Date: Tue, 1 Dec 2026 10:05:11 +0000
Content-Type: multipart/report; report-type=delivery-status;
	boundary="_000_a1b2c3d4e5f6_"
Content-Language: en-US
Message-ID: <a1b2c3d4-e5f6-4a1b-9c8d-7e6f5a4b3c2d@EXCH01.corp.example.net>
In-Reply-To: <{received.message["Message-ID"].strip("<>")}>
Subject: Undeliverable: {received.message["Subject"]}
Auto-Submitted: auto-replied
X-MS-Exchange-Message-Is-Ndr:
MIME-Version: 1.0

--_000_a1b2c3d4e5f6_
Content-Type: text/plain; charset="us-ascii"

Your message to {rcpt} couldn't be delivered.
{rcpt.split("@")[0]} wasn't found at corp.example.net.

Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup'

--_000_a1b2c3d4e5f6_
Content-Type: message/delivery-status

Reporting-MTA: dns;EXCH01.corp.example.net
Received-From-MTA: dns;mail.example.org
Arrival-Date: Tue, 1 Dec 2026 10:05:10 +0000

Original-Recipient: rfc822;{rcpt}
Final-Recipient: rfc822;{rcpt}
Action: failed
Status: 5.1.10
Diagnostic-Code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup

--_000_a1b2c3d4e5f6_
Content-Type: message/rfc822

Return-Path: <{received.sender}>
{original}
--_000_a1b2c3d4e5f6_--
""")


def gmail_dsn(received: Received, action: str = "failed", status: str = "5.1.1", text: str = "") -> bytes:
    rcpt = received.recipients[0]
    text = text or (
        "The email account that you tried to reach does not exist. Please try double-checking "
        "the recipient's email address for typos or unnecessary spaces."
    )
    code = "550" if status.startswith("5") else "452"
    return _crlf(f"""Delivered-To: {received.sender}
Return-Path: <>
MIME-Version: 1.0
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: {received.sender}
Auto-Submitted: auto-replied
Subject: Delivery Status Notification ({"Failure" if action == "failed" else "Delay"})
Message-ID: <67a8e1f3.050a0220.2b9c1d.0001.GMR@mx.google.com>
Date: Tue, 01 Dec 2026 02:06:11 -0800 (PST)
Content-Type: multipart/report; boundary="000000000000a1b2c3"; report-type=delivery-status

--000000000000a1b2c3
Content-Type: multipart/related; boundary="000000000000a1b2d4"

--000000000000a1b2d4
Content-Type: text/plain; charset="UTF-8"

** Address not found **

Your message wasn't delivered to {rcpt} because the address couldn't be found.

The response was:

{code} {status} {text}

--000000000000a1b2d4--

--000000000000a1b2c3
Content-Type: message/delivery-status

Reporting-MTA: dns; googlemail.com
Received-From-MTA: dns; mail.example.org
Arrival-Date: Tue, 01 Dec 2026 02:06:10 -0800 (PST)
X-Original-Message-ID: {received.message["Message-ID"]}

Final-Recipient: rfc822; {rcpt}
Action: {action}
Status: {status}
Remote-MTA: dns; gmail-smtp-in.l.google.com. (2a00:1450:4013:c01::1b, the server for the domain gmail.com.)
Diagnostic-Code: smtp; {code}-{status} {text}
Last-Attempt-Date: Tue, 01 Dec 2026 02:06:11 -0800 (PST)

--000000000000a1b2c3
Content-Type: message/rfc822

Return-Path: <{received.sender}>
{received.data.decode().replace(chr(13), "")}
--000000000000a1b2c3--
""")


def qmail_bounce(received: Received) -> bytes:
    """Not a multipart/report: what flufl.bounce's detectors are for."""
    rcpt = received.recipients[0]
    return _crlf(f"""Return-Path: <>
Date: 1 Dec 2026 10:09:00 -0000
From: MAILER-DAEMON@qmail.example.net
To: {received.sender}
Subject: failure notice

Hi. This is the qmail-send program at qmail.example.net.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<{rcpt}>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

{_headers(received)}
""")


def yahoo_arf(received: Received) -> bytes:
    rcpt = received.recipients[0]
    original = received.data.decode().replace("\r\n", "\n")
    return _crlf(f"""From: Yahoo! Mail AntiSpam Feedback <feedback@arf.mail.yahoo.com>
To: fbl@bounces.example.org
Subject: FW: {received.message["Subject"]}
Date: Tue, 1 Dec 2026 10:15:00 +0000
Message-ID: <20261201101500.ARF.12345@arf.mail.yahoo.com>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="----=_Part_12345"

------=_Part_12345
Content-Type: text/plain; charset=us-ascii

This is an email abuse report for an email message received from IP 192.0.2.10 on Tue, 1 Dec 2026.

------=_Part_12345
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: Yahoo!-Mail-Feedback/2.0
Version: 0.1
Original-Mail-From: <{received.sender}>
Original-Rcpt-To: <{rcpt}>
Received-Date: Tue, 1 Dec 2026 10:00:00 +0000
Source-IP: 192.0.2.10
Reported-Domain: example.org
Authentication-Results: mta1001.mail.gq1.yahoo.com  from=example.org; domainkeys=neutral (no sig);  from=example.org; dkim=pass (ok)

------=_Part_12345
Content-Type: message/rfc822

Return-Path: <{received.sender}>
{original}
------=_Part_12345--
""")


def out_of_office(received: Received) -> bytes:
    rcpt = received.recipients[0]
    return _crlf(f"""From: {rcpt}
To: {received.sender}
Subject: Automatic reply: {received.message["Subject"]}
Date: Tue, 1 Dec 2026 10:20:00 +0000
Message-ID: <ooo-1@example.com>
Auto-Submitted: auto-replied
X-Auto-Response-Suppress: All
Content-Type: text/plain; charset=us-ascii

I am out of the office until 14 December with no access to e-mail.
""")


def unsubscribe_mail(to: str, token: str, in_reply_to: str = "") -> bytes:
    """What a mail client sends for a List-Unsubscribe mailto (a reply names the e-mail it answers)."""
    reply = f"In-Reply-To: {in_reply_to}\n" if in_reply_to else ""
    return _crlf(f"""From: member@example.com
To: {to}
Subject: unsubscribe-{token}
Date: Tue, 1 Dec 2026 10:25:00 +0000
Message-ID: <unsub-1@example.com>
{reply}
""")


def list_unsubscribe_mailto(received: Received) -> tuple[str, str]:
    """(address, token) of the mailto in the message's List-Unsubscribe header."""
    msg = message_from_bytes(received.data, policy=policy.default)
    value = str(msg["List-Unsubscribe"])
    mailto = value.split("<mailto:")[1].split(">")[0]
    address, _, query = mailto.partition("?")
    return address, query.removeprefix("subject=unsubscribe-")
