"""A newsletter's audience: members of any of its lists who match its segment, minus the
suppressed, each once. Counted before sending (`count`) and frozen into outbox rows when sending
starts (`freeze`), from the one query `audience_members` (notifier/sql/lists.sql).

The segment's compiled condition (notifier/segments.py, values and keys as `$n` parameters) takes
the place of `TRUE /*segment*/` in that query; the fan-out puts the query in place of its stub.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from notifier import lists, queues, segments
from notifier.db import Q
from notifier.errors import Problem
from notifier.newsletter_local_time import DueInstants

_SEGMENT_MARK = "TRUE /*segment*/"
_STUB = re.compile(r"/\*audience\*/.*?/\*end\*/", re.DOTALL)
_COUNT_PARAMS = 1  # audience_members: $1 lists
_FAN_OUT_PARAMS = 6  # fan_out_newsletter adds $2 the newsletter, $3 the queue, $4-$6 local times


def _members_sql(rule: Any, first_param: int, extra: str = "") -> tuple[str, list[Any]]:
    """`audience_members` with the compiled rule (parameters from `$first_param`) and an
    optional further condition of the caller's own text in place of `TRUE /*segment*/`."""
    compiled = segments.EVERYONE if rule is None else segments.compile_rule(rule, first_param)
    sql = Q.audience_members
    assert _SEGMENT_MARK in sql
    return sql.replace(_SEGMENT_MARK, f"{extra}({compiled.sql})"), compiled.params


async def count(conn: asyncpg.Connection | asyncpg.Pool, list_ids: Sequence[int], rule: Any) -> int:
    """How many members the lists and segment reach now. Raises segments.InvalidSegment."""
    sql, params = _members_sql(rule, _COUNT_PARAMS + 1)
    total: int = await conn.fetchval(f"SELECT count(*) FROM ({sql}) m", list(list_ids), *params)
    return total


async def count_of(conn: asyncpg.Connection | asyncpg.Pool, row: Mapping[str, Any]) -> int:
    """How many members the newsletter `row` (its lists and segment, see `targeting`) reaches now."""
    list_ids, rule = await targeting(conn, row)
    return await count(conn, list_ids, rule)


async def reachable(
    conn: asyncpg.Connection | asyncpg.Pool,
    row: Mapping[str, Any],
    addresses: Sequence[str],
) -> set[str]:
    """Of `addresses` (trimmed, lower-cased), those of members the newsletter `row` would reach
    now (its lists, their consent, its segment, not suppressed): who may get its test-sends."""
    list_ids, rule = await targeting(conn, row)
    sql, params = _members_sql(rule, _COUNT_PARAMS + 2, "lower(a.email) = ANY($2::text[]) AND ")
    rows = await conn.fetch(
        f"SELECT DISTINCT lower(m.email) AS address FROM ({sql}) m", list_ids, list(addresses), *params
    )
    return {r["address"] for r in rows}


async def freeze(
    conn: asyncpg.Connection,
    newsletter_id: int,
    list_ids: Sequence[int],
    rule: Any,
    due: DueInstants,
) -> None:
    """Insert one bulk e-mail per member of the audience (in the caller's transaction), queued
    now or waiting for its member's local time (`due`); members already holding a row of this
    newsletter are skipped."""
    sql, params = _members_sql(rule, _FAN_OUT_PARAMS + 1)
    statement = _STUB.sub(lambda _: sql, Q.fan_out_newsletter, count=1)
    await conn.execute(
        statement,
        list(list_ids),
        newsletter_id,
        queues.BULK,
        due.zones,
        due.instants,
        due.otherwise,
        *params,
    )


async def targeting(conn: asyncpg.Connection | asyncpg.Pool, row: Mapping[str, Any]) -> tuple[list[int], Any]:
    """A newsletter's lists (none named: the default list) and its segment rule (inline, or the
    saved segment's rule as it is now; None: everyone on the lists)."""
    if row["lists"]:
        list_ids = list(await conn.fetchval(Q.live_list_ids, list(row["lists"])))
    else:
        list_ids = [await conn.fetchval(Q.default_list_id)]
    rule = row["segment"]
    if row["segment_key"] is not None:
        rule = await conn.fetchval(Q.segment_rule, row["segment_key"])
    return list_ids, rule


async def check_targeting(
    conn: asyncpg.Connection | asyncpg.Pool, list_keys: Sequence[str], rule: Any, segment_key: str | None
) -> tuple[list[int], Any]:
    """The audience's list ids (none named: the default list) and rule (inline, or the saved
    segment's as it is now), as `targeting` gives them, each read once; or a 422 Problem naming
    every fault: an unknown or archived list (`lists.N`), an invalid rule (`segment...`), an
    unknown saved segment (`segment_key`), or both a rule and a saved segment."""
    errors: list[Mapping[str, Any]] = []
    list_ids: list[int] = []
    try:
        if list_keys:
            list_ids = [r["id"] for r in await lists.resolve(conn, list_keys)]
        else:
            list_ids = [await conn.fetchval(Q.default_list_id)]
    except Problem as exc:
        errors.extend(exc.errors or [])
    if rule is not None and segment_key is not None:
        errors.append({"field": "segment", "message": "give either segment or segment_key, not both"})
    elif rule is not None:
        try:
            segments.check(rule)
        except segments.InvalidSegment as exc:
            errors.extend(exc.errors or [])
    elif segment_key is not None:
        rule = await conn.fetchval(Q.segment_rule, segment_key)
        if rule is None:
            errors.append({"field": "segment_key", "message": "no saved segment with that key"})
    if errors:
        raise Problem(422, "the audience is not valid", errors=errors)
    return list_ids, rule


async def count_for(
    conn: asyncpg.Connection | asyncpg.Pool,
    list_keys: Sequence[str],
    rule: Any,
    segment_key: str | None,
) -> int:
    """How many members lists `list_keys` (none: the default list) and the segment (inline rule
    or saved key) reach now. Raises Problem 422 as `check_targeting`."""
    list_ids, rule = await check_targeting(conn, list_keys, rule, segment_key)
    return await count(conn, list_ids, rule)
