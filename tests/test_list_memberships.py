"""`lists.set_memberships`: every list of a change in one statement, whatever the number of lists:
memberships, consent rows (wording on an opt-in the member was shown), cancelled queued e-mails of
a list left, one audit row; a second identical change writes nothing."""

from __future__ import annotations

import asyncpg

from notifier import lists
from notifier.audit import MEMBER
from tests.factory import Factory


async def test_joining_and_leaving_several_lists_is_one_statement(
    pool: asyncpg.Pool, factory: Factory
) -> None:
    made = {
        key: await lists.create(pool, lists.ListIn(key=key, name=key.title(), description=f"{key} news."))
        for key in ("alpha", "beta", "gamma")
    }
    ann = await factory.account()
    await pool.execute(
        "INSERT INTO list_members (list_id, account_id, subscribed) VALUES ($1, $2, true)",
        made["gamma"]["id"],
        ann["id"],
    )
    queued = await factory.email(
        ann, kind="newsletter", status="queued", context={"list_id": made["gamma"]["id"]}
    )
    by_key = {r["key"]: r for r in await pool.fetch("SELECT * FROM lists")}
    wanted = {"beta": True, "gamma": False, "alpha": True}
    async with pool.acquire() as conn, conn.transaction():
        statements: list[str] = []
        conn.add_query_logger(lambda record: statements.append(record.query))
        changed = await lists.set_memberships(
            conn, ann["id"], wanted, by_key, MEMBER, "api", with_wording=True, locale="de"
        )
    assert list(changed) == ["beta", "gamma", "alpha"]
    assert changed["gamma"] == {"before": True, "after": False} and changed["alpha"]["after"] is True
    # One statement for the memberships, their consents and cancellations; one for the audit row
    # (asyncpg's own type introspection and the COMMIT aside).
    ours = [q for q in statements if any(t in q for t in ("list_members", "consents", "emails", "audit_log"))]
    assert len(ours) == 2, ours
    consents = await pool.fetch(
        """SELECT l.key, c.granted, c.source, c.wording, c.wording_version
           FROM consents c JOIN lists l ON l.id = c.list_id ORDER BY c.id"""
    )
    assert [(r["key"], r["granted"], r["source"]) for r in consents] == [
        ("beta", True, "api"),
        ("gamma", False, "api"),
        ("alpha", True, "api"),
    ]
    assert consents[0]["wording"] == lists.wording(by_key["beta"], "de")
    assert consents[0]["wording_version"] == lists.wording_version(by_key["beta"])
    assert consents[1]["wording"] is None and consents[1]["wording_version"] is None
    assert await pool.fetchval("SELECT status FROM emails WHERE id = $1", queued["id"]) == "cancelled"
    audit_row = await pool.fetchrow("SELECT action, changes FROM audit_log WHERE account_id = $1", ann["id"])
    assert audit_row["action"] == "lists.update" and audit_row["changes"]["source"] == "api"

    async with pool.acquire() as conn, conn.transaction():
        again = await lists.set_memberships(conn, ann["id"], wanted, by_key, MEMBER, "api", with_wording=True)
    assert again == {}
    assert await pool.fetchval("SELECT count(*) FROM consents") == 3
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == 1
