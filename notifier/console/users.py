"""Console page for admins: the console users, inviting one by e-mail, changing a role,
disabling or re-enabling. The rules are `notifier.staff`'s; every change is audited by person."""

from __future__ import annotations

from aiohttp import web

from notifier import queues, staff
from notifier.console.ui import form_of, number, pool_of, redirect, redis_of, render, session_of, settings_of
from notifier.db import Q
from notifier.mail import outbox

AUDIT_SHOWN = 50


async def _page(
    request: web.Request,
    *,
    status: int = 200,
    errors: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
) -> web.Response:
    pool = pool_of(request)
    return render(
        request,
        "users.html",
        status=status,
        users=await staff.all_users(pool),
        roles=staff.ROLE_DUTIES,
        audit_rows=await pool.fetch(Q.staff_audit, AUDIT_SHOWN),
        errors=errors or {},
        form=form or {"role": "marketing"},
    )


async def index(request: web.Request) -> web.Response:
    """GET /console/users: every user with role, status and last sign-in; the invitation form."""
    return await _page(request)


async def invite(request: web.Request) -> web.Response:
    """POST /console/users: add a user and e-mail the invitation (422 with the form for a bad
    field or an address that is already a user)."""
    form = dict(await form_of(request))
    try:
        async with pool_of(request).acquire() as conn, conn.transaction():
            await staff.invite(
                conn,
                settings_of(request).public_url,
                form.get("email", ""),
                form.get("name", ""),
                form.get("role", ""),
                session_of(request).actor,
            )
    except staff.UserProblem as exc:
        return await _page(request, status=422, errors={exc.field: exc.message}, form=form)
    await outbox.ring(redis_of(request), queues.SERVICE)
    raise redirect("/console/users", "invited")


async def change(request: web.Request) -> web.Response:
    """POST /console/users/{id}: change the role (`role`) or the status (`status`: active or
    disabled); the user's sessions end. An admin cannot change or disable themselves (so the
    console always keeps the admin who acts)."""
    user_id = number(request.match_info["id"])
    form = await form_of(request)
    if user_id is None:
        raise web.HTTPNotFound(text="There is no such user.")
    if user_id == session_of(request).user_id:
        raise web.HTTPConflict(text="You cannot change your own role or disable yourself; ask another admin.")
    try:
        async with pool_of(request).acquire() as conn, conn.transaction():
            changed = await staff.change(
                conn,
                user_id,
                session_of(request).actor,
                role=form.get("role") or None,
                status=form.get("status") or None,
            )
    except staff.UserProblem as exc:
        raise web.HTTPUnprocessableEntity(text=exc.message) from None
    if changed is None:
        raise web.HTTPNotFound(text="There is no such user.")
    raise redirect("/console/users", "user-changed")
