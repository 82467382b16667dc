"""Console users (docs/console.md): invitations, the magic-link journey, sessions with idle and
absolute ends, fresh sign-in for dangerous actions, sign-out everywhere, audit by person."""

from __future__ import annotations

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from arq import ArqRedis

from notifier import audit, service, staff
from notifier.api import auth
from notifier.app import create_app
from notifier.mail.render import Templates
from notifier.settings import ConfigError, Settings
from tests.conftest import BurstWorker, MailSink
from tests.console_people import (
    Client,
    ask_for_link,
    csrf_of,
    link_in,
    mails_to,
    session_cookie,
    signin_token_of,
    text_of,
    use_link,
)
from tests.factory import Factory


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Over plain http, so the test client sends the session cookie back."""
    return settings.model_copy(update={"public_url": "http://127.0.0.1"})


async def test_admin_invites_by_email_and_the_invited_user_signs_in_by_link_once(
    client: Client,
    pool: asyncpg.Pool,
    factory: Factory,
    settings: Settings,
    run_worker: BurstWorker,
    smtp: MailSink,
) -> None:
    admin = await factory.console_user("admin", name="Ada Admin")
    headers = await session_cookie(pool, settings, admin)
    page = await client.get("/console/users", headers=headers)
    assert page.status == 200
    invited = await client.post(
        "/console/users",
        data={
            "csrf": csrf_of(await page.text()),
            "email": " Sam@Example.org ",
            "name": "Sam Support",
            "role": "support",
        },
        headers=headers,
        allow_redirects=False,
    )
    assert invited.status == 303
    row = await pool.fetchrow("SELECT * FROM console_users WHERE email = 'sam@example.org'")
    assert (row["role"], row["status"], row["invited_by"]) == (
        "support",
        "invited",
        f"console:{admin['email']} (admin)",
    )
    assert await run_worker() >= 1
    (invitation,) = mails_to(smtp, "sam@example.org")
    assert "invited to the notifier console" in invitation["Subject"]
    assert "http://127.0.0.1/console/sign-in" in text_of(invitation)

    # A second invitation of the same address is a 422 on the form, nothing added.
    again = await client.post(
        "/console/users",
        data={"csrf": csrf_of(await page.text()), "email": "sam@example.org", "name": "Sam", "role": "admin"},
        headers=headers,
    )
    assert again.status == 422 and "already a console user" in await again.text()

    # Sam asks for a link, takes it from the captured mail and signs in in the same browser.
    asked = await ask_for_link(client, "SAM@example.org", "/console/members")
    assert asked.status == 200 and "a sign-in link is on its way" in await asked.text()
    assert (
        "notifier_console_link=" in asked.headers["Set-Cookie"]
        and "SameSite=Lax" in asked.headers["Set-Cookie"]
    )
    stored = await pool.fetchrow("SELECT * FROM console_sign_in_links")
    await run_worker()
    link_mail = mails_to(smtp, "sam@example.org")[-1]
    path = link_in(link_mail)
    token = path.split("token=")[1]
    assert token.encode() not in bytes(stored["token_hash"])  # only a hash is kept
    signed_in = await use_link(client, path)
    assert signed_in.status == 303
    home = await client.get("/console/")
    assert "Sam Support" in await home.text()
    row = await pool.fetchrow(
        "SELECT status, last_sign_in_at FROM console_users WHERE email = 'sam@example.org'"
    )
    assert row["status"] == "active" and row["last_sign_in_at"] is not None

    # The link works once.
    second = await use_link(client, path)
    assert second.status == 401 and "not valid" in await second.text()


async def test_a_link_is_bound_to_the_browser_that_asked_and_unknown_addresses_get_the_same_answer(
    client: Client,
    pool: asyncpg.Pool,
    factory: Factory,
    settings: Settings,
    run_worker: BurstWorker,
    smtp: MailSink,
) -> None:
    await factory.console_user("marketing", email="mia@example.org")
    await factory.console_user("marketing", email="gone@example.org", status="disabled")
    known = await ask_for_link(client, "mia@example.org")
    unknown = await ask_for_link(client, "nobody@example.org")
    disabled = await ask_for_link(client, "gone@example.org")
    texts = {await r.text() for r in (known, unknown, disabled)}
    assert {r.status for r in (known, unknown, disabled)} == {200}
    # The pages differ only by the form tokens: strip them and they are the same.
    assert len({t.split("<main", 1)[1] for t in texts}) == 1
    await run_worker()
    assert mails_to(smtp, "nobody@example.org") == [] and mails_to(smtp, "gone@example.org") == []
    path = link_in(mails_to(smtp, "mia@example.org")[-1])
    async with TestClient(TestServer(create_app(settings))) as other_browser:
        refused = await use_link(other_browser, path)
        assert refused.status == 401
    # The refusal in another browser did not spend the link: the browser that asked still can.
    assert (await use_link(client, path)).status == 303


async def test_links_are_throttled_per_address_and_per_client(
    client: Client, pool: asyncpg.Pool, factory: Factory, settings: Settings
) -> None:
    await factory.console_user("marketing", email="mia@example.org")
    for _ in range(settings.console_link_per_address):
        assert (await ask_for_link(client, "mia@example.org")).status == 200
    throttled = await ask_for_link(client, "mia@example.org")
    assert throttled.status == 429 and int(throttled.headers["Retry-After"]) > 0
    assert (
        await pool.fetchval("SELECT count(*) FROM console_sign_in_links") == settings.console_link_per_address
    )
    # Another address from the same client goes on until the client's own limit.
    for n in range(settings.console_link_per_client - settings.console_link_per_address):
        assert (await ask_for_link(client, f"x{n}@example.org")).status == 200
    assert (await ask_for_link(client, "fresh@example.org")).status == 429


async def test_expired_link_is_refused(
    client: Client, pool: asyncpg.Pool, factory: Factory, run_worker: BurstWorker, smtp: MailSink
) -> None:
    await factory.console_user("marketing", email="mia@example.org")
    await ask_for_link(client, "mia@example.org")
    await run_worker()
    await pool.execute("UPDATE console_sign_in_links SET expires_at = now() - interval '1 second'")
    resp = await use_link(client, link_in(mails_to(smtp, "mia@example.org")[-1]))
    assert resp.status == 401
    assert await pool.fetchval("SELECT count(*) FROM console_sessions") == 0


async def test_sessions_end_when_idle_and_at_their_absolute_end(
    client: Client, pool: asyncpg.Pool, factory: Factory, settings: Settings
) -> None:
    user = await factory.console_user("support")
    headers = await session_cookie(pool, settings, user)
    assert (await client.get("/console/members", headers=headers)).status == 200
    await pool.execute(
        "UPDATE console_sessions SET last_seen_at = now() - make_interval(mins => $1 + 1)",
        settings.console_idle_minutes,
    )
    idle = await client.get("/console/members", headers=headers, allow_redirects=False)
    assert idle.status == 303 and idle.headers["Location"].startswith("/console/sign-in")

    headers = await session_cookie(pool, settings, user)
    await pool.execute("UPDATE console_sessions SET expires_at = now() - interval '1 second'")
    ended = await client.get("/console/members", headers=headers, allow_redirects=False)
    assert ended.status == 303


async def test_sessions_page_and_sign_out_everywhere(
    client: Client, pool: asyncpg.Pool, factory: Factory, settings: Settings
) -> None:
    user = await factory.console_user("marketing", name="Mia Marketing")
    other = await factory.console_user("marketing")
    first = await session_cookie(pool, settings, user)
    await session_cookie(pool, settings, user)
    theirs = await session_cookie(pool, settings, other)
    page = await client.get("/console/sessions", headers=first)
    text = await page.text()
    assert page.status == 200 and "Mia Marketing" in text and text.count("<tr>") == 3  # header + 2
    out = await client.post(
        "/console/sessions/sign-out-everywhere",
        data={"csrf": csrf_of(text)},
        headers=first,
        allow_redirects=False,
    )
    assert out.status == 303
    assert await pool.fetchval("SELECT count(*) FROM console_sessions WHERE user_id = $1", user["id"]) == 0
    assert (await client.get("/console/newsletters", headers=theirs)).status == 200


async def test_disabling_or_changing_a_role_ends_the_users_sessions_and_is_audited(
    client: Client, pool: asyncpg.Pool, factory: Factory, settings: Settings
) -> None:
    admin = await factory.console_user("admin")
    target = await factory.console_user("support")
    theirs = await session_cookie(pool, settings, target)
    headers = await session_cookie(pool, settings, admin)
    csrf = csrf_of(await (await client.get("/console/users", headers=headers)).text())
    changed = await client.post(
        f"/console/users/{target['id']}",
        data={"csrf": csrf, "role": "operator"},
        headers=headers,
        allow_redirects=False,
    )
    assert changed.status == 303
    assert (await client.get("/console/members", headers=theirs, allow_redirects=False)).status == 303
    disabled = await client.post(
        f"/console/users/{target['id']}",
        data={"csrf": csrf, "status": "disabled"},
        headers=headers,
        allow_redirects=False,
    )
    assert disabled.status == 303
    rows = await pool.fetch("SELECT actor_type, actor, action, changes FROM audit_log ORDER BY id")
    assert [(r["actor"], r["action"]) for r in rows] == [
        (f"{admin['email']} (admin)", "console_user.changed"),
        (f"{admin['email']} (admin)", "console_user.changed"),
    ]
    assert rows[0]["changes"]["role"] == {"before": "support", "after": "operator"}
    assert rows[1]["changes"]["status"] == {"before": "active", "after": "disabled"} or rows[1]["changes"][
        "status"
    ] == {"before": "invited", "after": "disabled"}
    # An admin cannot lock themselves out.
    self_change = await client.post(
        f"/console/users/{admin['id']}", data={"csrf": csrf, "status": "disabled"}, headers=headers
    )
    assert self_change.status == 409


async def test_erasing_needs_a_fresh_sign_in_and_the_members_audit_names_the_person(
    client: Client, pool: asyncpg.Pool, factory: Factory, settings: Settings
) -> None:
    support = await factory.console_user("support", email="sam@example.org", name="Sam Support")
    headers = await session_cookie(pool, settings, support)
    member = await factory.account()
    exported = await client.get(f"/console/members/{member['external_id']}/export", headers=headers)
    assert exported.status == 200
    profile = await (await client.get(f"/console/members/{member['external_id']}", headers=headers)).text()
    assert "Sam Support (sam@example.org (support))" in profile
    row = await pool.fetchrow("SELECT * FROM audit_log WHERE action = 'account.exported'")
    assert (row["actor_type"], row["actor"], row["console_user_id"]) == (
        "console",
        "sam@example.org (support)",
        support["id"],
    )

    await pool.execute(
        "UPDATE console_sessions SET signed_in_at = now() - make_interval(mins => $1 + 1)",
        settings.console_fresh_minutes,
    )
    form = {"csrf": csrf_of(profile), "confirm": member["external_id"], "reason": "request"}
    stale = await client.post(f"/console/members/{member['external_id']}/erase", data=form, headers=headers)
    assert stale.status == 403 and "Sign in again" in await stale.text()
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 1

    fresh = await session_cookie(pool, settings, support)
    form["csrf"] = csrf_of(await (await client.get("/console/", headers=fresh)).text())
    erased = await client.post(
        f"/console/members/{member['external_id']}/erase", data=form, headers=fresh, allow_redirects=False
    )
    assert erased.status == 303
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 0
    assert await pool.fetchval("SELECT actor FROM erasures") == "sam@example.org (support)"


async def test_key_sign_in_only_when_the_development_setting_allows_it(
    client: Client, pool: asyncpg.Pool, settings: Settings
) -> None:
    _, key = await auth.create_key(pool, "Operator", ["admin"])
    page = await client.get("/console/sign-in")
    assert 'name="key"' not in await page.text()
    resp = await client.post(
        "/console/sign-in", data={"key": key, "signin_token": signin_token_of(await page.text())}
    )
    assert resp.status == 401 and "turned off" in await resp.text()
    assert await pool.fetchval("SELECT count(*) FROM console_sessions") == 0
    with pytest.raises(ConfigError, match="CONSOLE_KEY_SIGN_IN"):
        create_app(settings.model_copy(update={"env": "production", "console_key_sign_in": True}))


async def test_failed_sign_ins_by_link_are_throttled(
    client: Client, pool: asyncpg.Pool, settings: Settings, redis: ArqRedis
) -> None:
    for _ in range(settings.console_sign_in_attempts):
        assert (await use_link(client, "/console/sign-in/link?token=forged")).status == 401
    assert (await use_link(client, "/console/sign-in/link?token=forged")).status == 429


def test_producers_cannot_send_the_consoles_own_templates(settings: Settings) -> None:
    names = service.template_names(Templates())
    assert "welcome" in names and not any(n.startswith("console_") for n in names)


async def test_cli_style_add_refuses_bad_fields(pool: asyncpg.Pool) -> None:
    actor = audit.Actor("system", "tests")
    async with pool.acquire() as conn:
        for email, name, role, field in (
            ("not-an-address", "X", "admin", "email"),
            ("a@example.org", "", "admin", "name"),
            ("a@example.org", "A", "root", "role"),
        ):
            with pytest.raises(staff.UserProblem) as exc:
                async with conn.transaction():
                    await staff.add(conn, email, name, role, actor)
            assert exc.value.field == field
    assert await pool.fetchval("SELECT count(*) FROM console_users") == 0
