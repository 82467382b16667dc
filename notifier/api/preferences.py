"""`GET` / `PUT /v1/accounts/{external_id}/preferences` (scope `accounts`): thin over
`notifier.preferences.apply_preferences`."""

from __future__ import annotations

from aiohttp import web

from notifier.api.auth import api_key_of, requires
from notifier.api.problems import Problem, read_json
from notifier.api.responses import json_response
from notifier.db import Q
from notifier.preferences import AccountNotFound, InvalidPreferences, apply_preferences, document
from notifier.resources import POOL


@requires("accounts")
async def get_preferences(request: web.Request) -> web.Response:
    """The account's preferences and when its next digest is due (null: none scheduled)."""
    row = await request.app[POOL].fetchrow(Q.preferences_by_external_id, request.match_info["external_id"])
    if row is None:
        raise Problem(404, "no account with that external_id")
    return json_response(200, await document(request.app[POOL], row["id"], row))


@requires("accounts")
async def put_preferences(request: web.Request) -> web.Response:
    """Change any of the preferences (fields left out keep their value), and list memberships
    (`lists`: `{key: bool}`); 422 names bad fields."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidPreferences([{"field": "body", "message": "must be a JSON object"}])
    async with request.app[POOL].acquire() as conn:
        account_id = await conn.fetchval(Q.account_id_by_external_id, request.match_info["external_id"])
        if account_id is None:
            raise Problem(404, "no account with that external_id")
        try:
            prefs = await apply_preferences(conn, account_id, body, api_key_of(request).actor, "api")
        except AccountNotFound:
            raise Problem(404, "no account with that external_id") from None
        return json_response(200, await document(conn, account_id, prefs))


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/v1/accounts/{external_id}/preferences", get_preferences)
    app.router.add_put("/v1/accounts/{external_id}/preferences", put_preferences)
