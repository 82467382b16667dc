"""The web console (/console): sign-in and sessions, CSRF, scopes, and every page over real data."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from arq import ArqRedis
from yarl import URL

from notifier import newsletter, queues, suppression
from notifier.api import auth
from notifier.app import create_app
from notifier.console import chart
from notifier.resources import POOL
from notifier.settings import ConfigError, Settings
from tests.conftest import BurstWorker, MailSink
from tests.factory import Factory

Client = TestClient[Any, Any]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings over plain http, so the test client sends the session cookie back
    (it keeps Secure cookies for https); `test_cookie_is_secure_over_https` checks that case."""
    return settings.model_copy(update={"public_url": "http://127.0.0.1", "console_key_sign_in": True})


async def sign_in(client: Client, pool: asyncpg.Pool, scopes: list[str], name: str = "Operator Olga") -> str:
    """Create a key with `scopes`, sign in with it, and return the session's CSRF token."""
    _, key = await auth.create_key(pool, name, scopes)
    resp = await post_key(client, key)
    assert resp.status == 303, await resp.text()
    home = await client.get("/console/")
    assert home.status == 200
    return csrf_of(await home.text())


async def post_key(client: Client, key: str, next_page: str = "/console/") -> Any:
    page = await client.get("/console/sign-in")
    assert page.status == 200
    token = re.search(r'name="signin_token" value="([^"]+)"', await page.text())
    assert token
    return await client.post(
        "/console/sign-in",
        data={"key": key, "signin_token": token[1], "next": next_page},
        allow_redirects=False,
    )


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found[1]


# --- sign-in, sessions, CSRF, scopes -------------------------------------------------------------


async def test_sign_in_exchanges_the_key_for_a_strict_session_cookie(
    client: Client, pool: asyncpg.Pool
) -> None:
    _, key = await auth.create_key(pool, "Operator Olga", ["admin"])
    resp = await post_key(client, key, "/console/members?q=x")
    assert resp.status == 303
    assert resp.headers["Location"] == "/console/members?q=x"
    cookie = next(v for v in resp.headers.getall("Set-Cookie") if v.startswith("notifier_console="))
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "samesite=strict", "path=/console"} <= flags
    assert "secure" not in flags  # PUBLIC_URL is http here
    session_id = cookie.split(";")[0].split("=", 1)[1]
    row = await pool.fetchrow("SELECT * FROM console_sessions")
    assert row["role"] == "admin" and row["method"] == "api_key"
    assert row["expires_at"] > datetime.now(UTC) + timedelta(hours=11)
    # Only a hash of the session id is stored, and the key itself nowhere.
    assert session_id.encode() not in bytes(row["id_hash"])
    page = await client.get("/console/")
    text = await page.text()
    assert "Operator Olga" in text and key not in text


async def test_cookie_is_secure_over_https(settings: Settings, pool: asyncpg.Pool, redis: ArqRedis) -> None:
    https = settings.model_copy(update={"public_url": "https://notifier.test"})
    _, key = await auth.create_key(pool, "Operator", ["admin"])
    async with TestClient(TestServer(create_app(https))) as client:
        page = await client.get("/console/sign-in")
        signin_cookie = page.headers["Set-Cookie"]
        assert "Secure" in signin_cookie
        token = re.search(r'name="signin_token" value="([^"]+)"', await page.text())
        assert token
        value = signin_cookie.split(";")[0].split("=", 1)[1]
        resp = await client.post(
            "/console/sign-in",
            data={"key": key, "signin_token": token[1]},
            headers={"Cookie": f"notifier_console_signin={value}"},
            allow_redirects=False,
        )
        assert resp.status == 303
        cookie = next(v for v in resp.headers.getall("Set-Cookie") if v.startswith("notifier_console="))
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie


@pytest.mark.parametrize(
    ("scopes", "revoke", "message"),
    [
        (["messages", "accounts"], False, "admin or newsletters scope"),
        (["admin"], True, "not valid"),
    ],
)
async def test_sign_in_refuses_keys_without_console_scope_or_revoked(
    client: Client, pool: asyncpg.Pool, scopes: list[str], revoke: bool, message: str
) -> None:
    key_id, key = await auth.create_key(pool, "Someone", scopes)
    if revoke:
        await auth.revoke_key(pool, key_id)
    resp = await post_key(client, key)
    assert resp.status == 401
    assert message in await resp.text()
    assert await pool.fetchval("SELECT count(*) FROM console_sessions") == 0


async def test_sign_in_refuses_unknown_key_and_a_form_without_its_token(
    client: Client, pool: asyncpg.Pool
) -> None:
    resp = await post_key(client, "ntf_not-a-key")
    assert resp.status == 401
    _, key = await auth.create_key(pool, "Operator", ["admin"])
    resp = await client.post("/console/sign-in", data={"key": key}, allow_redirects=False)
    assert resp.status == 403
    assert "expired" in await resp.text()
    assert await pool.fetchval("SELECT count(*) FROM console_sessions") == 0


async def test_pages_without_a_session_send_to_sign_in(client: Client, pool: asyncpg.Pool) -> None:
    resp = await client.get("/console/members?q=a", allow_redirects=False)
    assert resp.status == 303
    location = URL(resp.headers["Location"])
    assert location.path == "/console/sign-in" and location.query["next"] == "/console/members?q=a"
    resp = await client.post(
        "/console/suppressions", data={"address": "a@example.com"}, allow_redirects=False
    )
    assert resp.status == 303
    assert await pool.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_sign_in_never_redirects_off_the_console(client: Client, pool: asyncpg.Pool) -> None:
    _, key = await auth.create_key(pool, "Operator", ["admin"])
    resp = await post_key(client, key, "//evil.example/console")
    assert resp.status == 303
    assert resp.headers["Location"] == "/console/"


async def test_revoking_the_key_ends_its_sessions(client: Client, pool: asyncpg.Pool) -> None:
    await sign_in(client, pool, ["admin"])
    key_id = await pool.fetchval("SELECT api_key_id FROM console_sessions")
    assert (await client.get("/console/members", allow_redirects=False)).status == 200
    assert await auth.revoke_key(pool, key_id)
    resp = await client.get("/console/members", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"].startswith("/console/sign-in")


async def test_expired_session_is_refused(client: Client, pool: asyncpg.Pool) -> None:
    await sign_in(client, pool, ["admin"])
    await pool.execute("UPDATE console_sessions SET expires_at = now() - interval '1 second'")
    resp = await client.get("/console/", allow_redirects=False)
    assert resp.status == 303
    # The next sign-in purges expired sessions.
    await sign_in(client, pool, ["admin"])
    assert await pool.fetchval("SELECT count(*) FROM console_sessions WHERE expires_at < now()") == 0
    assert await pool.fetchval("SELECT count(*) FROM console_sessions") == 1


async def test_sign_out_ends_the_session_and_needs_the_csrf_token(client: Client, pool: asyncpg.Pool) -> None:
    csrf = await sign_in(client, pool, ["newsletters"])
    resp = await client.post("/console/sign-out", data={}, allow_redirects=False)
    assert resp.status == 403
    assert await pool.fetchval("SELECT count(*) FROM console_sessions") == 1
    resp = await client.post("/console/sign-out", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/console/sign-in?notice=signed-out"
    assert await pool.fetchval("SELECT count(*) FROM console_sessions") == 0
    assert (await client.get("/console/", allow_redirects=False)).status == 303


async def test_every_post_is_refused_without_the_sessions_csrf_token(
    client: Client, pool: asyncpg.Pool, factory: Factory
) -> None:
    csrf = await sign_in(client, pool, ["admin"])
    member = await factory.account()
    posts: list[tuple[str, dict[str, str]]] = [
        (
            "/console/suppressions",
            {"address": "x@example.com", "list": "all", "reason": "manual", "note": "n"},
        ),
        (
            f"/console/members/{member['external_id']}/erase",
            {"confirm": member["external_id"], "reason": "request"},
        ),
        ("/console/newsletters/new", {"subject": "S", "body": "B", "action": "save"}),
    ]
    for path, data in posts:
        for token in (None, "forged", csrf + "x"):
            body = dict(data) if token is None else {**data, "csrf": token}
            resp = await client.post(path, data=body, allow_redirects=False)
            assert resp.status == 403, path
            assert "security token" in await resp.text()
    assert await pool.fetchval("SELECT count(*) FROM suppressions") == 0
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 1
    assert await pool.fetchval("SELECT count(*) FROM newsletters") == 0


async def test_newsletters_scope_sees_only_newsletter_pages(
    client: Client, pool: asyncpg.Pool, factory: Factory
) -> None:
    member = await factory.account()
    csrf = await sign_in(client, pool, ["newsletters"], name="Marketing Max")
    home = await (await client.get("/console/")).text()
    assert 'href="/console/newsletters"' in home
    assert 'href="/console/members"' not in home and "Sent, last hour" not in home
    assert (await client.get("/console/newsletters")).status == 200
    for path in (
        "/console/members",
        f"/console/members/{member['external_id']}",
        f"/console/members/{member['external_id']}/export",
        "/console/deliverability",
        "/console/suppressions",
        "/console/failed",
        "/console/mailbox",
    ):
        resp = await client.get(path)
        assert resp.status == 403, path
        assert member["email"] not in await resp.text()
    resp = await client.post(
        f"/console/members/{member['external_id']}/erase",
        data={"csrf": csrf, "confirm": member["external_id"], "reason": "request"},
    )
    assert resp.status == 403
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 1


async def test_error_pages_are_html_with_security_headers(client: Client, pool: asyncpg.Pool) -> None:
    await sign_in(client, pool, ["admin"])
    resp = await client.get("/console/newsletters/999")
    assert resp.status == 404
    assert resp.content_type == "text/html"
    assert "no newsletter with that number" in await resp.text()
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["Cache-Control"] == "no-store"
    resp = await client.get("/console/members/nobody")
    assert resp.status == 404 and resp.content_type == "text/html"


async def test_static_files_are_served_by_the_app(client: Client) -> None:
    css = await client.get("/console/static/console.css")
    assert css.status == 200 and css.content_type == "text/css"
    assert ":focus-visible" in await css.text()
    js = await client.get("/console/static/console.js")
    assert js.status == 200 and js.content_type == "text/javascript"
    assert (await client.get("/console/static/..%2Fconsole%2Flayout.html")).status == 404
    assert (await client.get("/console/static/layout.html")).status == 404


# --- members -------------------------------------------------------------------------------------


async def test_find_a_member_and_see_everything_held(
    client: Client, pool: asyncpg.Pool, factory: Factory
) -> None:
    await sign_in(client, pool, ["admin"])
    member = await factory.account(email="grace.hopper@example.com", name="Grace Hopper", external_id="gh-1")
    await factory.account(email="grace.kelly@example.com", name="Grace Kelly")
    await factory.message(member, subject="Your comment got a reply")
    await factory.message(member, subject="Archived long ago", archived_at=datetime(2026, 1, 1, tzinfo=UTC))
    await factory.email(
        member, status="failed", last_error="550 5.1.1 no such user", subject="Welcome aboard"
    )
    await factory.event("unsubscribed", account_id=member["id"], method="one-click")
    await pool.execute(
        "INSERT INTO audit_log (account_id, actor_type, actor, action, changes) VALUES ($1, 'api_key', 'registry', 'account.updated', $2)",
        member["id"],
        {"name": {"before": "G. Hopper", "after": "Grace Hopper"}},
    )
    await suppression.add(pool, "Grace.Hopper@example.com", "unsubscribed", "newsletter")

    found = await (await client.get("/console/members", params={"q": "GRACE.HOPPER@example.com"})).text()
    assert "Grace Hopper" in found and "Grace Kelly" not in found
    prefix = await (await client.get("/console/members", params={"q": "grace"})).text()
    assert "Grace Hopper" in prefix and "Grace Kelly" in prefix
    none = await (await client.get("/console/members", params={"q": "nobody%"})).text()
    assert "No member matches" in none

    resp = await client.get("/console/members", params={"q": "gh-1"}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/console/members/gh-1"
    profile = await (await client.get("/console/members/gh-1")).text()
    for expected in (
        "grace.hopper@example.com",
        "Your comment got a reply",
        "Welcome aboard",
        "550 5.1.1 no such user",
        "unsubscribed",
        "one-click",
        "account.updated",
        "G. Hopper",
        "newsletter (unsubscribed)",
        '<html lang="en">',
    ):
        assert expected in profile, expected
    member_view = profile.split('id="member-inbox"')[1].split("</section>")[0]
    assert "Unread: Your comment got a reply" in member_view and "1 unread, 1 not yet seen" in member_view
    assert "Archived long ago" not in member_view  # the member no longer sees it


async def test_export_downloads_the_accounts_document_and_is_audited(
    client: Client, pool: asyncpg.Pool, factory: Factory
) -> None:
    await sign_in(client, pool, ["admin"], name="Support Sam")
    member = await factory.account(external_id="ext/7")
    await factory.message(member, subject="Hello there")
    resp = await client.get("/console/members/ext%2F7/export")
    assert resp.status == 200
    assert resp.headers["Content-Disposition"] == 'attachment; filename="account-ext_7.json"'
    document = json.loads(await resp.text())
    assert document["account"]["email"] == member["email"]
    assert [m["subject"] for m in document["messages"]] == ["Hello there"]
    row = await pool.fetchrow(
        "SELECT actor_type, actor, action FROM audit_log WHERE account_id = $1", member["id"]
    )
    assert dict(row) == {"actor_type": "operator", "actor": "Support Sam", "action": "account.exported"}


async def test_erase_needs_the_typed_confirmation(
    client: Client, pool: asyncpg.Pool, factory: Factory
) -> None:
    csrf = await sign_in(client, pool, ["admin"], name="Support Sam")
    member = await factory.account(external_id="child-9")
    await factory.message(member)
    await suppression.add(pool, member["email"], "hard_bounce")
    confirm = await client.get("/console/members/child-9/erase")
    assert confirm.status == 200
    assert "cannot be undone" in await confirm.text()

    wrong = await client.post(
        "/console/members/child-9/erase", data={"csrf": csrf, "confirm": "child-8", "reason": "child"}
    )
    assert wrong.status == 422
    assert "Type the member" in await wrong.text()
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 1

    resp = await client.post(
        "/console/members/child-9/erase",
        data={"csrf": csrf, "confirm": "child-9", "reason": "child"},
        allow_redirects=False,
    )
    assert resp.status == 303
    assert resp.headers["Location"] == "/console/members?notice=erased"
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 0
    assert await pool.fetchval("SELECT count(*) FROM messages") == 0
    erasure = await pool.fetchrow("SELECT reason, actor_type, actor FROM erasures")
    assert dict(erasure) == {"reason": "child", "actor_type": "operator", "actor": "Support Sam"}
    assert await suppression.check(pool, member["email"]) == "hard_bounce"
    assert (await client.get("/console/members/child-9")).status == 404


# --- deliverability ------------------------------------------------------------------------------


async def test_suppression_add_search_and_remove_with_reasons(
    client: Client, pool: asyncpg.Pool, factory: Factory
) -> None:
    csrf = await sign_in(client, pool, ["admin"], name="Deliverability Dee")
    member = await factory.account(email="ada@example.com")

    bad = await client.post(
        "/console/suppressions",
        data={"csrf": csrf, "address": "not an address", "list": "all", "reason": "manual"},
    )
    assert bad.status == 422
    text = await bad.text()
    assert "Enter an e-mail address." in text and "Say why" in text
    assert await pool.fetchval("SELECT count(*) FROM suppressions") == 0

    resp = await client.post(
        "/console/suppressions",
        data={
            "csrf": csrf,
            "address": " ADA@example.com",
            "list": "all",
            "reason": "complaint",
            "note": "FBL report",
        },
        allow_redirects=False,
    )
    assert resp.status == 303
    assert await suppression.check(pool, "ada@example.com") == "complaint"
    audit_row = await pool.fetchrow("SELECT * FROM audit_log WHERE account_id = $1", member["id"])
    assert (audit_row["actor_type"], audit_row["actor"], audit_row["action"]) == (
        "operator",
        "Deliverability Dee",
        "suppression.suppressed",
    )
    assert audit_row["changes"]["note"] == "FBL report"
    assert "ada@example.com" not in json.dumps(audit_row["changes"])
    event = await pool.fetchrow("SELECT kind, method FROM events WHERE account_id = $1", member["id"])
    assert dict(event) == {"kind": "suppressed", "method": "console"}

    hashed = suppression.address_hash("ada@example.com").hex()
    search = await (await client.get("/console/suppressions", params={"address": "Ada@Example.com"})).text()
    assert hashed[:16] in search and "complaint" in search
    other = await (await client.get("/console/suppressions", params={"address": "bob@example.com"})).text()
    assert "is not suppressed" in other

    no_note = await client.post(
        "/console/suppressions/remove", data={"csrf": csrf, "hash": hashed, "list": "all", "note": " "}
    )
    assert no_note.status == 422
    assert await suppression.check(pool, "ada@example.com") == "complaint"

    resp = await client.post(
        "/console/suppressions/remove",
        data={
            "csrf": csrf,
            "hash": hashed,
            "list": "all",
            "address": "ada@example.com",
            "note": "Member asked",
        },
        allow_redirects=False,
    )
    assert resp.status == 303
    assert await suppression.check(pool, "ada@example.com") is None
    removed = await pool.fetchrow(
        "SELECT changes FROM audit_log WHERE account_id = $1 AND action = 'suppression.unsuppressed'",
        member["id"],
    )
    assert removed["changes"]["was"] == "complaint" and removed["changes"]["note"] == "Member asked"

    # An address without an account: audited without one, naming only the hash.
    await client.post(
        "/console/suppressions",
        data={
            "csrf": csrf,
            "address": "stranger@example.net",
            "list": "newsletter",
            "reason": "manual",
            "note": "x",
        },
    )
    row = await pool.fetchrow(
        "SELECT account_id, changes FROM audit_log WHERE action = 'suppression.suppressed' AND account_id IS NULL"
    )
    assert row["changes"]["address_hash"] == suppression.address_hash("stranger@example.net").hex()


async def test_failed_emails_show_their_errors_and_can_be_redriven(
    client: Client,
    pool: asyncpg.Pool,
    redis: ArqRedis,
    factory: Factory,
    run_worker: BurstWorker,
    smtp: MailSink,
) -> None:
    csrf = await sign_in(client, pool, ["admin"], name="Operator Olga")
    member = await factory.account()
    failed = await factory.email(
        member,
        template="service/selftest",
        context={"public_url": "https://notifier.test"},
        status="failed",
        attempts=5,
        last_error="451 4.3.0 try later",
        failed_at=datetime.now(UTC),
    )
    sent = await factory.email(member, status="sent", sent_at=datetime.now(UTC))
    page = await (await client.get("/console/failed")).text()
    assert "451 4.3.0 try later" in page and member["email"] in page
    assert f'value="{sent["id"]}"' not in page

    other = await factory.email(status="failed", last_error="550 no")
    # The row's button re-drives its row only, whatever else is ticked.
    resp = await client.post(
        "/console/failed/redrive",
        data={"csrf": csrf, "id": str(other["id"]), "only": str(failed["id"])},
        allow_redirects=False,
    )
    assert resp.status == 303 and resp.headers["Location"] == "/console/failed?notice=redriven"
    assert await pool.fetchval("SELECT status FROM emails WHERE id = $1", other["id"]) == "failed"
    row = await pool.fetchrow("SELECT status, attempts, last_error FROM emails WHERE id = $1", failed["id"])
    assert dict(row) == {"status": "queued", "attempts": 0, "last_error": None}
    assert await redis.zcard(queues.SERVICE) >= 1
    audit_row = await pool.fetchrow("SELECT actor, changes FROM audit_log WHERE action = 'emails.redriven'")
    assert audit_row["actor"] == "Operator Olga" and audit_row["changes"]["email_ids"] == [failed["id"]]

    await run_worker(queues.SERVICE)
    assert await pool.fetchval("SELECT status FROM emails WHERE id = $1", failed["id"]) == "sent"
    assert [r.recipients for r in smtp.received] == [[member["email"]]]

    again = await client.post(
        "/console/failed/redrive", data={"csrf": csrf, "id": str(failed["id"])}, allow_redirects=False
    )
    assert again.headers["Location"] == "/console/failed?notice=nothing-redriven"
    ticked = await client.post(
        "/console/failed/redrive", data=[("csrf", csrf), ("id", str(other["id"])), ("id", str(failed["id"]))]
    )
    assert ticked.status == 200
    assert await pool.fetchval("SELECT status FROM emails WHERE id = $1", other["id"]) == "queued"
    assert (await client.post("/console/failed/redrive", data={"csrf": csrf})).status == 400


async def test_deliverability_shows_rate_and_queue_depths(
    client: Client, pool: asyncpg.Pool, redis: ArqRedis, factory: Factory
) -> None:
    await sign_in(client, pool, ["admin"])
    now = datetime.now(UTC)
    for minutes in (0, 0, 30, 300):
        await factory.email(status="sent", sent_at=now - timedelta(minutes=minutes, seconds=5))
    for _ in range(3):
        await factory.email(kind="newsletter", queue=queues.BULK, template="newsletter")
    await factory.email(queue=queues.SERVICE)
    await redis.enqueue_job("deliver", _queue_name=queues.BULK)
    page = await (await client.get("/console/deliverability")).text()
    figures = dict(re.findall(r"<dt>([^<]+)</dt><dd>([^<]+)</dd>", page))
    assert figures["Sent, last minute"] == "2"
    assert figures["Sent, last hour"] == "3"
    assert figures["Sent, last 24 hours"] == "4"
    bulk = re.search(r"bulk <code>notifier:bulk</code></th>((?:<td[^>]*>[^<]*</td>)+)", page)
    assert bulk
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", bulk[1])
    assert cells[0] == "3" and cells[1] == "3" and cells[-1] == "1"


# --- newsletters ---------------------------------------------------------------------------------


async def test_a_compose_post_missing_fields_is_shown_not_a_500(client: Client, pool: asyncpg.Pool) -> None:
    """A hand-made POST without the preheader or the format (not what the form sends) is the
    form again with the problem, never an error page."""
    csrf = await sign_in(client, pool, ["newsletters"])
    for data in (
        {"csrf": csrf, "subject": "S", "body": "B", "action": "preview"},
        {"csrf": csrf, "subject": "S", "body": "B", "action": "save"},
        {"csrf": csrf, "action": "save"},
    ):
        resp = await client.post("/console/newsletters/new", data=data, allow_redirects=False)
        assert resp.status in (200, 303, 422), (data, resp.status, await resp.text())


async def test_compose_preview_test_send_send_and_follow(
    client: Client,
    pool: asyncpg.Pool,
    factory: Factory,
    settings: Settings,
    run_worker: BurstWorker,
    smtp: MailSink,
) -> None:
    csrf = await sign_in(client, pool, ["newsletters"], name="Marketing Max")
    for n in range(3):
        await factory.account(newsletter=True, name=f"Reader {n}")
    await factory.account(newsletter=False)

    assert (await client.get("/console/newsletters/new")).status == 200
    draft = {"csrf": csrf, "subject": "Spring news", "preheader": "What grew", "body_format": "markdown"}
    preview = await client.post(
        "/console/newsletters/new", data={**draft, "body": "# Hello {{ first_name }}", "action": "preview"}
    )
    assert preview.status == 200
    html = await preview.text()
    assert html.count("srcdoc=") == 2 and "Hello Ada" in html and 'width="375"' in html
    assert await pool.fetchval("SELECT count(*) FROM newsletters") == 0

    broken = await client.post(
        "/console/newsletters/new", data={**draft, "body": "Hi {{ first_name", "action": "save"}
    )
    assert broken.status == 422 and "template error" in await broken.text()
    assert await pool.fetchval("SELECT count(*) FROM newsletters") == 0

    live = await client.post("/console/newsletters/preview", data={**draft, "body": "**Bold** {{ name }}"})
    assert live.status == 200
    assert "<strong>Bold</strong> Ada Lovelace" in (await live.json())["html"]

    saved = await client.post(
        "/console/newsletters/new",
        data={**draft, "body": "# Hello {{ first_name }}", "action": "save"},
        allow_redirects=False,
    )
    assert saved.status == 303
    location = saved.headers["Location"]
    newsletter_id = int(location.split("/")[-1].split("?")[0])
    assert (await pool.fetchrow("SELECT created_by, status FROM newsletters"))[
        "created_by"
    ] == "operator:Marketing Max"
    edit = await (await client.get(f"/console/newsletters/{newsletter_id}")).text()
    assert "Spring news" in edit and "Send test" in edit

    test = await client.post(
        f"/console/newsletters/{newsletter_id}/test",
        data={"csrf": csrf, "to": "me@example.org, you@example.org"},
    )
    assert test.status == 200
    assert await pool.fetchval("SELECT count(*) FROM emails WHERE kind = 'test'") == 2
    bad_test = await client.post(
        f"/console/newsletters/{newsletter_id}/test", data={"csrf": csrf, "to": "nope"}
    )
    assert bad_test.status == 422

    sent = await client.post(
        f"/console/newsletters/{newsletter_id}/send",
        data={"csrf": csrf, "when": "now"},
        allow_redirects=False,
    )
    assert sent.status == 303 and sent.headers["Location"].endswith("notice=sending")
    await run_worker(queues.BULK)
    await run_worker(queues.BULK)
    await run_worker(queues.SERVICE)
    sending = await (await client.get(f"/console/newsletters/{newsletter_id}")).text()
    assert "Recipients" in sending

    assert await newsletter.finish_done(pool) == [newsletter_id]
    subjects = sorted(r.message["Subject"] for r in smtp.received)
    assert subjects == ["Spring news"] * 3 + ["[TEST] Spring news"] * 2
    done = await (await client.get(f"/console/newsletters/{newsletter_id}")).text()
    assert "badge-sent" in done
    assert re.search(r'data-figure="sent">3<', done)
    assert "<svg" in done and "Delivered: 3" in done
    assert (
        await client.post(f"/console/newsletters/{newsletter_id}/send", data={"csrf": csrf, "when": "now"})
    ).status == 409
    reader = await pool.fetchrow("SELECT account_id, id FROM emails WHERE kind = 'newsletter' LIMIT 1")
    await factory.event(
        "unsubscribed", account_id=reader["account_id"], email_id=reader["id"], newsletter_id=newsletter_id
    )
    listing = await (await client.get("/console/newsletters")).text()
    assert "Spring news" in listing and "badge-sent" in listing
    cells = re.findall(r'<td class="num">([^<]*)</td>', listing)
    assert cells == ["3", "3", "0", "0", "1"]  # recipients, sent, failed, pending, unsubscribed


async def test_schedule_unschedule_and_cancel(client: Client, pool: asyncpg.Pool) -> None:
    csrf = await sign_in(client, pool, ["admin"])
    resp = await client.post(
        "/console/newsletters/new",
        data={"csrf": csrf, "subject": "Later", "body": "Text", "body_format": "markdown", "action": "save"},
        allow_redirects=False,
    )
    newsletter_id = int(resp.headers["Location"].split("/")[-1].split("?")[0])
    at = (datetime.now(UTC) + timedelta(days=2)).replace(second=0, microsecond=0)
    bad = await client.post(
        f"/console/newsletters/{newsletter_id}/send", data={"csrf": csrf, "when": "later", "at": ""}
    )
    assert bad.status == 422
    resp = await client.post(
        f"/console/newsletters/{newsletter_id}/send",
        data={"csrf": csrf, "when": "later", "at": at.strftime("%Y-%m-%dT%H:%M")},
        allow_redirects=False,
    )
    assert resp.headers["Location"].endswith("notice=scheduled")
    row = await pool.fetchrow("SELECT status, scheduled_at FROM newsletters")
    assert row["status"] == "scheduled" and row["scheduled_at"] == at
    page = await (await client.get(f"/console/newsletters/{newsletter_id}")).text()
    assert "Sending starts at" in page and "Back to draft" in page
    await client.post(f"/console/newsletters/{newsletter_id}/unschedule", data={"csrf": csrf})
    assert await pool.fetchval("SELECT status FROM newsletters") == "draft"
    await client.post(f"/console/newsletters/{newsletter_id}/cancel", data={"csrf": csrf})
    assert await pool.fetchval("SELECT status FROM newsletters") == "cancelled"
    again = await client.post(f"/console/newsletters/{newsletter_id}/cancel", data={"csrf": csrf})
    assert again.status == 409


async def test_timeline_cumulates_events_per_bucket(pool: asyncpg.Pool, factory: Factory) -> None:
    newsletter_id = await pool.fetchval(
        "INSERT INTO newsletters (subject, body, status) VALUES ('S', 'B', 'sent') RETURNING id"
    )
    member = await factory.account()
    start = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    await factory.event("sent", newsletter_id=newsletter_id, created_at=start)  # a test-send: no account
    for minutes, kind in [
        (0, "sent"),
        (0, "sent"),
        (1, "failed"),
        (3, "sent"),
        (4, "bounced"),
        (9, "unsubscribed"),
    ]:
        await factory.event(
            kind,
            account_id=member["id"],
            newsletter_id=newsletter_id,
            created_at=start + timedelta(minutes=minutes, seconds=10),
        )
    line = await chart.timeline(pool, newsletter_id)
    assert line.bucket == timedelta(minutes=1)
    assert len(line.starts) == 10 and line.starts[0] == start
    assert line.series["Delivered"] == [2, 2, 2, 3, 3, 3, 3, 3, 3, 3]
    assert line.series["Failed"][-1] == 1 and line.series["Bounced"][3:5] == [0, 1]
    assert line.series["Unsubscribed"][-2:] == [0, 1]
    svg = chart.svg(line, "Chart")
    assert (
        svg.count("<polyline") == 4 and "56.0,220.0 " in svg and 'role="img"' in svg and "Delivered: 3" in svg
    )
    assert chart.bucket_for(timedelta(hours=10)) == timedelta(minutes=15)


# --- mailbox -------------------------------------------------------------------------------------


async def test_mailbox_shows_captured_mail_with_headers(
    settings: Settings, pool: asyncpg.Pool, redis: ArqRedis, tmp_path: Path
) -> None:
    dev = settings.model_copy(update={"capture_mail": True, "data_dir": tmp_path})
    mail_dir = tmp_path / "mail"
    mail_dir.mkdir()
    (mail_dir / "1700000000000000000-000001.eml").write_bytes(
        b"From: Example <service@example.org>\r\nTo: ada@example.com\r\nSubject: Welcome, Ada\r\n"
        b"Message-ID: <1@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello Ada\r\n"
        b"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Hello <b>Ada</b></p>\r\n--b--\r\n"
    )
    async with TestClient(TestServer(create_app(dev))) as client:
        await sign_in(client, pool, ["admin"])
        listing = await (await client.get("/console/mailbox")).text()
        assert "Welcome, Ada" in listing and 'href="/console/mailbox"' in listing
        message = await (await client.get("/console/mailbox/1700000000000000000-000001.eml")).text()
        assert "Message-ID" in message and "&lt;1@example.org&gt;" in message
        assert "Hello Ada" in message and "srcdoc=" in message and "&lt;b&gt;Ada" in message
        assert (await client.get("/console/mailbox/missing.eml")).status == 404


async def test_mailbox_says_how_to_turn_capture_on(client: Client, pool: asyncpg.Pool) -> None:
    await sign_in(client, pool, ["admin"])
    page = await (await client.get("/console/mailbox")).text()
    assert "Mail capture is off" in page


async def test_pages_escape_what_members_and_marketing_wrote(
    client: Client, pool: asyncpg.Pool, factory: Factory
) -> None:
    csrf = await sign_in(client, pool, ["admin"])
    await factory.account(external_id="x-1", name="<script>alert(1)</script>", email="x@example.com")
    profile = await (await client.get("/console/members/x-1")).text()
    assert "<script>alert(1)</script>" not in profile
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in profile
    resp = await client.post(
        "/console/newsletters/new",
        data={
            "csrf": csrf,
            "subject": '"><img src=x onerror=alert(1)>',
            "body": "<b>hi</b>",
            "action": "save",
        },
    )
    listing = await (await client.get("/console/newsletters")).text()
    assert resp.status == 200 and "<img src=x" not in listing
    # The newsletter's own HTML goes only into the sandboxed preview, escaped as an attribute.
    page = await (await client.get("/console/newsletters/1")).text()
    assert "<b>hi</b>" not in page and "&lt;b&gt;hi&lt;/b&gt;" in page
    assert re.search(r"<iframe[^>]* sandbox srcdoc=", page)


async def test_home_page_by_scope(client: Client, pool: asyncpg.Pool, factory: Factory) -> None:
    await factory.email(status="sent", sent_at=datetime.now(UTC))
    await sign_in(client, pool, ["admin", "newsletters"])
    assert await pool.fetchval("SELECT role FROM console_sessions") == "admin"
    home = await (await client.get("/console")).text()
    assert "Sent, last minute" in home and 'href="/console/deliverability"' in home


async def test_bad_input_gets_a_4xx_page_never_a_500(
    client: Client, pool: asyncpg.Pool, factory: Factory
) -> None:
    csrf = await sign_in(client, pool, ["admin"])
    await factory.email(status="failed")
    for path in (
        "/console/newsletters/²",
        "/console/newsletters/١٢",
        "/console/newsletters/99999999999999999999",
    ):
        assert (await client.get(path)).status == 404, path
    assert (await client.get("/console/members/a%00b")).status == 400
    assert (await client.get("/console/members?q=a%00")).status == 400
    unreadable = await client.post(
        "/console/suppressions", data=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}
    )
    assert unreadable.status == 400 and unreadable.content_type == "text/html"
    not_a_form = await client.post(
        "/console/sign-in", data="{}", headers={"Content-Type": "application/json"}
    )
    assert not_a_form.status == 400
    nul = await client.post(
        "/console/suppressions",
        data={"csrf": csrf, "address": "a@example.com", "list": "all", "reason": "manual", "note": "a\x00b"},
    )
    assert nul.status == 400
    digits = await client.post("/console/failed/redrive", data={"csrf": csrf, "id": "١"})
    assert digits.status == 400
    assert await pool.fetchval("SELECT count(*) FROM suppressions") == 0
    assert await pool.fetchval("SELECT count(*) FROM emails WHERE status = 'failed'") == 1


async def test_a_link_from_another_site_reaches_the_page_after_one_same_site_hop(
    client: Client, pool: asyncpg.Pool
) -> None:
    await sign_in(client, pool, ["admin"])
    cross = {"Sec-Fetch-Site": "cross-site"}
    # The browser withholds the SameSite=Strict cookie on a cross-site navigation.
    async with aiohttp.ClientSession() as browser_without_cookie:
        resp = await browser_without_cookie.get(
            client.make_url("/console/sign-in?next=/console/failed"), headers=cross, allow_redirects=False
        )
        page = await resp.text()
    hop = "/console/sign-in?next=%2Fconsole%2Ffailed&amp;retry=1"
    assert resp.status == 200 and f'content="0; url={hop}"' in page
    # The hop is same-site, so the cookie comes along and the session is found.
    resp = await client.get(hop.replace("&amp;", "&"), allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/console/failed"


async def test_a_database_that_is_away_is_a_503_page(client: Client, pool: asyncpg.Pool) -> None:
    await sign_in(client, pool, ["admin"])
    app = client.app
    assert app is not None
    await app[POOL].close()
    resp = await client.get("/console/members")
    assert resp.status == 503 and resp.content_type == "text/html"
    assert resp.headers["Retry-After"] == "5"
    assert "not answering" in await resp.text()


async def test_preview_names_every_template_error_at_once(client: Client, pool: asyncpg.Pool) -> None:
    csrf = await sign_in(client, pool, ["newsletters"])
    form = {"csrf": csrf, "subject": "Hi {{ nickname }}", "preheader": "", "body_format": "markdown"}
    form["body"] = "Dear {{ first_name"
    live = await client.post("/console/newsletters/preview", data=form)
    assert live.status == 422
    answer = await live.json()
    assert list(answer["errors"]) == list(answer["render_errors"]) == ["subject", "body"]
    assert "nickname" in answer["errors"]["subject"] and "template error" in answer["errors"]["body"]
    assert answer["html"] is None
    # Without JavaScript, "Refresh preview" marks both fields and the preview says why it is empty.
    page = await client.post("/console/newsletters/new", data={**form, "action": "preview"})
    text = await page.text()
    assert 'id="subject-error"' in text and 'id="body-error"' in text
    assert "<li>Subject: " in text and "<li>Body: template error" in text
    # A form that is wrong but renders still previews, and names what is wrong.
    live = await client.post("/console/newsletters/preview", data={**form, "subject": "", "body": "Hi"})
    answer = await live.json()
    assert live.status == 422 and list(answer["errors"]) == ["subject"] and answer["render_errors"] == {}
    assert "Hi" in answer["html"]


async def test_dev_mailbox_needs_an_admin_sign_in(
    settings: Settings, pool: asyncpg.Pool, redis: ArqRedis, tmp_path: Path
) -> None:
    """Captured mail holds live unsubscribe tokens: a browser is sent to the console (admin
    sign-in), a client needs an admin API key; the page has the console's styling and icon."""
    dev = settings.model_copy(update={"capture_mail": True, "data_dir": tmp_path})
    (tmp_path / "mail").mkdir()
    name = "1700000000000000000-000001.eml"
    (tmp_path / "mail" / name).write_bytes(
        b"From: news@example.org\r\nTo: ada@example.com\r\nSubject: News\r\n"
        b"List-Unsubscribe: <https://x.example/u/LIVE-TOKEN>\r\n\r\nHello\r\n"
    )
    _, admin_key = await auth.create_key(pool, "Operator", ["admin"])
    _, marketing_key = await auth.create_key(pool, "Marketing", ["newsletters"])
    async with TestClient(TestServer(create_app(dev))) as client:
        for path in ("/dev/mailbox", f"/dev/mailbox/{name}", f"/dev/mailbox/{name}?raw=1"):
            resp = await client.get(path, headers={"Accept": "application/json"}, allow_redirects=False)
            assert resp.status == 303, path
            assert "LIVE-TOKEN" not in await resp.text()
            page = await client.get(resp.headers["Location"])
            assert page.url.path == "/console/sign-in" and "LIVE-TOKEN" not in await page.text()
        assert (await client.get("/dev/mailbox", headers={"Authorization": "Bearer nope"})).status == 401
        marketing = {"Authorization": f"Bearer {marketing_key}"}
        assert (await client.get(f"/dev/mailbox/{name}", headers=marketing)).status == 403
        admin = {"Authorization": f"Bearer {admin_key}"}
        listing = await (await client.get("/dev/mailbox", headers=admin)).json()
        assert [m["subject"] for m in listing["items"]] == ["News"]
        raw = await client.get(f"/dev/mailbox/{name}", headers=admin)
        assert raw.content_type == "text/plain" and "LIVE-TOKEN" in await raw.text()
        missing = await client.get("/dev/mailbox/missing.eml", headers=admin)
        assert missing.status == 404 and missing.content_type == "application/problem+json"

        # In the console: a newsletters session does not see it, an admin does, with the source.
        csrf = await sign_in(client, pool, ["newsletters"], name="Marketing Max")
        assert (await client.get(f"/console/mailbox/{name}/source", allow_redirects=False)).status == 403
        await client.post("/console/sign-out", data={"csrf": csrf})
        await sign_in(client, pool, ["admin"])
        shown = await (await client.get(f"/dev/mailbox/{name}")).text()
        assert '<link rel="stylesheet" href="/console/static/console.css">' in shown
        assert '<link rel="icon" href="/console/static/favicon.svg"' in shown
        assert f'href="/console/mailbox/{name}/source"' in shown
        source = await client.get(f"/console/mailbox/{name}/source")
        assert source.content_type == "text/plain" and "LIVE-TOKEN" in await source.text()
        icon = await client.get("/console/static/favicon.svg")
        assert icon.status == 200 and icon.content_type == "image/svg+xml"


def test_capture_is_refused_in_production(settings: Settings, tmp_path: Path) -> None:
    production = settings.model_copy(update={"env": "production", "capture_mail": True, "data_dir": tmp_path})
    with pytest.raises(ConfigError, match=r"mail capture .* is refused when NOTIFIER_ENV is production"):
        create_app(production)
