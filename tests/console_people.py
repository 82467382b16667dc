"""Helpers for tests of the console as people use it: users, sessions, forms, captured links."""

from __future__ import annotations

import email
import re
from email.message import EmailMessage
from email.policy import default
from typing import Any

import asyncpg
from aiohttp import FormData
from aiohttp.test_utils import TestClient

from notifier.console import sessions
from notifier.settings import Settings
from tests.conftest import MailSink

Client = TestClient[Any, Any]


async def session_cookie(pool: asyncpg.Pool, settings: Settings, row: asyncpg.Record) -> dict[str, str]:
    """A `Cookie` header of a fresh session of the console user `row`."""
    sid = await sessions.open_session(pool, settings, role=row["role"], method="link", user_id=row["id"])
    return {"Cookie": f"{sessions.SESSION_COOKIE}={sid}"}


async def as_person(
    client: Client, pool: asyncpg.Pool, settings: Settings, row: asyncpg.Record
) -> tuple[dict[str, str], str]:
    """A fresh session of the console user `row`: its `Cookie` header and its CSRF token."""
    headers = await session_cookie(pool, settings, row)
    return headers, csrf_of(await (await client.get("/console/sessions", headers=headers)).text())


def csv_upload(csrf: str, data: bytes, **fields: str) -> FormData:
    """The console import's form: the CSRF token, `fields`, and `data` as the file members.csv."""
    form = FormData()
    form.add_field("csrf", csrf)
    for name, value in fields.items():
        form.add_field(name, value)
    form.add_field("file", data, filename="members.csv", content_type="text/csv")
    return form


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found[1]


def signin_token_of(html: str) -> str:
    found = re.search(r'name="signin_token" value="([^"]+)"', html)
    assert found, "no sign-in token on the page"
    return found[1]


async def ask_for_link(client: Client, address: str, next_page: str = "/console/") -> Any:
    """Fill in the sign-in page's e-mail form as a browser would."""
    page = await client.get("/console/sign-in?next=" + next_page)
    return await client.post(
        "/console/sign-in/link",
        data={"email": address, "signin_token": signin_token_of(await page.text()), "next": next_page},
        allow_redirects=False,
    )


def mails_to(smtp: MailSink, address: str) -> list[EmailMessage]:
    found: list[EmailMessage] = []
    for received in smtp.received:
        if address in received.recipients:
            found.append(email.message_from_bytes(received.data, _class=EmailMessage, policy=default))
    return found


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    text: str = part.get_content()
    return text


def link_in(message: EmailMessage) -> str:
    """The sign-in link's path and query in a captured e-mail."""
    found = re.search(r"https?://[^/\s]+(/console/sign-in/link\?token=[\w-]+)", text_of(message))
    assert found, "no sign-in link in the e-mail"
    return found[1]


async def use_link(client: Client, path: str) -> Any:
    """Open the link's page and press its button, as the person would."""
    page = await client.get(path)
    assert page.status == 200
    token = path.split("token=", 1)[1]
    return await client.post("/console/sign-in/link/use", data={"token": token}, allow_redirects=False)
