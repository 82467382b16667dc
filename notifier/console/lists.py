"""Console pages for lists: every list with its subscribers, create one, archive one. The rules
are `notifier.lists`' own (the API's), so a list made here is the same as one made by the API."""

from __future__ import annotations

from aiohttp import web
from pydantic import ValidationError

from notifier import audit, lists
from notifier.console.ui import form_of, pool_of, redirect, render, session_of
from notifier.db import Q
from notifier.errors import Problem
from notifier.validation import errors_of


async def _index(request: web.Request, *, status: int = 200, form: dict[str, str] | None = None,
                 errors: dict[str, str] | None = None) -> web.Response:  # fmt: skip
    pool = pool_of(request)
    rows = await pool.fetch(Q.all_lists, True)
    counts = await lists.subscribers(pool, rows)
    items = [{**dict(r), "subscribers": counts[r["id"]]} for r in rows]
    return render(request, "lists.html", status=status, items=items, form=form or {}, errors=errors or {})


async def index(request: web.Request) -> web.Response:
    """GET /console/lists: every list (archived ones last) and the form for a new one."""
    return await _index(request)


async def create(request: web.Request) -> web.Response:
    """POST /console/lists: a new list; the form again with its errors (422) when invalid."""
    form = await form_of(request)
    data = {
        "key": form.get("key", "").strip(),
        "name": form.get("name", "").strip(),
        "description": form.get("description", "").strip(),
        "double_opt_in": form.get("double_opt_in") == "yes",
    }
    try:
        new = lists.ListIn.model_validate(data)
        async with pool_of(request).acquire() as conn, conn.transaction():
            await lists.create(conn, new)
            await audit.record(conn, None, session_of(request).actor, "list.created", data)
    except ValidationError as exc:
        errors = {e["field"]: e["message"] for e in errors_of(exc)}
        return await _index(request, status=422, form=dict(form), errors=errors)
    except Problem as exc:
        errors = {e["field"]: e["message"] for e in exc.errors or []} or {"key": exc.detail}
        return await _index(request, status=422 if exc.status == 422 else 409, form=dict(form), errors=errors)
    raise redirect("/console/lists", "list-created")


async def archive(request: web.Request) -> web.Response:
    """POST /console/lists/{key}/archive: no longer shown to members nor sent to."""
    await form_of(request)
    key = request.match_info["key"][:40]
    async with pool_of(request).acquire() as conn, conn.transaction():
        await lists.archive(conn, key)
        await audit.record(conn, None, session_of(request).actor, "list.archived", {"key": key})
    raise redirect("/console/lists", "list-archived")
