"""`notifier dev` as a new user runs it: a process in an empty folder, then Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from notifier.embedded import free_port
from tests.conftest import Services


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Accept": "application/json", **(headers or {})})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310 (a loopback URL)
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _wait_ready(proc: subprocess.Popen[str], base: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"notifier dev exited early:\n{proc.stdout.read() if proc.stdout else ''}")
        try:
            if _get(f"{base}/readyz")[0] == 200:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.3)
    pytest.fail("notifier dev did not become ready")


def _run_dev(folder: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_") and k != "PORT"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "notifier.cli", "dev", "--port", str(port)],
        cwd=folder,
        env={**base_env, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, f"http://127.0.0.1:{port}"


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def _check_engine(base: str, folder: Path) -> None:
    # The self-test e-mail went through the outbox and the worker to the capture server.
    deadline = time.monotonic() + 30
    messages: list[dict[str, str]] = []
    while time.monotonic() < deadline and not messages:
        messages = _get(f"{base}/dev/mailbox")[1]["items"]
        time.sleep(0.2)
    assert [m["subject"] for m in messages] == ["notifier is running"]
    assert list((folder / ".notifier" / "mail").glob("*.eml"))
    # A development API key is kept for trying the API.
    key = (folder / ".notifier" / "dev_api_key").read_text().strip()
    status, body = _get(f"{base}/v1/accounts/nobody", {"Authorization": f"Bearer {key}"})
    assert (status, body["status"]) == (404, 404)


def test_dev_starts_embedded_services_and_stops_cleanly(tmp_path: Path) -> None:
    proc, base = _run_dev(tmp_path, {})
    try:
        _wait_ready(proc, base)
        _check_engine(base, tmp_path)
    finally:
        out = _stop(proc)
    assert "notifier dev is running" in out and "PostgreSQL  embedded" in out and "stopped." in out
    assert "Traceback" not in out
    assert not (tmp_path / ".notifier" / "postgres" / "postmaster.pid").exists()  # PostgreSQL stopped

    # A restart keeps the data: same key, no new migrations, the earlier mail still listed.
    proc, base = _run_dev(tmp_path, {})
    try:
        _wait_ready(proc, base)
        key = (tmp_path / ".notifier" / "dev_api_key").read_text().strip()
        assert _get(f"{base}/v1/accounts/nobody", {"Authorization": f"Bearer {key}"})[0] == 404
    finally:
        out = _stop(proc)
    assert "Migrations  0 applied now" in out


def test_dev_uses_configured_services(tmp_path: Path, database: str, services: Services) -> None:
    proc, base = _run_dev(
        tmp_path, {"NOTIFIER_DATABASE_URL": database, "NOTIFIER_REDIS_URL": services.redis_url}
    )
    try:
        _wait_ready(proc, base)
        _check_engine(base, tmp_path)
    finally:
        out = _stop(proc)
    assert "PostgreSQL  NOTIFIER_DATABASE_URL" in out and "Redis       NOTIFIER_REDIS_URL" in out
    assert not (tmp_path / ".notifier" / "postgres").exists()
