"""The `notifier` command: the Procfile's processes, `dev`, and operators' tools."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Any

from notifier import queues
from notifier.settings import ConfigError, Settings
from notifier.startup_checks import check_production

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("notifier")

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int | None] | int | None]


def _setup_logging(settings: Settings) -> None:
    from notifier.access_log import LOG_FORMAT

    logging.basicConfig(
        level=settings.log_level.upper(),
        format=LOG_FORMAT,
        stream=sys.stderr,
    )
    logging.getLogger("aiosmtpd").setLevel(logging.WARNING)
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def settings_for(args: argparse.Namespace) -> Settings:
    """The command's settings: the environment, `.env`, and, with no service URL given, the
    servers of a running `notifier dev` (notifier.devenv)."""
    from notifier.devenv import cli_settings

    settings = cli_settings()
    _setup_logging(settings)
    return settings


# --- web, worker, migrate --------------------------------------------------------------------


def cmd_web(args: argparse.Namespace) -> int:
    from notifier.app import create_app

    settings = settings_for(args)
    settings.require_services()
    port = args.port or settings.port
    if args.host:
        settings.host = args.host
    if args.processes < 1:
        raise ConfigError("--processes must be at least 1")
    # Built before any fork, so every process runs the same code and shares its memory
    # (copy-on-write) and a configuration error is reported once.
    app = create_app(settings)
    check_production(settings)  # after create_app's own refusals, before anything listens
    # Everything imported and built so far lives as long as the process: keep it out of the
    # cyclic garbage collector's full passes, which otherwise rescan it under load (a batch
    # intake request spent a third of its CPU there), and out of forked children's written pages.
    gc.freeze()
    if args.processes == 1:
        _serve_web(app, settings, port, args.loop, reuse_port=None)
        return 0
    return serve_forked(args.processes, lambda: _serve_web(app, settings, port, args.loop, reuse_port=True))


def _serve_web(
    app: web.Application, settings: Settings, port: int, loop_name: str, *, reuse_port: bool | None
) -> None:
    """Serve `app` in this process until SIGTERM / SIGINT."""
    from aiohttp import web

    from notifier.app import RedactingAccessLogger

    web.run_app(
        app,
        host=settings.host,
        port=port,
        reuse_port=reuse_port,
        loop=new_event_loop(loop_name),
        access_log_class=RedactingAccessLogger,
        print=lambda _: log.info("web listening on http://%s:%s (%s loop)", settings.host, port, loop_name),
    )


def new_event_loop(name: str) -> asyncio.AbstractEventLoop:
    """A new event loop: `uvloop` (when installed) or the standard `asyncio` one."""
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:  # not built for this platform: the standard loop serves the same app
            log.warning("uvloop is not installed; using the asyncio event loop")
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def serve_forked(processes: int, serve: Callable[[], None]) -> int:
    """Run `serve()` (a server listening with SO_REUSEPORT) in `processes` forked children: the
    kernel spreads the port's connections among them. Returns the exit code for the parent.

    The parent only supervises: SIGTERM / SIGINT are passed on to every child; when one child
    exits, the others are stopped too and the parent exits with that child's code, so that the
    platform's supervisor restarts the whole set.
    """
    children: list[int] = []
    for _ in range(processes):
        pid = os.fork()
        if pid == 0:  # the child
            code = 0
            try:
                serve()
            except ConfigError as exc:
                print(f"notifier: error: {exc}", file=sys.stderr)
                code = 2
            except BaseException:
                log.exception("web process failed")
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        children.append(pid)

    def stop(signum: int, frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    pid, status = os.wait()
    children.remove(pid)
    code = os.waitstatus_to_exitcode(status)
    stop(signal.SIGTERM, None)
    for child in children:
        os.waitpid(child, 0)
    return code if code >= 0 else 128 - code


async def cmd_worker(args: argparse.Namespace) -> int:
    from workers import run_workers

    settings = settings_for(args)
    settings.require_secret()
    check_production(settings)
    settings.require_services()
    await run_workers(settings, args.queues, burst=args.burst)
    return 0


async def cmd_inbound(args: argparse.Namespace) -> int:
    from notifier import inbound

    settings = settings_for(args)
    settings.require_services()
    settings.require_secret()
    if args.port is not None:
        settings.inbound_smtp_port = args.port
    if not settings.bounce_domain and not settings.unsubscribe_mailto:
        raise ConfigError(
            "notifier inbound has nothing to accept: set NOTIFIER_BOUNCE_DOMAIN and/or NOTIFIER_UNSUBSCRIBE_MAILTO"
        )
    await inbound.run(settings)
    return 0


async def cmd_migrate(args: argparse.Namespace) -> int:
    from notifier import lists
    from notifier.db import migrate
    from notifier.inbox import maintain_partitions
    from notifier.resources import open_pool

    settings = settings_for(args)
    settings.require_services()
    pool = await open_pool(settings)
    try:
        async with pool.acquire() as conn:
            applied = await migrate(conn)
            await lists.follow_setting(conn, settings.newsletter_double_opt_in)
        partitions = await maintain_partitions(pool)
    finally:
        await pool.close()
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(map(str, applied))}" if applied else ""))
    if partitions:
        print(f"inbox partitions created or sealed: {', '.join(partitions)}")
    return 0


def cmd_inbox_secret(args: argparse.Namespace) -> int:
    """Print the secret an organisation's backend mints member tokens with (docs/inbox.md)."""
    from notifier.member import tokens

    settings = settings_for(args)
    settings.require_secret()
    print(tokens.inbox_secret(settings.secret))
    return 0


async def cmd_dev(args: argparse.Namespace) -> int:
    from notifier.dev import run_dev

    return await run_dev(port=args.port, selftest=not args.no_selftest)


async def cmd_api_key(args: argparse.Namespace) -> int:
    from notifier.api import auth
    from notifier.resources import open_pool

    settings = settings_for(args)
    settings.require_services()
    pool = await open_pool(settings)
    try:
        if args.action == "create":
            try:
                key_id, key = await auth.create_key(pool, args.name, args.scope)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            print(f"created API key {key_id} ({args.name}; scopes: {', '.join(sorted(set(args.scope)))})")
            print("store it now, it is not shown again:")
            print(key)
        elif args.action == "list":
            for row in await auth.list_keys(pool):
                state = f"revoked {row['revoked_at']:%Y-%m-%d}" if row["revoked_at"] else "active"
                used = f"{row['last_used_at']:%Y-%m-%d %H:%M}" if row["last_used_at"] else "never"
                print(
                    f"{row['id']:>4}  {row['prefix']}…  {row['name']:<24} {','.join(row['scopes']):<32} "
                    f"last used {used:<16} {state}"
                )
        elif args.action == "revoke":
            if not await auth.revoke_key(pool, args.id):
                raise ConfigError(f"no active API key with id {args.id}")
            print(f"revoked API key {args.id}")
    finally:
        await pool.close()
    return 0


async def cmd_console_user(args: argparse.Namespace) -> int:
    from notifier import audit, staff
    from notifier.resources import open_pool

    settings = settings_for(args)
    settings.require_services()
    actor = audit.Actor("system", "notifier console-user")
    pool = await open_pool(settings)
    try:
        async with pool.acquire() as conn, conn.transaction():
            if args.action == "add":
                try:
                    row = await staff.add(conn, args.email, args.name, args.role, actor)
                except staff.UserProblem as exc:
                    raise ConfigError(f"{exc.field}: {exc.message}") from None
                print(f"added console user {row['email']} ({row['role']}, invited)")
                print(
                    f"they sign in at {settings.public_url}/console/sign-in with that address (a link is e-mailed)"
                )
            elif args.action == "list":
                for row in await staff.all_users(conn):
                    last = f"{row['last_sign_in_at']:%Y-%m-%d %H:%M}" if row["last_sign_in_at"] else "never"
                    print(
                        f"{row['email']:<40} {row['name']:<24} {row['role']:<10} {row['status']:<9} last sign-in {last}"
                    )
            else:
                user = await staff.by_email(conn, args.email)
                changed = None
                if user is not None:
                    status = "disabled" if args.action == "disable" else "active"
                    changed = await staff.change(conn, user["id"], actor, status=status)
                if changed is None:
                    raise ConfigError(f"no console user {args.email}")
                print(f"{changed['email']} is {changed['status']}")
    finally:
        await pool.close()
    return 0


async def cmd_digests(args: argparse.Namespace) -> int:
    from notifier.digest import cli_preview, cli_run

    settings = settings_for(args)
    settings.require_secret()
    if args.action == "run":
        return await cli_run(settings, args.at, dry_run=args.dry_run, force=args.force)
    return await cli_preview(settings, args.external_id, html=args.html, at=args.at)


def _instant(value: str) -> datetime:
    """An ISO 8601 time (UTC when it has no offset) within the bounds every date input has."""
    from notifier.validation import parse_instant

    try:
        return parse_instant(value, naive="utc")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value[:40]!r} {exc}") from None


async def cmd_outbox(args: argparse.Namespace) -> int:
    from notifier.mail import outbox
    from notifier.resources import opened

    settings = settings_for(args)
    settings.require_services()
    if not args.ids and args.since is None:
        raise ConfigError("give the ids of failed e-mails, or --since TIME")
    async with opened(settings) as resources:
        ids = await outbox.retry_failed(resources.pool, resources.redis, ids=args.ids, since=args.since)
    print(f"re-queued {len(ids)} failed e-mail(s)" + (f": {', '.join(map(str, ids))}" if ids else ""))
    return 0


async def cmd_newsletter(args: argparse.Namespace) -> int:
    from notifier.newsletter import cli_send
    from notifier.newsletter_local_time import cli_run_due

    settings = settings_for(args)
    settings.require_secret()
    settings.require_services()
    if args.action == "run-due":
        return await cli_run_due(settings, args.at, dry_run=args.dry_run, force=args.force)
    return await cli_send(settings, args.id, wait=not args.no_wait)


async def cmd_members(args: argparse.Namespace) -> int:
    from pathlib import Path

    from notifier.member_import import cli_import

    settings = settings_for(args)
    settings.require_services()
    if args.opt_in and not args.consent_wording:
        raise ConfigError("--opt-in needs --consent-wording TEXT: the words the members agreed to")
    if (args.consent_wording or args.list) and not args.opt_in:
        raise ConfigError("--consent-wording and --list go with --opt-in")
    return await cli_import(
        settings,
        Path(args.file),
        maps=args.map,
        opt_in_wording=args.consent_wording if args.opt_in else None,
        opt_in_list=args.list,
        dry_run=args.dry_run,
        report_path=Path(args.errors) if args.errors else None,
    )


# --- the parser ------------------------------------------------------------------------------


def _queue_list(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in queues.ALL]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"queues are {', '.join(queues.ALL)}; got {value!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="notifier",
        description="Inboxes, digests, service mail and newsletters. Configure with NOTIFIER_* variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("web", help="run the HTTP API and pages", description="Run the HTTP API and pages.")
    p.add_argument("--port", type=int, help="port (default: NOTIFIER_PORT, else $PORT, else 8000)")
    p.add_argument(
        "--host",
        help="listen address (default: NOTIFIER_HOST, else 127.0.0.1; 0.0.0.0 for all interfaces)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="web processes sharing the port through SO_REUSEPORT (default 1; see README)",
    )
    _loop_argument(p)
    p.set_defaults(func=cmd_web)

    p = sub.add_parser(
        "worker", help="run background workers", description="Run arq workers that render and send."
    )
    p.add_argument(
        "--queues",
        type=_queue_list,
        default=list(queues.ALL),
        help="comma-separated queues to serve: service,digest,bulk (default: all)",
    )
    p.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    _loop_argument(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser(
        "inbound",
        help="receive bounces, complaints and mailto unsubscribes by SMTP",
        description="An SMTP server for the bounce domain and the unsubscribe mailto "
        "(NOTIFIER_INBOUND_SMTP_HOST, NOTIFIER_INBOUND_SMTP_PORT).",
    )
    p.add_argument("--port", type=int, default=None, help="port (default NOTIFIER_INBOUND_SMTP_PORT)")
    p.set_defaults(func=cmd_inbound)

    p = sub.add_parser(
        "migrate",
        help="apply database migrations",
        description="Apply pending migrations (safe to run concurrently).",
    )
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser(
        "dev",
        help="run everything locally with no set-up",
        description=(
            "Run web and workers on one machine. Without NOTIFIER_DATABASE_URL / NOTIFIER_REDIS_URL it "
            "starts embedded PostgreSQL and Redis under NOTIFIER_DATA_DIR (default .notifier); "
            "without NOTIFIER_SMTP_HOST mail is captured to .eml files shown in the console's mailbox "
            "(/dev/mailbox). Other commands run from the same folder find its servers in "
            "NOTIFIER_DATA_DIR/env while it runs."
        ),
    )
    p.add_argument("--port", type=int, help="web port (default 8000)")
    p.add_argument("--no-selftest", action="store_true", help="do not send the start-up self-test e-mail")
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("api-key", help="create, list and revoke API keys", description="Manage API keys.")
    keys = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    k = keys.add_parser("create", help="create a key and print it once")
    k.add_argument("--name", required=True, help="who uses the key (shown in the audit trail)")
    k.add_argument(
        "--scope",
        required=True,
        nargs="+",
        choices=["accounts", "messages", "service", "newsletters", "admin"],
        help="one or more scopes",
    )
    keys.add_parser("list", help="list keys (never the keys themselves)")
    k = keys.add_parser("revoke", help="revoke a key by id")
    k.add_argument("id", type=int)
    p.set_defaults(func=cmd_api_key)

    p = sub.add_parser(
        "console-user",
        help="add, list, disable and enable console users",
        description="People who sign in to the console (docs/console.md).",
    )
    users = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    u = users.add_parser("add", help="add a user (invited: they sign in by a link e-mailed to them)")
    u.add_argument("email")
    u.add_argument("--name", required=True, help="the person's name (shown in the audit trail)")
    u.add_argument("--role", required=True, choices=["marketing", "support", "operator", "admin"])
    users.add_parser("list", help="list the users")
    for action, text in (
        ("disable", "disable a user and end their sessions"),
        ("enable", "enable a user again"),
    ):
        u = users.add_parser(action, help=text)
        u.add_argument("email")
    p.set_defaults(func=cmd_console_user)

    p = sub.add_parser("digests", help="run the digest scheduler, preview a digest", description="Digests.")
    digests = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    d = digests.add_parser("run", help="one scheduler pass: build and queue every digest due")
    d.add_argument("--at", type=_instant, help="as of this ISO 8601 time (default: now; no zone means UTC)")
    d.add_argument("--dry-run", action="store_true", help="count what a pass would find; write nothing")
    d.add_argument(
        "--force", action="store_true", help="allow --at more than 5 minutes ahead (sends real mail now)"
    )
    d = digests.add_parser(
        "preview", help="what an account would get under its rules, and when; sends and changes nothing"
    )
    d.add_argument("external_id")
    d.add_argument("--at", type=_instant, help="as of this ISO 8601 time (default: now; no zone means UTC)")
    d.add_argument("--html", action="store_true", help="print the HTML part instead of the text")
    p.set_defaults(func=cmd_digests)

    p = sub.add_parser("outbox", help="operate the outbox of e-mails", description="The outbox of e-mails.")
    ob = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    o = ob.add_parser("retry", help="re-queue failed e-mails (by id, or all failed since a time)")
    o.add_argument("ids", nargs="*", type=int, help="ids of failed e-mails")
    o.add_argument(
        "--since", type=_instant, help="all that failed at or after this ISO 8601 time (UTC if no zone)"
    )
    p.set_defaults(func=cmd_outbox)

    p = sub.add_parser(
        "newsletter",
        aliases=["newsletters"],
        help="send a newsletter and follow it; release local-time sends",
        description="Newsletters.",
    )
    nl = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    n = nl.add_parser("send", help="start sending now and show a progress bar until it is sent")
    n.add_argument("id", type=int, help="the newsletter's id")
    n.add_argument("--no-wait", action="store_true", help="start it and print its figures once")
    n = nl.add_parser(
        "run-due",
        help="one release pass: queue the recipients of local-time sends whose hour has come",
    )
    n.add_argument("--at", type=_instant, help="as of this ISO 8601 time (default: now; no zone means UTC)")
    n.add_argument("--dry-run", action="store_true", help="count the recipients due; write nothing")
    n.add_argument(
        "--force", action="store_true", help="allow --at more than 5 minutes ahead (sends real mail now)"
    )
    p.set_defaults(func=cmd_newsletter)

    p = sub.add_parser("members", help="import members from a CSV file", description="Members.")
    mb = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    m = mb.add_parser(
        "import",
        help="create or update members by external_id from a CSV file (docs/import.md)",
        description="Create or update members by external_id from a UTF-8 CSV file with a header row. "
        "Columns named external_id, email, name, timezone, locale map to those fields; --map maps others. "
        "Bad rows are reported (row, field, reason) and the good rows imported; a second run of the same "
        "file changes nothing. Exit code 0: all rows imported, 1: some rows failed, 2: refused.",
    )
    m.add_argument("file", help="the CSV file")
    m.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="COLUMN=FIELD",
        help="map a CSV column to external_id, email, name, timezone, locale or attributes.KEY (repeatable)",
    )
    m.add_argument("--dry-run", action="store_true", help="check and count everything; write nothing")
    m.add_argument(
        "--opt-in", action="store_true", help="opt the members in to the newsletter (source import)"
    )
    m.add_argument(
        "--list", metavar="KEY", help="with --opt-in: the list to opt them in to (default: the newsletter)"
    )
    m.add_argument(
        "--consent-wording", metavar="TEXT", help="with --opt-in: the wording the members agreed to"
    )
    m.add_argument("--errors", metavar="FILE.csv", help="write every bad row (row,field,reason) to this file")
    p.set_defaults(func=cmd_members)

    p = sub.add_parser(
        "inbox-secret",
        help="print the secret for minting member tokens offline",
        description="Print the secret an organisation's backend mints member inbox tokens with "
        "(derived from NOTIFIER_SECRET_KEY; keep it as secret as that key).",
    )
    p.set_defaults(func=cmd_inbox_secret)

    return parser


def _loop_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="event loop (default uvloop, the asyncio loop when uvloop is not installed)",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
        if asyncio.iscoroutine(result):
            # The worker too runs on uvloop by default: a bulk worker's SMTP lanes make a few
            # transport writes and reads per e-mail, which uvloop's loop does in C.
            loop_name = getattr(args, "loop", "asyncio")
            with asyncio.Runner(loop_factory=lambda: new_event_loop(loop_name)) as runner:
                result = runner.run(result)
        return int(result or 0)
    except ConfigError as exc:
        print(f"notifier: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
