"""PostgreSQL: the connection pool, named SQL queries and the migration runner."""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

log = logging.getLogger("notifier.db")

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS_DIR = ROOT / "migrations"
SQL_DIR = Path(__file__).resolve().parent / "sql"

# Any constant works; it only has to be the same in every process that migrates.
MIGRATION_LOCK_ID = 0x6E6F7469  # "noti"

Pool = asyncpg.Pool
Connection = asyncpg.Connection


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (RESET ALL, UNLISTEN, CLOSE ALL, advisory unlock).

    That query is one more round trip per pooled statement. asyncpg still rolls back a
    transaction left open; the code keeps no session state past a release (no session-level
    SET, LISTEN or advisory lock: use SET LOCAL and xact locks inside a transaction).
    """


async def create_pool(
    dsn: str, *, min_size: int = 2, max_size: int = 10, statement_cache_size: int = 100
) -> asyncpg.Pool:
    """A pool whose connections encode and decode json/jsonb as Python objects.
    `statement_cache_size=0` for PostgreSQL behind a transaction-pooling PgBouncer."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=60,
        statement_cache_size=statement_cache_size,
    )
    assert pool is not None
    return pool


_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Split a file of `-- name: x` blocks into {name: sql}; a repeated name is an error."""
    queries: dict[str, str] = {}
    parts = _NAME.split(text)
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} defined twice")
        queries[name] = body.strip()
    return queries


class Queries(Mapping[str, str]):
    """All named queries of `notifier/sql/*.sql`, parsed once. `Q.insert_message` or `Q["..."]`."""

    def __init__(self, directory: Path = SQL_DIR) -> None:
        self._queries: dict[str, str] = {}
        for path in sorted(directory.glob("*.sql")):
            for name, sql in parse_queries(path.read_text()).items():
                if name in self._queries:
                    raise ValueError(f"query {name!r} defined twice ({path.name})")
                self._queries[name] = sql

    def __getitem__(self, name: str) -> str:
        return self._queries[name]

    def __getattr__(self, name: str) -> str:
        try:
            return self._queries[name]
        except KeyError:
            raise AttributeError(name) from None

    def __iter__(self) -> Any:
        return iter(self._queries)

    def __len__(self) -> int:
        return len(self._queries)


Q = Queries()


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[tuple[int, str, Path]]:
    """(version, name, path) of every `NNNN_name.sql`, in order; duplicate versions are an error."""
    found: list[tuple[int, str, Path]] = []
    for path in sorted(directory.glob("*.sql")):
        match = re.fullmatch(r"(\d+)_(\w+)\.sql", path.name)
        if not match:
            raise ValueError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append((int(match[1]), match[2], path))
    versions = [v for v, _, _ in found]
    if len(versions) != len(set(versions)):
        raise ValueError("two migration files share a version number")
    return found


async def migrate(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply pending migrations in order, each in its own transaction that holds a
    transaction-level advisory lock and re-checks whether it is still pending.

    Safe to run from several processes at once: the second waits for the lock, then finds
    nothing left to do. No session state (no session lock), so it also runs through a
    transaction-pooling PgBouncer. Returns the versions this call applied.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
    applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    done: list[int] = []
    for version, name, path in migration_files(directory):
        if version in applied:
            continue
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
            if await conn.fetchval("SELECT 1 FROM schema_migrations WHERE version = $1", version):
                continue  # another process applied it while this one waited
            await conn.execute(path.read_text())
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
        log.info("applied migration %04d_%s", version, name)
        done.append(version)
    return done


def with_database(url: str, name: str) -> str:
    """`url` naming database `name` instead (a postgresql:// URL; query options such as a
    socket `host` are kept)."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@asynccontextmanager
async def scratch_database(admin_url: str, prefix: str, *, migrated: bool = True) -> AsyncIterator[str]:
    """A database of its own on the server of `admin_url` (`<prefix>_<random>`), migrated unless
    told otherwise, dropped on exit even if connections are left open. For tests, benchmarks and
    the chaos suite, which must never share or touch anyone else's database."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        dsn = with_database(admin_url, name)
        try:
            if migrated:
                await migrate_dsn(dsn)
            yield dsn
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def migrate_dsn(dsn: str) -> list[int]:
    """Connect, migrate, disconnect."""
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
