"""Console pages for the house style and member import (admin).

`/console/import` uploads a CSV file and runs `notifier.member_import.import_csv`, the same
import as `notifier members import`, with the signed-in operator as the actor; the result page
shows the counts and the bad rows. `/console/brand` stores the brand overrides
(`notifier.brand`) and puts them in force in this process at once (the others within
`brand.REFRESH_SECONDS`).
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.web_request import FileField
from pydantic import ValidationError

from notifier import audit, brand, member_import
from notifier.console.ui import page, pool_of, posted, redirect, render, session_of, settings_of
from notifier.db import Q
from notifier.resources import BRAND
from notifier.validation import errors_of

RECENT_IMPORTS = 10


def import_actor(operator: audit.Actor) -> audit.Actor:
    """The audit actor of an import from the console: the operator, marked as an import."""
    return audit.Actor("operator", f"{operator.name} (import)")


@page("admin")
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


@page("admin")
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


@page("admin")
async def brand_form(request: web.Request) -> web.Response:
    """GET /console/brand: the house style in force, and the form to change it."""
    return await _brand_page(request)


@page("admin")
async def brand_save(request: web.Request) -> web.Response:
    """POST /console/brand: check and store the overrides (blank: the setting applies)."""
    data = await posted(request)
    form = {k: v for k, v in data.items() if isinstance(v, str) and k in brand.BrandForm.model_fields}
    try:
        checked = brand.BrandForm.of_form(form)
    except ValidationError as exc:
        errors = {e["field"]: e["message"] for e in errors_of(exc)}
        return await _brand_page(request, status=422, form=form, errors=errors)
    saved = await brand.save(pool_of(request), settings_of(request), checked, str(session_of(request).actor))
    request.config_dict[BRAND].set(saved)
    raise redirect("/console/brand", "saved")


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/import", import_form)
    app.router.add_post("/import", import_upload)
    app.router.add_get("/brand", brand_form)
    app.router.add_post("/brand", brand_save)
