"""Least privilege in the console: every route of the console's router, for every role, against
this file's own statement of who may do what. A new route that declares no access, or the wrong
one, or that this policy does not cover, fails here."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp import web

from notifier.console.sessions import Access
from notifier.settings import Settings
from notifier.staff import ROLES
from tests.console_people import Client, csrf_of, session_cookie
from tests.factory import Factory

# Who may open what, by the first part of the path (admin may open everything). Written from the
# issue's role descriptions, not from console.app.ROUTES, so that the two check each other.
PUBLIC = {
    "/static/{name}",
    "/sign-in",
    "/sign-in/link",
    "/sign-in/link/use",
    "/sign-in/oidc",
    "/sign-in/oidc/callback",
}
SIGNED_IN = {"/", "/sign-out", "/sessions", "/sessions/sign-out-everywhere"}
BY_SECTION: dict[str, Access] = {
    # marketing: newsletters, lists, segments, templates and their figures
    "newsletters": "marketing",
    "lists": "marketing",
    "segments": "marketing",
    "templates": "marketing",
    # support: find, export, correct and erase members
    "members": "support",
    # operator: deliverability, suppressions, re-drive, webhooks
    "deliverability": "operator",
    "suppressions": "operator",
    "failed": "operator",
    "complaints": "operator",
    "webhooks": "operator",
    # admin: users, keys, settings (the brand is one), bulk imports of members, captured mail
    # (it holds working member links)
    "users": "admin",
    "keys": "admin",
    "settings": "admin",
    "brand": "admin",
    "import": "admin",
    "mailbox": "admin",
}


def expected_access(path: str) -> Access:
    if path in PUBLIC:
        return "public"
    if path in SIGNED_IN:
        return "signed-in"
    section = path.strip("/").split("/")[0]
    assert section in BY_SECTION, f"no role policy for the console route {path}: add it to BY_SECTION"
    return BY_SECTION[section]


def console_routes(app: web.Application) -> list[tuple[str, str]]:
    """(method, path under /console) of every route of the mounted console, from its router."""
    (console,) = [
        r
        for r in app.router.resources()
        if isinstance(r, web.PrefixedSubAppResource) and r.canonical == "/console"
    ]
    routes = []
    for route in console._app.router.routes():
        if route.method == "HEAD":
            continue
        assert route.resource is not None
        routes.append((route.method, route.resource.canonical.removeprefix("/console") or "/"))
    return routes


async def _fill(path: str, factory: Factory) -> str:
    newsletter = await factory.newsletter()
    member = await factory.account()
    user = await factory.console_user("marketing")
    values = {
        "{id}": str(newsletter["id"]),
        "{external_id}": member["external_id"],
        "{name}": "none.eml",
        "{key}": "newsletter",  # the default list: archiving it is refused, whoever asks
    }
    if path.startswith("/users/"):
        values["{id}"] = str(user["id"])
    if path.startswith("/templates/"):
        values["{id}"] = str((await factory.newsletter_template())["id"])
    for name, value in values.items():
        path = path.replace(name, value)
    return "/console" + path


@pytest.mark.parametrize("role", ROLES)
async def test_every_route_for_every_role(
    client: Client, pool: asyncpg.Pool, factory: Factory, settings: Settings, role: str
) -> None:
    routes = console_routes(client.app)
    assert len(routes) > 30
    person = await factory.console_user(role)
    wrong: list[str] = []
    for method, path in routes:
        access = expected_access(path)
        url = await _fill(path, factory)
        headers = await session_cookie(pool, settings, person)  # a new session each time: some routes end it
        csrf = csrf_of(await (await client.get("/console/sessions", headers=headers)).text())
        kwargs: dict[str, Any] = {"headers": headers, "allow_redirects": False}
        if method == "POST":
            kwargs["data"] = {"csrf": csrf}
        resp = await client.request(method, url, **kwargs)
        text = await resp.text()
        refused = (resp.status == 403 and "does not give access" in text) or "declares no role" in text
        allowed = access in ("public", "signed-in") or role == "admin" or role == access
        if allowed and (refused or resp.status >= 500):
            wrong.append(f"{role} refused {method} {path} ({resp.status})")
        if not allowed and not refused:
            wrong.append(f"{role} allowed {method} {path} ({resp.status})")
    assert wrong == []


async def test_signed_out_visitors_reach_only_the_public_routes(client: Client, factory: Factory) -> None:
    for method, path in console_routes(client.app):
        url = await _fill(path, factory)
        resp = await client.request(method, url, allow_redirects=False)
        to_sign_in = resp.status == 303 and resp.headers["Location"].startswith("/console/sign-in?next=")
        if expected_access(path) == "public":
            assert not to_sign_in, (method, path)
        else:
            assert to_sign_in, (method, path)
