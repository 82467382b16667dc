"""The console's member import (admin): `/console/import` uploads a CSV file and runs
`notifier.member_import.import_csv`, the same import as `notifier members import`, with the
signed-in person as the actor; the result page shows the counts and the bad rows."""

from __future__ import annotations

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


async def import_form(request: web.Request) -> web.Response:
    """GET /console/import: the upload form and the latest imports."""
    return render(
        request,
        "import.html",
        recent=await pool_of(request).fetch(Q.recent_imports, RECENT_IMPORTS),
        form={},
        error=None,
        result=None,
    )


async def import_upload(request: web.Request) -> web.Response:
    """POST /console/import: import the uploaded file (or check it, with "dry run")."""
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
                    opt_in=member_import.OptIn(wording) if opt_in else None,
                    dry_run=form.get("dry_run") == "on",
                )
        except member_import.ImportRefused as exc:
            error = f"Nothing was imported: {exc}."
    return render(
        request,
        "import.html",
        status=422 if error else 200,
        recent=await pool_of(request).fetch(Q.recent_imports, RECENT_IMPORTS),
        form=form,
        error=error,
        result=result,
    )
