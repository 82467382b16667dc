"""Console sign-in by OpenID Connect against a real provider running in the test
(`oidc-provider-mock`, over loopback): the whole authorisation-code flow with PKCE, and each
refusal — a wrong audience, an expired token, a foreign signature, a replayed state, another
browser, an uninvited address, a domain that is not allowed — with a page that says why."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg
import flask
import oidc_provider_mock
import pytest
import werkzeug.serving
from aiohttp.test_utils import TestClient, TestServer
from joserfc import jwt
from joserfc.jwk import RSAKey
from pydantic import SecretStr

from notifier.app import create_app
from notifier.settings import Settings
from tests.console_people import Client
from tests.factory import Factory

CLIENT_ID = "notifier-console"


class Provider:
    """The provider's address, and claims the test makes it put in its next ID token (re-signed
    with the provider's own key, or with `foreign_key`), as a misbehaving issuer would."""

    def __init__(self, app: flask.Flask) -> None:
        self.app = app
        self.url = ""
        self.tamper: dict[str, Any] = {}
        self.foreign_key: RSAKey | None = None
        app.after_request(self._rewrite)

    def _rewrite(self, response: flask.Response) -> flask.Response:
        if not flask.request.path.endswith("/token") or not (self.tamper or self.foreign_key):
            return response
        body = response.get_json()
        key = RSAKey.import_key(flask.g.oidc_provider_mock_storage.jwk.as_dict(is_private=True))
        token = jwt.decode(body["id_token"], key)
        claims = {**token.claims, **self.tamper}
        body["id_token"] = jwt.encode(token.header, claims, self.foreign_key or key)
        response.set_data(flask.json.dumps(body))
        return response


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    app = oidc_provider_mock.app(require_nonce=True)
    wrapped = Provider(app)
    server = werkzeug.serving.make_server("127.0.0.1", 0, app, threaded=True)
    wrapped.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield wrapped
    server.shutdown()
    thread.join(5)


@pytest.fixture
def settings(settings: Settings, provider: Provider) -> Settings:
    provider.tamper, provider.foreign_key = {}, None
    return settings.model_copy(
        update={
            "public_url": "http://127.0.0.1",
            "oidc_issuer": provider.url,
            "oidc_client_id": CLIENT_ID,
            "oidc_client_secret": SecretStr("client-secret"),
        }
    )


async def through_provider(client: Client, email: str, next_page: str = "/console/") -> tuple[str, Any]:
    """Start single sign-on in the console, sign in at the provider as `email`; the console's
    callback path (with code and state) and the console's answer to it."""
    started = await client.get(f"/console/sign-in/oidc?next={next_page}", allow_redirects=False)
    assert started.status == 303, await started.text()
    authorize = started.headers["Location"]
    query = parse_qs(urlsplit(authorize).query)
    assert query["code_challenge_method"] == ["S256"] and query["nonce"] and query["state"]
    async with aiohttp.ClientSession() as browser:
        chosen = await browser.post(authorize, data={"sub": email}, allow_redirects=False)
        assert chosen.status in (302, 303), await chosen.text()
        back = urlsplit(chosen.headers["Location"])
    callback = f"{back.path}?{back.query}"
    return callback, await client.get(callback, allow_redirects=False)


async def test_invited_user_signs_in_through_the_provider(
    client: Client, pool: asyncpg.Pool, factory: Factory
) -> None:
    user = await factory.console_user("operator", email="olga@example.org", name="Olga Operator")
    sign_in_page = await (await client.get("/console/sign-in")).text()
    assert "Sign in with your organisation" in sign_in_page
    callback, answer = await through_provider(client, "Olga@example.org", "/console/deliverability")
    assert answer.status == 303 and answer.headers["Location"] == "/console/deliverability"
    page = await client.get("/console/deliverability")
    assert page.status == 200 and "Olga Operator" in await page.text()
    session = await pool.fetchrow("SELECT user_id, role, method FROM console_sessions")
    assert dict(session) == {"user_id": user["id"], "role": "operator", "method": "oidc"}

    # The same state again (a replay of the callback) is refused.
    replay = await client.get(callback, allow_redirects=False)
    assert replay.status == 401 and "used already" in await replay.text()


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ({"aud": "another-application"}, "aud is not the one expected"),
        ({"exp": 1_000_000_000, "iat": 999_999_000}, "has expired"),
        ({"nonce": "not-the-nonce"}, "nonce is not the one expected"),
        ({"iss": "https://evil.example"}, "iss is not the one expected"),
    ],
)
async def test_tokens_that_fail_a_check_are_refused(
    client: Client,
    pool: asyncpg.Pool,
    factory: Factory,
    provider: Provider,
    tamper: dict[str, Any],
    reason: str,
) -> None:
    await factory.console_user("operator", email="olga@example.org")
    provider.tamper = tamper
    _, answer = await through_provider(client, "olga@example.org")
    text = await answer.text()
    assert answer.status == 401 and "Single sign-on refused" in text and reason in text
    assert await pool.fetchval("SELECT count(*) FROM console_sessions") == 0


async def test_a_token_signed_with_another_key_is_refused(
    client: Client, pool: asyncpg.Pool, factory: Factory, provider: Provider
) -> None:
    await factory.console_user("operator", email="olga@example.org")
    provider.foreign_key = RSAKey.generate_key(2048)
    _, answer = await through_provider(client, "olga@example.org")
    assert answer.status == 401 and "signature" in await answer.text()
    assert await pool.fetchval("SELECT count(*) FROM console_sessions") == 0


async def test_uninvited_and_disabled_addresses_are_refused(
    client: Client, pool: asyncpg.Pool, factory: Factory
) -> None:
    await factory.console_user("operator", email="gone@example.org", status="disabled")
    for address in ("stranger@example.org", "gone@example.org"):
        _, answer = await through_provider(client, address)
        text = await answer.text()
        assert answer.status == 401 and "is not invited to this console" in text, address
    assert await pool.fetchval("SELECT count(*) FROM console_sessions") == 0


async def test_only_allowed_domains_sign_in(
    settings: Settings, pool: asyncpg.Pool, factory: Factory, redis: Any
) -> None:
    await factory.console_user("operator", email="olga@partner.example")
    limited = settings.model_copy(update={"oidc_allowed_domains": ["example.org"]})
    async with TestClient(TestServer(create_app(limited))) as client:
        _, answer = await through_provider(client, "olga@partner.example")
        assert answer.status == 401 and "addresses at partner.example may not sign in" in await answer.text()


async def test_the_flow_is_bound_to_the_browser_that_started_it(
    client: Client, settings: Settings, factory: Factory, redis: Any
) -> None:
    await factory.console_user("operator", email="olga@example.org")
    started = await client.get("/console/sign-in/oidc", allow_redirects=False)
    async with aiohttp.ClientSession() as browser:
        chosen = await browser.post(
            started.headers["Location"], data={"sub": "olga@example.org"}, allow_redirects=False
        )
        back = urlsplit(chosen.headers["Location"])
    async with TestClient(TestServer(create_app(settings))) as other_browser:
        answer = await other_browser.get(f"{back.path}?{back.query}", allow_redirects=False)
        assert answer.status == 401 and "started in another browser" in await answer.text()


async def test_without_settings_there_is_no_single_sign_on(
    settings: Settings, pool: asyncpg.Pool, redis: Any
) -> None:
    plain = settings.model_copy(update={"oidc_issuer": None, "oidc_client_id": None})
    async with TestClient(TestServer(create_app(plain))) as client:
        assert "Sign in with your organisation" not in await (await client.get("/console/sign-in")).text()
        assert (await client.get("/console/sign-in/oidc")).status == 404


async def test_starting_sign_ins_is_throttled_per_client(client: Client, settings: Settings) -> None:
    """Each start keeps a record in Redis for ten minutes, so a client cannot start without end."""
    for _ in range(settings.console_link_per_client):
        assert (await client.get("/console/sign-in/oidc", allow_redirects=False)).status == 303
    throttled = await client.get("/console/sign-in/oidc", allow_redirects=False)
    assert throttled.status == 429 and int(throttled.headers["Retry-After"]) > 0
