"""Member import from a CSV file: create or update accounts by `external_id`, in bulk.

`import_csv` reads the file in chunks (memory stays flat in the file's size), checks each cell
with the API's own rules (`notifier.validation`: e-mail address, name, time zone, locale), and
copies the good rows into the staging table `import_rows` with PostgreSQL COPY; a bad cell
becomes an `import_errors` row (row number, field, reason) and never stops the other rows. Set-
based SQL then refuses what needs the whole file or the database (a repeated external_id, a new
member without e-mail or name), corrects the known members whose fields differ, registers the
new ones, and optionally opts them in to the newsletter with the consent wording and source
`import`. Every change is audited as the API audits it (actor `system:import` from the CLI,
the signed-in person from the console: `console:<address> (<role>) (import)` with their user
id), new accounts get their first digest window as `preferences.start_schedule` opens it, and a
corrected time zone moves the window as `preferences.follow_timezone` does.

The whole import is one transaction: a dry run rolls it back, and a second run of the same file
finds every row unchanged and writes nothing but its `imports` history row.

Columns map to fields by name (`external_id`, `email`, `name`, `timezone`, `locale`) or by an
explicit map (`Email Address=email`); `attributes.KEY` columns set account attributes (text
values, merged into the member's attributes as a PATCH does; keys and sizes by the API's rules,
notifier/attributes.py).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import asyncpg

from notifier import audit, lists, schedule
from notifier.consent import WORDING, WORDING_VERSION
from notifier.db import Q
from notifier.errors import Problem
from notifier.import_file import (
    DEFAULTS,
    STAGED_COLUMNS,
    CountingReader,
    ImportRefused,
    Row,
    RowChecker,
    chunks,
    column_plan,
    parse_maps,
)
from notifier.preferences import Preferences
from notifier.settings import Settings

__all__ = ["ImportRefused", "ImportResult", "OptIn", "cli_import", "import_csv", "parse_maps"]

CHUNK_ROWS = 5000
ERRORS_KEPT = 1000  # errors held in `ImportResult.errors`; a report file receives them all
MAX_WORDING = 2000
ERROR_COLUMNS = ("import_id", "row_no", "field", "reason")
REPORT_HEADER = ("row", "field", "reason")

ACTOR = audit.Actor("system", "import")  # the CLI's; the console's is the signed-in operator's
SHOWN_ERRORS = 50  # bad rows printed by the CLI without --errors FILE

Progress = Callable[[int, int], None]  # (bytes read, bytes in all)


@dataclass
class ImportResult:
    """What an import did (or, dry, would do); `errors` are the first ERRORS_KEPT (row, field,
    reason), in row order."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    opted_in: int = 0
    kept_out: int = 0  # asked to opt in, but the member had opted out before
    ignored_columns: list[str] = field(default_factory=list)
    errors: list[tuple[int, str, str]] = field(default_factory=list)
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.opted_in)

    def summary(self) -> str:
        """One line for people: the four counts, and whether anything changed."""
        verb = "would be" if self.dry_run else "were"
        line = (
            f"{self.created} created, {self.updated} updated, {self.unchanged} unchanged, "
            f"{self.failed} failed"
        )
        if self.opted_in or self.kept_out:
            line += f"; {self.opted_in} opted in"
            if self.kept_out:
                line += f", {self.kept_out} kept out (they had opted out before)"
        if not self.changed:
            return line + f" (nothing {'would change' if self.dry_run else 'changed'})"
        return line + f" ({'dry run: nothing was written' if self.dry_run else 'changes ' + verb + ' saved'})"


@dataclass(frozen=True)
class OptIn:
    """Opt the imported members in to a list (None: the newsletter, the default list), recording
    this wording as their consent."""

    wording: str
    list_key: str | None = None

    @property
    def version(self) -> str | None:
        return WORDING_VERSION if self.wording == WORDING else None


async def import_csv(
    conn: asyncpg.Connection,
    file: IO[bytes],
    *,
    source: str,
    actor: audit.Actor,
    maps: Mapping[str, str] | None = None,
    opt_in: OptIn | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    total_bytes: int = 0,
    report: IO[str] | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> ImportResult:
    """Import the CSV `file` (UTF-8, a header row first) as described in the module docstring.

    Runs in its own transaction on `conn` (rolled back with `dry_run`). Bad rows are reported in
    `ImportResult.errors` (and all of them as CSV to `report`) and counted as failed; the good
    rows are imported. Idempotent: the same
    file again creates and updates nothing. Raises ImportRefused (nothing written) when the file
    cannot be read as CSV or lacks an external_id column.
    """
    if opt_in is not None and (not opt_in.wording.strip() or len(opt_in.wording) > MAX_WORDING):
        raise ImportRefused(f"the consent wording must be 1 to {MAX_WORDING} characters")
    counting = CountingReader(file)
    text = io.TextIOWrapper(io.BufferedReader(counting), encoding="utf-8-sig", errors="strict", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        raise ImportRefused("the file is empty: the first row must name the columns") from None
    except UnicodeDecodeError:
        raise ImportRefused(
            "the file is not UTF-8 text (save it from the spreadsheet as CSV UTF-8)"
        ) from None
    except csv.Error as exc:
        raise ImportRefused(f"the header row is not CSV: {exc}") from None
    plan, ignored = column_plan(header, maps or {})
    result = ImportResult(ignored_columns=ignored, dry_run=dry_run)
    checker = RowChecker(plan, len(header))
    tx = conn.transaction()
    await tx.start()
    try:
        started = await conn.fetchrow(Q.import_start, actor.type, actor.name, source[:200])
        import_id: int = started["id"]
        staged = 0
        for chunk in chunks(reader, chunk_rows):
            staged += await _stage(conn, import_id, chunk, checker)
            if progress is not None:
                progress(counting.count, total_bytes)
        await _merge(conn, import_id, actor, opt_in, result, staged, checker.zones, started["started_at"])
        writer = csv.writer(report) if report is not None else None
        if writer is not None:
            writer.writerow(REPORT_HEADER)
        async for row in conn.cursor(Q.import_error_report, import_id):
            error = (row["row_no"], row["field"], row["reason"])
            if len(result.errors) < ERRORS_KEPT:
                result.errors.append(error)
            if writer is not None:
                writer.writerow(error)
        await conn.execute(
            Q.import_finish,
            import_id,
            result.created,
            result.updated,
            result.unchanged,
            result.failed,
            result.opted_in,
        )
    except BaseException:
        await tx.rollback()
        raise
    if dry_run:
        await tx.rollback()
    else:
        await tx.commit()
    return result


async def _stage(conn: asyncpg.Connection, import_id: int, chunk: Sequence[Row], checker: RowChecker) -> int:
    """Check one chunk of rows and COPY the good ones and the errors into the staging tables;
    returns how many rows were good."""
    good: list[tuple[Any, ...]] = []
    bad: list[tuple[Any, ...]] = []
    for row_no, cells in chunk:
        if isinstance(cells, str):
            bad.append((import_id, row_no, "row", cells))
            continue
        record, errors = checker.check(cells)
        if errors:
            bad.extend((import_id, row_no, e["field"], e["message"]) for e in errors)
        else:
            good.append((import_id, row_no, *record))
    if good:
        await conn.copy_records_to_table("import_rows", records=good, columns=STAGED_COLUMNS)
    if bad:
        await conn.copy_records_to_table("import_errors", records=bad, columns=ERROR_COLUMNS)
    return len(good)


async def _merge(
    conn: asyncpg.Connection,
    import_id: int,
    actor: audit.Actor,
    opt_in: OptIn | None,
    result: ImportResult,
    staged: int,
    zones: Iterable[str],
    now: datetime,
) -> None:
    """The set-based part: whole-file checks, corrections, registrations, windows, opt-ins.
    `staged` rows were copied; `zones` are their time zones, `now` the transaction's time."""
    refused: int = await conn.fetchval(Q.import_duplicates, import_id)
    refused += await conn.fetchval(Q.import_incomplete, import_id)
    updated = await conn.fetchrow(Q.import_update, import_id, actor.type, actor.name, actor.user_id)
    result.updated = updated["updated"]
    result.unchanged = updated["matched"] - updated["updated"]
    await _follow_timezones(conn, updated["moved"])
    if staged - refused - updated["matched"] > 0:  # else every row was known (a re-run): no scan
        result.created = await register(conn, import_id, actor, zones, now)
    if opt_in is not None:
        target = None
        if opt_in.list_key is not None:
            try:
                (target,) = await lists.resolve(conn, [opt_in.list_key], "list")
            except Problem as exc:
                raise ImportRefused((exc.errors or [{"message": exc.detail}])[0]["message"]) from None
        if target is None or target["is_default"]:
            opted = await conn.fetchrow(
                Q.import_opt_in,
                import_id,
                actor.type,
                actor.name,
                opt_in.wording,
                opt_in.version,
                actor.user_id,
            )
        else:
            opted = await conn.fetchrow(
                Q.import_list_opt_in,
                import_id,
                actor.type,
                actor.name,
                target["id"],
                opt_in.wording,
                None,
                target["key"],
                actor.user_id,
            )
        result.opted_in, result.kept_out = opted["opted_in"], opted["kept_out"]
    result.failed = await conn.fetchval(Q.import_failed_count, import_id)


async def register(
    conn: asyncpg.Connection, import_id: int, actor: audit.Actor, zones: Iterable[str], now: datetime
) -> int:
    """Register the members not yet known, each with its first digest window open as
    `preferences.start_schedule` opens it: from the transaction's time `now` to `schedule.next_due`
    of the default schedule in the member's time zone (computed once for each of `zones`, the
    staged rows' time zones). Call in the import's transaction, its rows staged under
    `import_id`. Returns how many were registered."""
    default = Preferences()
    zones = sorted(zones)
    due = [
        schedule.next_due(default.digest_frequency, default.digest_hour, default.digest_weekday, zone, now)
        for zone in zones
    ]
    created: int = await conn.fetchval(
        Q.import_insert,
        import_id,
        actor.type,
        actor.name,
        DEFAULTS["timezone"],
        DEFAULTS["locale"],
        default.digest_frequency,
        default.digest_hour,
        default.digest_weekday,
        zones,
        due,
        actor.user_id,
    )
    return created


async def _follow_timezones(conn: asyncpg.Connection, ids: Sequence[int], batch: int = 1000) -> None:
    """Move the open digest window of accounts whose time zone changed, as
    `preferences.follow_timezone` does for one correction."""
    now = datetime.now(UTC)
    for start in range(0, len(ids), batch):
        rows = await conn.fetch(Q.import_moved_windows, list(ids[start : start + batch]))
        moves: list[tuple[int, datetime]] = []
        for r in rows:
            end = schedule.reschedule(
                r["digest_frequency"],
                r["digest_hour"],
                r["digest_weekday"],
                r["timezone"],
                r["digest_window_start"],
                now,
            )
            if end is not None:
                moves.append((r["id"], end))
        if moves:
            await conn.execute(Q.import_move_windows, [m[0] for m in moves], [m[1] for m in moves])


def progress_bar(done: int, total: int, width: int = 30) -> str:
    """`[#####.....]  50% 1.2/2.4 MB`: how much of the file has been read."""
    filled = width if total <= 0 else min(width, done * width // total)
    percent = 100 if total <= 0 else min(100, done * 100 // total)
    return f"[{'#' * filled}{'.' * (width - filled)}] {percent:3d}% {done / 1e6:.1f}/{total / 1e6:.1f} MB"


async def cli_import(
    settings: Settings,
    path: Path,
    *,
    maps: Sequence[str] = (),
    opt_in_wording: str | None = None,
    opt_in_list: str | None = None,
    dry_run: bool = False,
    report_path: Path | None = None,
) -> int:
    """`notifier members import`: import the file with a progress bar on a terminal, print the
    counts and the bad rows (all of them to `report_path` as CSV when given, else the first ones
    on the screen). Exit codes: 0 every row imported, 1 some rows failed, 2 refused."""
    import sys

    from notifier.resources import open_pool

    tty = sys.stderr.isatty()

    def show(done: int, total: int) -> None:
        if tty:
            print("\r" + progress_bar(done, total), end="", file=sys.stderr, flush=True)

    try:
        parsed = parse_maps(maps)
        pool = await open_pool(settings)
        try:
            async with pool.acquire() as conn:
                with path.open("rb") as file, _report_file(report_path) as report:
                    result = await import_csv(
                        conn,
                        file,
                        source=path.name,
                        actor=ACTOR,
                        maps=parsed,
                        opt_in=OptIn(opt_in_wording, opt_in_list) if opt_in_wording is not None else None,
                        dry_run=dry_run,
                        progress=show,
                        total_bytes=os.fstat(file.fileno()).st_size,
                        report=report,
                    )
        finally:
            await pool.close()
    except (ImportRefused, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"\nnotifier: import refused, nothing was written: {exc}", file=sys.stderr)
        return 2
    if tty:
        print(file=sys.stderr)
    if result.ignored_columns:
        print(f"ignored columns (not mapped): {', '.join(result.ignored_columns)}")
    print(("dry run: " if dry_run else "") + result.summary())
    if result.errors and report_path is None:
        shown = result.errors[:SHOWN_ERRORS]
        for row_no, field_name, reason in shown:
            print(f"row {row_no}: {field_name}: {reason}")
        if result.failed > len(shown) or len(result.errors) > len(shown):
            print("… more: write them all with --errors FILE.csv")
    elif result.errors:
        print(f"bad rows written to {report_path}")
    return 1 if result.failed else 0


def _report_file(path: Path | None) -> contextlib.AbstractContextManager[IO[str] | None]:
    if path is None:
        return contextlib.nullcontext()
    return path.open("w", newline="", encoding="utf-8")
