"""The console's member import (admin): `/console/import` uploads a CSV file and runs
`notifier.member_import.import_csv`, the same import as `notifier members import`, with the
signed-in person as the actor, opting the members in to the list chosen (as the CLI's `--list
KEY`; the newsletter, the default list, unless another is chosen); the result page shows the
counts and the bad rows."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.web_request import FileField

from notifier import audit, member_import
from notifier.console.ui import pool_of, posted, render, session_of
from notifier.db import Q

RECENT_IMPORTS = 10


def import_actor(person: audit.Actor) -> audit.Actor:
    """The audit actor of an import from the console: the signed-in person (or the development
    key), marked as an import."""
    return audit.Actor(person.type, f"{person.name} (import)", person.user_id)


async def _page(
    request: web.Request, *, status: int = 200, form: dict[str, str], error: str | None, result: Any
) -> web.Response:
    """The upload form (a choice of every list not archived, the default first), the result of an
    upload if any, and the latest imports."""
    pool = pool_of(request)
    return render(
        request,
        "import.html",
        status=status,
        recent=await pool.fetch(Q.recent_imports, RECENT_IMPORTS),
        lists=await pool.fetch(Q.all_lists, False),
        form=form,
        error=error,
        result=result,
    )


async def import_form(request: web.Request) -> web.Response:
    """GET /console/import: the upload form and the latest imports."""
    return await _page(request, form={}, error=None, result=None)


async def import_upload(request: web.Request) -> web.Response:
    """POST /console/import: import the uploaded file (or check it, with "dry run"), opting the
    members in to the list `list` (a key; empty: the newsletter) when `opt_in` is ticked; 422 with
    the reason for an unknown or archived list."""
    data = await posted(request)
    upload = data.get("file")
    form = {k: v for k, v in data.items() if isinstance(v, str)}
    error: str | None = None
    result = None
    if not isinstance(upload, FileField) or not upload.filename:
        error = "Choose a CSV file to import."
    else:
        opt_in = form.get("opt_in") == "on"
        wording = form.get("consent_wording", "").strip()
        try:
            if opt_in and not wording:
                raise member_import.ImportRefused("write the consent wording the members agreed to")
            maps = member_import.parse_maps(
                [line for line in form.get("maps", "").splitlines() if line.strip()]
            )
            async with pool_of(request).acquire() as conn:
                result = await member_import.import_csv(
                    conn,
                    upload.file,
                    source=upload.filename,
                    actor=import_actor(session_of(request).actor),
                    maps=maps,
                    opt_in=member_import.OptIn(wording, form.get("list") or None) if opt_in else None,
                    dry_run=form.get("dry_run") == "on",
                )
        except member_import.ImportRefused as exc:
            error = f"Nothing was imported: {exc}."
    return await _page(request, status=422 if error else 200, form=form, error=error, result=result)
