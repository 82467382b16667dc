"""Console sign-in by OpenID Connect with any issuer found by discovery (Google Workspace,
Microsoft Entra, Keycloak, Okta): the authorisation-code flow with PKCE (S256).

`start` keeps the flow's `state`, `nonce` and PKCE verifier in Redis for ten minutes under a hash
of `state`, bound to a random cookie of the browser; `callback` takes that record once (a
replayed `state` finds nothing), exchanges the code, and verifies the ID token with joserfc:
signature by the issuer's JWKS, `iss`, `aud` (and `azp` when there are several audiences),
`exp`, `iat`, and the `nonce`. Only invited or active console users at
NOTIFIER_OIDC_ALLOWED_DOMAINS get in; every refusal is a sign-in page that says why.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode

import aiohttp
from aiohttp import web
from joserfc import errors as jose_errors
from joserfc import jwt
from joserfc.jwk import KeySet

from notifier import ratelimit, staff
from notifier.api.headers import text_cookie
from notifier.console import sign_in
from notifier.console.ui import pool_of, redis_of, settings_of
from notifier.settings import Settings

log = logging.getLogger("notifier.console")

FLOW_COOKIE = "notifier_console_oidc"
FLOW_SECONDS = 10 * 60
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]
_CACHE_SECONDS = 3600


class Refused(Exception):
    """The OpenID Connect sign-in cannot go on; the message is fit to show."""


@dataclass
class _Provider:
    metadata: dict[str, Any]
    keys: KeySet | None
    fetched: float


# Discovery documents and key sets by issuer, kept on the console app for an hour; keys are
# fetched again once when a token names a key that is not in the set (the issuer rotated them).
PROVIDERS = web.AppKey("console_oidc_providers", dict[str, _Provider])


def _redirect_uri(settings: Settings) -> str:
    return f"{settings.public_url}/console/sign-in/oidc/callback"


async def _get_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url) as resp:
        if resp.status != 200:
            raise Refused(f"the identity provider answered {resp.status} for {url}")
        try:
            data = await resp.json(content_type=None)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise Refused(f"the identity provider's answer at {url} is not a JSON object")
        return data


async def _provider(
    request: web.Request, session: aiohttp.ClientSession, *, fresh_keys: bool = False
) -> _Provider:
    providers = request.app[PROVIDERS]
    issuer = (settings_of(request).oidc_issuer or "").rstrip("/")
    cached = providers.get(issuer)
    if cached is None or time.monotonic() - cached.fetched > _CACHE_SECONDS:
        metadata = await _get_json(session, f"{issuer}/.well-known/openid-configuration")
        if metadata.get("issuer", "").rstrip("/") != issuer:
            raise Refused("the identity provider's discovery document names another issuer")
        cached = providers[issuer] = _Provider(metadata, None, time.monotonic())
    if cached.keys is None or fresh_keys:
        cached.keys = KeySet.import_key_set(await _get_json(session, cached.metadata["jwks_uri"]))  # type: ignore[arg-type]
    return cached


def _s256(verifier: str) -> str:
    """The PKCE code challenge of `verifier` (RFC 7636, S256)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _flow_key(state: str) -> str:
    return "notifier:console-oidc:" + hashlib.sha256(state.encode()).hexdigest()


async def start(request: web.Request) -> web.Response:
    """GET /console/sign-in/oidc?next=: off to the identity provider, with state, nonce and PKCE."""
    settings = settings_of(request)
    if not settings.oidc_enabled:
        raise web.HTTPNotFound(text="Single sign-on is not set up for this console.")
    try:
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
            provider = await _provider(request, session)
    except (Refused, aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.warning("console OIDC discovery failed: %s", exc)
        return await sign_in.sign_in_form(
            request,
            error="The identity provider cannot be reached. Try again, or ask for a link by e-mail.",
            status=503,
        )
    # Each start keeps a record in Redis: counted with the sign-in links asked for per client.
    wait = await sign_in.link_windows(request)[1].take(
        redis_of(request), ratelimit.client_key(request.remote)
    )
    if wait:
        response = await sign_in.sign_in_form(
            request,
            error=f"Too many sign-ins started here: try again in {max(1, round(wait / 60))} minute(s).",
            status=429,
        )
        response.headers["Retry-After"] = str(wait)
        return response
    state, nonce, verifier, binding = (secrets.token_urlsafe(32) for _ in range(4))
    flow = {
        "nonce": nonce,
        "verifier": verifier,
        "binding": hashlib.sha256(binding.encode()).hexdigest(),
        "next": sign_in.safe_next(request.query.get("next")),
    }
    await redis_of(request).set(_flow_key(state), json.dumps(flow), ex=FLOW_SECONDS)
    query = {
        "response_type": "code",
        "client_id": settings.oidc_client_id,
        "redirect_uri": _redirect_uri(settings),
        "scope": "openid email profile",
        "state": state,
        "nonce": nonce,
        "code_challenge": _s256(verifier),
        "code_challenge_method": "S256",
    }
    response = web.HTTPSeeOther(provider.metadata["authorization_endpoint"] + "?" + urlencode(query))
    # Lax: the provider sends the browser back with a cross-site redirect.
    response.set_cookie(FLOW_COOKIE, binding, **sign_in.cookie_options(request, FLOW_SECONDS, samesite="Lax"))
    raise response


async def _exchange(
    session: aiohttp.ClientSession, settings: Settings, provider: _Provider, code: str, verifier: str
) -> str:
    """The ID token for `code` from the token endpoint."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": _redirect_uri(settings),
        "code_verifier": verifier,
    }
    headers = {}
    client_id = settings.oidc_client_id or ""
    if settings.oidc_client_secret is not None:
        # A confidential client: client_secret_basic, each part form-encoded first (RFC 6749 2.3.1).
        secret = settings.oidc_client_secret.get_secret_value()
        pair = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    else:  # a public client: PKCE alone
        form["client_id"] = client_id
    async with session.post(provider.metadata["token_endpoint"], data=form, headers=headers) as resp:
        try:
            body = await resp.json(content_type=None)
        except ValueError:
            body = None
        if resp.status != 200 or not isinstance(body, dict) or not isinstance(body.get("id_token"), str):
            error = body.get("error") if isinstance(body, dict) else None
            raise Refused(f"the identity provider refused the sign-in code ({error or resp.status})")
        token: str = body["id_token"]
        return token


async def verified_claims(
    request: web.Request, session: aiohttp.ClientSession, id_token: str, nonce: str
) -> dict[str, Any]:
    """The ID token's claims once joserfc has checked its signature by the issuer's keys, the
    issuer, the audience, expiry and issue time, and the nonce. Raises Refused saying which
    check failed."""
    settings = settings_of(request)
    provider = await _provider(request, session)
    assert provider.keys is not None
    try:
        try:
            token = jwt.decode(id_token, provider.keys, algorithms=ALGORITHMS)
        except (jose_errors.InvalidKeyIdError, ValueError):
            provider = await _provider(request, session, fresh_keys=True)
            assert provider.keys is not None
            token = jwt.decode(id_token, provider.keys, algorithms=ALGORITHMS)
    except jose_errors.BadSignatureError:
        raise Refused("the identity token's signature is not the identity provider's") from None
    except (jose_errors.JoseError, ValueError) as exc:
        raise Refused(f"the identity token cannot be read ({type(exc).__name__})") from None
    registry = jwt.JWTClaimsRegistry(
        leeway=60,
        iss={"essential": True, "value": provider.metadata["issuer"]},
        aud={"essential": True, "value": settings.oidc_client_id or ""},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        nonce={"essential": True, "value": nonce},
    )
    try:
        registry.validate(token.claims)
    except jose_errors.ExpiredTokenError:
        raise Refused("the identity token has expired") from None
    except jose_errors.InvalidClaimError as exc:
        raise Refused(f"the identity token's {exc.claim} is not the one expected") from None
    except jose_errors.JoseError as exc:
        raise Refused(f"the identity token is not valid ({exc.description or type(exc).__name__})") from None
    audiences = token.claims["aud"] if isinstance(token.claims["aud"], list) else [token.claims["aud"]]
    if len(audiences) > 1 and token.claims.get("azp") != settings.oidc_client_id:
        raise Refused("the identity token was issued to another application (azp)")
    return dict(token.claims)


def _address_of(settings: Settings, claims: dict[str, Any]) -> str:
    email = claims.get("email")
    if not isinstance(email, str) or "@" not in email:
        raise Refused("the identity provider did not give an e-mail address")
    if claims.get("email_verified") is False:
        raise Refused("the identity provider has not verified this e-mail address")
    email = staff.normalise(email)
    domains = settings.oidc_allowed_domains
    if domains is not None and email.rsplit("@", 1)[1] not in domains:
        raise Refused(f"addresses at {email.rsplit('@', 1)[1]} may not sign in to this console")
    return email


async def callback(request: web.Request) -> web.Response:
    """GET /console/sign-in/oidc/callback?code=&state=: finish the flow and sign in, or say why
    not (401, counted as a failed sign-in)."""
    settings = settings_of(request)
    if not settings.oidc_enabled:
        raise web.HTTPNotFound(text="Single sign-on is not set up for this console.")
    wait = await sign_in.throttle(request)
    if wait:
        return await sign_in.too_many_sign_ins(request, wait)
    try:
        user, next_page = await _finish(request, settings)
    except Refused as exc:
        await sign_in.throttle(request, failed=True)
        log.info("console OIDC sign-in refused: %s", exc)
        response = await sign_in.sign_in_form(request, error=f"Single sign-on refused: {exc}.", status=401)
        response.del_cookie(FLOW_COOKIE, path="/console")
        return response
    response = await sign_in.open_user_session(request, user, "oidc", next_page)
    response.del_cookie(FLOW_COOKIE, path="/console")
    raise response


async def _finish(request: web.Request, settings: Settings) -> tuple[Any, str]:
    state = request.query.get("state", "")
    raw = await redis_of(request).getdel(_flow_key(state)) if 0 < len(state) <= 200 else None
    if raw is None:
        raise Refused("this sign-in is not valid (used already, older than 10 minutes, or not started here)")
    flow = json.loads(raw)
    binding = text_cookie(request, FLOW_COOKIE) or ""
    if not secrets.compare_digest(hashlib.sha256(binding.encode()).hexdigest(), flow["binding"]):
        raise Refused("this sign-in was started in another browser")
    if "error" in request.query:
        raise Refused(f"the identity provider answered {request.query['error'][:100]!r}")
    code = request.query.get("code", "")
    if not code or len(code) > 2000:
        raise Refused("the identity provider sent no sign-in code")
    try:
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
            provider = await _provider(request, session)
            id_token = await _exchange(session, settings, provider, code, flow["verifier"])
            claims = await verified_claims(request, session, id_token, flow["nonce"])
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise Refused(f"the identity provider cannot be reached ({type(exc).__name__})") from None
    email = _address_of(settings, claims)
    user = await staff.by_email(pool_of(request), email)
    if user is None or user["status"] == "disabled":
        raise Refused(f"{email} is not invited to this console; ask an admin for an invitation")
    return user, flow["next"]
