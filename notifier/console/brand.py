"""The console's brand page (admin): `/console/brand` stores the house style's overrides
(`notifier.brand`) and puts them in force in this process at once (the other processes within
`brand.REFRESH_SECONDS`); each save is audited under the person (`brand.saved`, the fields
changed)."""

from __future__ import annotations

from aiohttp import web
from pydantic import ValidationError

from notifier import audit, brand
from notifier.console.ui import pool_of, posted, redirect, render, session_of, settings_of
from notifier.resources import BRAND
from notifier.validation import errors_of


async def _brand_page(
    request: web.Request,
    *,
    status: int = 200,
    form: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
) -> web.Response:
    stored = await brand.stored(pool_of(request))
    values = (
        form
        if form is not None
        else {k: (stored[k] or "") if stored else "" for k in brand.BrandForm.model_fields}
    )
    return render(
        request,
        "brand.html",
        status=status,
        form=values,
        errors=errors or {},
        defaults=brand.Brand.from_settings(settings_of(request)),
        current=request.config_dict[BRAND].current,
        stored=stored,
    )


async def brand_form(request: web.Request) -> web.Response:
    """GET /console/brand: the house style in force, and the form to change it."""
    return await _brand_page(request)


async def brand_save(request: web.Request) -> web.Response:
    """POST /console/brand: check and store the overrides (blank: the setting applies)."""
    data = await posted(request)
    form = {k: v for k, v in data.items() if isinstance(v, str) and k in brand.BrandForm.model_fields}
    try:
        checked = brand.BrandForm.of_form(form)
    except ValidationError as exc:
        errors = {e["field"]: e["message"] for e in errors_of(exc)}
        return await _brand_page(request, status=422, form=form, errors=errors)
    actor = session_of(request).actor
    async with pool_of(request).acquire() as conn, conn.transaction():
        before = await brand.stored(conn)
        saved = await brand.save(conn, settings_of(request), checked, str(actor))
        changes = audit.diff(dict(before) if before else {}, checked.model_dump())
        await audit.record(conn, None, actor, "brand.saved", changes)
    request.config_dict[BRAND].set(saved)
    raise redirect("/console/brand", "saved")
