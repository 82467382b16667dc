"""Languages: a member's locale picks the language of their digests, service e-mails, pages and
newsletter variant; pages about no one follow Accept-Language; an unsupported locale reads
English; dates and numbers follow the language; service templates may have per-language variants.
The catalogues themselves are checked in test_i18n_catalogues.py."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from arq import ArqRedis

from notifier import consent, i18n, queues, tokens
from notifier.digest import run_pass
from notifier.mail.render import TEMPLATES_DIR, Templates
from notifier.settings import Settings
from tests.api_helpers import bearer, create_newsletter, send_newsletter
from tests.conftest import BurstWorker, MailSink
from tests.factory import Factory

Client = TestClient[Any, Any]


def part(message: Any, kind: str) -> str:
    """The text of the `plain` or `html` part of a received e-mail."""
    body = message.get_body((kind,))
    assert body is not None
    text: str = body.get_content()
    return text


T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)  # a Monday, 08:00 UTC
DAY = timedelta(days=1)


# --- choosing the language -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        *[("de", "de"), ("de-DE", "de"), ("de_AT", "de"), ("DE", "de"), ("fr-CA", "fr"), ("es-419", "es")],
        *[("xx", "en"), ("pt-BR", "en"), ("", "en"), (None, "en"), ("!!", "en"), ("en-GB", "en")],
    ],
)
def test_a_locale_tag_names_a_shipped_language_or_english(tag: str | None, expected: str) -> None:
    assert i18n.normalise(tag) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("de-DE,de;q=0.9,en;q=0.8", "de"),
        ("de-CH, fr;q=0.5", "de"),  # a regional tag is its language, before the next one
        ("pt-BR, es;q=0.5, en;q=0.4", "es"),  # the first language shipped, by quality
        ("en;q=0.2, fr;q=0.9", "fr"),
        ("fr;q=0, de", "de"),  # q=0 means "not this one"
        ("xx, pt", None),
        ("*", None),
        ("de;q=abc, ;;, fr", "fr"),  # hostile parts are skipped
        ("", None),
    ],
)
def test_accept_language_is_negotiated(header: str, expected: str | None) -> None:
    assert i18n.negotiate(header) == expected


def test_dates_and_numbers_follow_the_language_and_time_zone() -> None:
    at = datetime(2026, 3, 2, 7, 30, tzinfo=UTC)
    assert i18n.format_when(at, "Europe/Berlin", "en") == "Mon 2 Mar, 08:30"
    assert i18n.format_when(at, "Europe/Berlin", "de") == "Mo., 2. März, 08:30"
    assert i18n.format_when(at, "America/New_York", "fr") == "lun. 2 mars, 02:30"
    assert i18n.format_when(at, "Asia/Kathmandu", "es") == "lun, 2 mar, 13:15"
    assert i18n.format_when(at, "Europe/Berlin", "de", with_year=True) == "02.03.2026, 08:30"
    assert i18n.format_when(at, "Europe/Berlin", "xx") == "Mon 2 Mar, 08:30"
    assert [i18n.format_number(12345, lang) for lang in ("en", "de", "fr")] == [
        "12,345",
        "12.345",
        "12\u202f345",
    ]


# --- digests ---------------------------------------------------------------------------------


async def _digest_for(
    pool: asyncpg.Pool,
    redis: ArqRedis,
    settings: Settings,
    factory: Factory,
    run_worker: BurstWorker,
    **fields: Any,
) -> Any:
    acc = await factory.account(
        digest_frequency="daily", digest_window_start=T0, next_digest_at=T0 + DAY, **fields
    )
    for i in range(7):
        await factory.message(
            acc, category="events", subject=f"Event {i}", created_at=T0 + timedelta(hours=1, minutes=i)
        )
    await factory.message(acc, category="news", subject="Big news", created_at=T0 + timedelta(hours=5))
    assert (await run_pass(pool, redis, settings, T0 + DAY)).emails == 1
    await run_worker(queues.DIGEST)
    return acc


async def test_a_german_members_digest_is_in_german_with_german_dates(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory, smtp: MailSink, run_worker: Any
) -> None:
    await _digest_for(
        pool, redis, settings, factory, run_worker, name="Dora", locale="de-DE", timezone="Europe/Berlin"
    )
    [got] = smtp.received
    msg = got.message
    assert msg["Subject"] == "8 neue Nachrichten in Ihrem Posteingang"
    text = part(msg, "plain")
    html = part(msg, "html")
    assert "Hallo Dora," in text
    assert "Hier ist Ihre tägliche Zusammenfassung: 8 ungelesene Nachrichten in Ihrem Posteingang." in text
    assert "...und 2 weitere in events" in text
    # Monday 1 June 2026, 13:00 UTC is 15:00 in Berlin: German weekday, day and month names.
    assert "Big news (Mo., 1. Juni, 15:00)" in text
    assert "Sie erhalten diese tägliche Zusammenfassung, weil Sie ein Konto bei uns haben." in text
    assert "Alles in Ihrem Posteingang lesen: https://notifier.test/inbox/" in text
    assert "Diese Zusammenfassungen abbestellen: https://notifier.test/u/" in text
    assert '<html lang="de">' in html and "Posteingang öffnen" in html and "Mo., 1. Juni, 15:00" in html
    assert "Zusammenfassungen abbestellen" in html and "Seltener erhalten" in html
    assert "unread" not in text and "Hello" not in html


@pytest.mark.parametrize("locale", ["xx", "pt-BR"])
async def test_an_unsupported_locale_gets_english(
    pool: asyncpg.Pool,
    redis: ArqRedis,
    settings: Settings,
    factory: Factory,
    smtp: MailSink,
    run_worker: Any,
    locale: str,
) -> None:
    await _digest_for(pool, redis, settings, factory, run_worker, name="Pia", locale=locale, timezone="UTC")
    [got] = smtp.received
    assert got.message["Subject"] == "8 new messages in your inbox"
    text = part(got.message, "plain")
    assert "Hello Pia," in text and "Here is your daily summary: 8 unread messages in your inbox." in text
    assert "Big news (Mon 1 Jun, 13:00)" in text


async def test_plural_forms_and_numbers_in_a_french_digest(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory, smtp: MailSink, run_worker: Any
) -> None:
    acc = await factory.account(
        digest_frequency="daily", digest_window_start=T0, next_digest_at=T0 + DAY, locale="fr", name="Léa"
    )
    await factory.message(acc, category="news", subject="Seul", created_at=T0 + timedelta(hours=1))
    await run_pass(pool, redis, settings, T0 + DAY)
    await run_worker(queues.DIGEST)
    [got] = smtp.received
    assert got.message["Subject"] == "1 nouveau message dans votre boîte de réception: news"
    text = part(got.message, "plain")
    assert (
        "Voici votre récapitulatif quotidien\u00a0: 1 message non lu dans votre boîte de réception." in text
    )


# --- pages -------------------------------------------------------------------------------------


async def test_a_german_members_unsubscribe_page_is_in_german(
    client: Client, factory: Factory, settings: Settings, pool: asyncpg.Pool
) -> None:
    ann = await factory.account(locale="de_AT", digest_frequency="daily", newsletter=True)
    digest = tokens.sign(settings.secret, "unsubscribe", ann["id"], "digest")
    html = await (await client.get(f"/u/{digest}")).text()
    assert "E-Mails mit Zusammenfassungen Ihres Posteingangs abbestellen?" in html
    assert "Lieber weniger E-Mails?" in html
    token = tokens.sign(settings.secret, "unsubscribe", ann["id"], "newsletter")
    # The member's language wins over the browser's.
    resp = await client.get(f"/u/{token}", headers={"Accept-Language": "fr"})
    assert resp.status == 200 and resp.headers["Content-Language"] == "de"
    html = await resp.text()
    assert '<html lang="de">' in html
    assert "<title>Abbestellen</title>" in html
    assert "den Newsletter abbestellen?" in html
    assert "Alle Ihre E-Mail-Einstellungen verwalten" in html
    resp = await client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click", "via": "page"})
    html = await resp.text()
    assert "Sie sind abgemeldet" in html and "Sie erhalten den Newsletter nicht mehr." in html
    assert "Wieder abonnieren" in html
    # Subscribing again records the consent wording as the member read it: in German.
    nonce = html.split('name="nonce" value="')[1].split('"')[0]
    resp = await client.post(f"/u/{token}", data={"action": "resubscribe", "nonce": nonce})
    assert resp.status == 200, await resp.text()
    wording = await pool.fetchval(
        "SELECT wording FROM consents WHERE account_id = $1 ORDER BY id DESC LIMIT 1", ann["id"]
    )
    assert wording == i18n.gettext("de", consent.WORDING) and wording != consent.WORDING


async def test_a_german_members_preference_centre_is_in_german(
    client: Client, factory: Factory, settings: Settings, pool: asyncpg.Pool
) -> None:
    ann = await factory.account(locale="de", digest_frequency="daily", timezone="Europe/Berlin")
    token = tokens.sign(settings.secret, "preferences", ann["id"], "all")
    resp = await client.get(f"/preferences/{token}")
    html = await resp.text()
    assert "<h1>Ihre E-Mail-Einstellungen</h1>" in html
    assert "Zusammenfassungen Ihres Posteingangs: wie oft?" in html
    assert ">Wöchentlich</label>" in html and ">Sobald Nachrichten eintreffen</label>" in html
    assert ">Montag</option>" in html and ">Sonntag</option>" in html  # weekdays from babel
    wording = i18n.gettext(
        "de",
        "Send me the newsletter: news and information about the organisation, "
        "about once a month. I can unsubscribe at any time with the link in every issue.",
    )
    assert wording.startswith("Senden Sie mir den Newsletter") and wording in html
    assert "Einstellungen speichern" in html and "Save" not in html
    nonce = html.split('name="nonce" value="')[1].split('"')[0]
    form = {
        "nonce": nonce,
        "digest_frequency": "weekly",
        "digest_hour": "8",
        "digest_weekday": "3",
        "timezone": "Europe/Berlin",
        "newsletter": "yes",
    }
    resp = await client.post(f"/preferences/{token}", data=form)
    html = await resp.text()
    assert resp.status == 200, html
    assert "Gespeichert. Das hat sich geändert:" in html
    assert "<li>Wie oft: Wöchentlich</li>" in html and "<li>Wochentag: Mittwoch</li>" in html
    assert "<li>Newsletter: abonniert</li>" in html
    # The consent records the wording the member was shown, in German.
    assert await pool.fetchval("SELECT wording FROM consents WHERE account_id = $1", ann["id"]) == wording
    form.update(nonce=nonce, timezone="Mars/Olympus", digest_hour="25")
    resp = await client.post(f"/preferences/{token}", data=form)
    html = await resp.text()
    assert resp.status == 422 and "Es wurde nichts gespeichert. Bitte korrigieren Sie:" in html
    assert (
        "Wählen Sie eine Zeitzone aus der Liste." in html and "Wählen Sie eine Uhrzeit aus der Liste." in html
    )


async def test_pages_without_a_member_follow_accept_language_then_english(client: Client) -> None:
    resp = await client.get("/u/forged-token", headers={"Accept-Language": "es-MX,es;q=0.9,en;q=0.5"})
    assert resp.status == 404
    assert resp.headers["Content-Language"] == "es" and "Accept-Language" in resp.headers["Vary"]
    html = await resp.text()
    assert '<html lang="es">' in html and "Este enlace no es válido" in html
    resp = await client.get("/preferences/forged-token", headers={"Accept-Language": "pt-BR, xx"})
    assert resp.headers["Content-Language"] == "en" and "This link is not valid" in await resp.text()
    resp = await client.get("/confirm/forged-token")
    assert resp.headers["Content-Language"] == "en"


async def test_the_hosted_inbox_speaks_the_members_language(
    client: Client, factory: Factory, settings: Settings
) -> None:
    ann = await factory.account(locale="fr-FR", timezone="Europe/Paris")
    await factory.message(ann, subject="Bonjour", created_at=datetime(2026, 3, 2, 7, 30, tzinfo=UTC))
    token = tokens.sign(settings.secret, "inbox", ann["id"], "all")
    html = await (await client.get(f"/inbox/{token}")).text()
    assert "<h1>Votre boîte de réception</h1>" in html
    assert "1 message non lu. Heures de Europe/Paris." in html
    assert "Tout marquer comme lu" in html and "Archiver" in html and "2 mars 2026, 08:30" in html


async def test_the_component_carries_its_words_in_every_language(client: Client) -> None:
    script = await (await client.get("/static/inbox.js")).text()
    assert i18n.COMPONENT_SLOT not in script
    assert '"Mark all as read": "Alle als gelesen markieren"' in script
    assert '"Notifications, %(n)s unread": "Notifications, %(n)s non lues"' in script
    assert '"Load more": "Cargar más"' in script


# --- service e-mails ---------------------------------------------------------------------------


async def test_a_service_email_is_in_the_members_language(
    client: Client, pool: asyncpg.Pool, factory: Factory, smtp: MailSink, run_worker: Any
) -> None:
    await factory.account(external_id="m-de", email="jo@example.com", name="Jo", locale="es-ES")
    headers = await bearer(pool, "service")
    resp = await client.post(
        "/v1/service-messages",
        json={
            "account": "m-de",
            "template": "email_address_changed",
            "data": {"old_email": "old@example.com", "new_email": "jo@example.com"},
        },
        headers=headers,
    )
    assert resp.status == 202, await resp.text()
    await run_worker(queues.SERVICE)
    [got] = smtp.received
    assert got.message["Subject"] == "Se ha cambiado su dirección de correo"
    text = part(got.message, "plain")
    assert "Hola, Jo:" in text and "de old@example.com a jo@example.com" in text
    # `locale` belongs to delivery: data cannot set it.
    resp = await client.post(
        "/v1/service-messages",
        json={"account": "m-de", "template": "welcome", "data": {"locale": "de"}},
        headers=headers,
    )
    assert resp.status == 422 and (await resp.json())["errors"][0]["field"] == "data.locale"


def test_service_templates_have_per_language_variants_with_fallback(tmp_path: Path) -> None:
    directory = tmp_path / "mail"
    shutil.copytree(TEMPLATES_DIR, directory)
    (directory / "service" / "de").mkdir()
    for suffix, source in {
        ".subject.txt": "Willkommen im Verband, {{ account.name }}",
        ".txt": '{% extends "base.txt" %}{% block content %}Eigener Text für {{ account.name }}.{% endblock %}',
        ".html": '{% extends "base.html" %}{% block content %}<p>Eigener Text für {{ account.name }}.</p>{% endblock %}',
    }.items():
        (directory / "service" / "de" / f"welcome{suffix}").write_text(source)
    templates = Templates(directory)
    context = {"account": {"name": "Kim"}, "postal_address": "1 Main St"}
    german = templates.render("service/welcome", context, "de")
    assert german.subject == "Willkommen im Verband, Kim" and "Eigener Text für Kim." in german.text
    assert '<html lang="de">' in german.html
    # No variant for French: the shared template, in French; English as it was.
    french = templates.render("service/welcome", context, "fr")
    assert french.subject == "Bienvenue, Kim" and "Votre compte est prêt." in french.text
    assert templates.render("service/welcome", context, "en").subject == "Welcome, Kim"
    # A variant folder is not a template of its own.
    assert "service/de/welcome" not in templates.names("service")


# --- newsletters -------------------------------------------------------------------------------


async def test_newsletter_variants_go_to_members_of_their_language(
    client: Client,
    factory: Factory,
    pool: asyncpg.Pool,
    redis: ArqRedis,
    settings: Settings,
    run_worker: BurstWorker,
    smtp: MailSink,
) -> None:
    headers = await bearer(pool, "newsletters", name="marketing")
    de = await factory.account(newsletter=True, locale="de-CH", name="Uli Maier")
    fr = await factory.account(newsletter=True, locale="fr", name="Lou Martin")
    xx = await factory.account(newsletter=True, locale="xx", name="Ada Smith")
    created = await create_newsletter(
        client,
        headers,
        subject="News for {{ first_name }}",
        body="Hello **{{ name }}**",
        variants={"de": {"subject": "Neuigkeiten für {{ first_name }}", "body": "Hallo **{{ name }}**"}},
    )
    assert created["variants"] == {
        "de": {
            "subject": "Neuigkeiten für {{ first_name }}",
            "preheader": None,
            "body": "Hallo **{{ name }}**",
        }
    }
    await send_newsletter(client, headers, run_worker, pool, redis, settings, created["id"])
    got = {r.recipients[0]: r.message for r in smtp.received}
    german = got[de["email"]]
    assert german["Subject"] == "Neuigkeiten für Uli"
    text = part(german, "plain")
    assert (
        "Hallo **Uli Maier**" in text
        and "Sie erhalten diesen Newsletter, weil Sie ihn abonniert haben." in text
    )
    # No French variant: the default newsletter, with the footer in French.
    french = got[fr["email"]]
    assert french["Subject"] == "News for Lou"
    assert "Vous recevez cette newsletter parce que vous vous y êtes abonné." in part(french, "plain")
    assert got[xx["email"]]["Subject"] == "News for Ada"
    assert "You receive this newsletter" in part(got[xx["email"]], "plain")


async def test_newsletter_variants_are_validated(client: Client, pool: asyncpg.Pool) -> None:
    headers = await bearer(pool, "newsletters", name="marketing")
    resp = await client.post(
        "/v1/newsletters",
        json={"subject": "S", "body": "B", "variants": {"pt": {"subject": "S", "body": "B"}}},
        headers=headers,
    )
    assert resp.status == 422 and "variants" in (await resp.json())["errors"][0]["field"]
    resp = await client.post(
        "/v1/newsletters",
        json={"subject": "S", "body": "B", "variants": {"de": {"subject": "S"}}},
        headers=headers,
    )
    assert resp.status == 422
    resp = await client.post(
        "/v1/newsletters",
        json={"subject": "S", "body": "B", "variants": {"de": {"subject": "{{ nope.x }}", "body": "B"}}},
        headers=headers,
    )
    assert resp.status == 422
    assert [e["field"] for e in (await resp.json())["errors"]] == ["variants.de.subject"]
    created = await create_newsletter(client, headers, subject="S", body="B")
    resp = await client.patch(
        f"/v1/newsletters/{created['id']}",
        json={"variants": {"es": {"subject": "Hola", "preheader": "Este mes", "body": "Cuerpo"}}},
        headers=headers,
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["variants"]["es"] == {"subject": "Hola", "preheader": "Este mes", "body": "Cuerpo"}
    assert body["subject"] == "S"
    resp = await client.patch(f"/v1/newsletters/{created['id']}", json={"subject": "T"}, headers=headers)
    assert (await resp.json())["variants"] == body["variants"]  # absent: kept
    preview = await client.get(f"/v1/newsletters/{created['id']}/preview?locale=es", headers=headers)
    body = await preview.json()
    assert body["subject"] == "Hola" and "Recibe este boletín porque se suscribió a él." in body["text"]
    preview = await client.get(f"/v1/newsletters/{created['id']}/preview?locale=pt", headers=headers)
    assert preview.status == 422 and (await preview.json())["errors"][0]["field"] == "locale"
    resp = await client.patch(f"/v1/newsletters/{created['id']}", json={"variants": {}}, headers=headers)
    assert (await resp.json())["variants"] == {}
