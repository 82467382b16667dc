"""Test data through one small factory instead of copy-pasted inserts."""

from __future__ import annotations

import csv
import io
import itertools
from typing import Any

import asyncpg

_seq = itertools.count(1)


class Factory:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def _insert(self, table: str, row: dict[str, Any]) -> asyncpg.Record:
        """INSERT one row of `row`'s columns into `table` and return it."""
        columns = ", ".join(row)
        params = ", ".join(f"${i}" for i in range(1, len(row) + 1))
        record = await self.pool.fetchrow(
            f"INSERT INTO {table} ({columns}) VALUES ({params}) RETURNING *", *row.values()
        )
        assert record is not None
        return record

    async def account(self, **fields: Any) -> asyncpg.Record:
        """Insert an account; any column may be overridden."""
        n = next(_seq)
        row: dict[str, Any] = {
            "external_id": f"member-{n}",
            "email": f"member{n}@example.com",
            "name": f"Member {n}",
            "timezone": "UTC",
            "locale": "en",
        }
        row.update(fields)
        return await self._insert("accounts", row)

    async def message(self, account: asyncpg.Record, **fields: Any) -> asyncpg.Record:
        """Insert an inbox message for `account`."""
        n = next(_seq)
        row: dict[str, Any] = {
            "account_id": account["id"],
            "category": "news",
            "subject": f"Subject {n}",
            "body": f"Body {n}",
        }
        row.update(fields)
        return await self._insert("messages", row)

    async def email(self, account: asyncpg.Record | None = None, **fields: Any) -> asyncpg.Record:
        """Insert an outbox row (queued unless `status` is given) for `account` or any address."""
        n = next(_seq)
        row: dict[str, Any] = {
            "kind": "service",
            "queue": "notifier:service",
            "account_id": account["id"] if account else None,
            "to_address": account["email"] if account else f"someone{n}@example.com",
            "template": "service/welcome",
            "subject": f"E-mail {n}",
        }
        row.update(fields)
        return await self._insert("emails", row)

    async def event(self, kind: str, **fields: Any) -> asyncpg.Record:
        """Insert an event of `kind`; any column may be given."""
        return await self._insert("events", {"kind": kind, **fields})

    async def members(self, n: int, **fields: Any) -> None:
        """Insert `n` accounts in one statement (newsletter audiences of thousands); `fields` set
        the same value on each (e.g. `newsletter=True`)."""
        first = next(_seq)
        for _ in range(n - 1):
            next(_seq)
        columns = ", ".join(fields)
        values = ", ".join(f"${i}" for i in range(3, len(fields) + 3))
        await self.pool.execute(
            f"""INSERT INTO accounts (external_id, email, name, timezone, locale{", " + columns if fields else ""})
                SELECT 'member-' || i, 'member' || i || '@example.com', 'Member ' || i, 'UTC', 'en'
                       {", " + values if fields else ""}
                FROM generate_series($1::int, $2::int) AS i""",
            first,
            first + n - 1,
            *fields.values(),
        )

    async def console_user(self, role: str = "marketing", **fields: Any) -> asyncpg.Record:
        """Insert a console user with `role` (invited); any column may be overridden."""
        n = next(_seq)
        row: dict[str, Any] = {
            "email": f"{role}{n}@example.org",
            "name": f"{role.title()} Person {n}",
            "role": role,
            "invited_by": "system:tests",
            **fields,
        }
        return await self._insert("console_users", row)

    async def newsletter(self, **fields: Any) -> asyncpg.Record:
        """Insert a newsletter (a draft unless `status` says otherwise); any column may be overridden."""
        row: dict[str, Any] = {
            "subject": f"Newsletter {next(_seq)}",
            "body": "Hello {{ first_name }}",
            **fields,
        }
        return await self._insert("newsletters", row)

    async def newsletter_template(self, **fields: Any) -> asyncpg.Record:
        """Insert a reusable newsletter template; any column may be overridden."""
        n = next(_seq)
        row: dict[str, Any] = {
            "name": f"Template {n}",
            "subject": f"Subject {n}",
            "body": "Hello {{ first_name }}",
            "created_by": "system:tests",
            "updated_by": "system:tests",
            **fields,
        }
        return await self._insert("newsletter_templates", row)


def member_csv(
    rows: list[list[str]], header: tuple[str, ...] = ("external_id", "email", "name", "timezone")
) -> bytes:
    """A member import file: a header row and `rows`, as UTF-8 CSV bytes."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()
