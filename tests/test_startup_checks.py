"""Production start-up checks: https public URL, a real From domain, DKIM aligned with it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

import pytest
from pydantic import SecretStr

from notifier.settings import ConfigError, Settings
from notifier.startup_checks import check_production, findings
from tests.conftest import Services

GOOD: dict[str, Any] = {
    "env": "production",
    "secret_key": SecretStr("k" * 32),
    "public_url": "https://notifier.example.org",
    "service_from": "Example <service@example.org>",
    "newsletter_from": "Example News <news@mail.example.org>",
    "dkim_domain": "example.org",
}


def test_good_production_settings_pass_without_findings() -> None:
    assert findings(Settings(**GOOD)) == []


def test_outside_production_nothing_is_checked() -> None:
    assert findings(Settings(**{**GOOD, "env": "development", "public_url": "http://localhost:8000"})) == []


def test_http_public_url_is_refused_naming_rfc_8058() -> None:
    with pytest.raises(ConfigError, match=r"NOTIFIER_PUBLIC_URL is http://notifier.example.org.*RFC 8058"):
        check_production(Settings(**{**GOOD, "public_url": "http://notifier.example.org"}))


def test_localhost_from_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"NOTIFIER_SERVICE_FROM .*localhost") as caught:
        check_production(Settings(**{**GOOD, "service_from": "X <no-reply@localhost>"}))
    assert "\n" not in str(caught.value)


def test_misaligned_or_missing_dkim_is_a_one_line_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "notifier.startup")
    found = check_production(Settings(**{**GOOD, "dkim_domain": "mailer.example.net"}))
    assert [f.level for f in found] == ["warn", "warn"]
    assert "does not align with the NOTIFIER_SERVICE_FROM domain example.org" in caplog.text
    caplog.clear()
    check_production(Settings(**{**GOOD, "dkim_domain": None}))
    assert "NOTIFIER_DKIM_DOMAIN is not set" in caplog.text
    assert all("\n" not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("command", ["web", "worker"])
def test_web_and_worker_refuse_to_start(command: str, services: Services) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_") and k != "PORT"}
    result = subprocess.run(
        [sys.executable, "-m", "notifier.cli", command],
        env={
            **base,
            "NOTIFIER_DATABASE_URL": services.admin_url,
            "NOTIFIER_REDIS_URL": services.redis_url,
            "NOTIFIER_SECRET_KEY": "s" * 32,
            "NOTIFIER_PUBLIC_URL": "http://notifier.example.org",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("notifier: error: refused in production: NOTIFIER_PUBLIC_URL")
    assert "NOTIFIER_SERVICE_FROM is 'Notifier <no-reply@localhost>'" in lines[-1]
