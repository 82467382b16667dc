"""`notifier dev` as a new user runs it: a process in an empty folder, then Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from notifier import devenv
from notifier.embedded import EmbeddedRedis, free_port
from notifier.settings import ConfigError
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
    # A development API key is kept for trying the API.
    key = (folder / ".notifier" / "dev_api_key").read_text().strip()
    status, body = _get(f"{base}/v1/accounts/nobody", {"Authorization": f"Bearer {key}"})
    assert (status, body["status"]) == (404, 404)
    # The self-test e-mail went through the outbox and the worker to the capture server; the
    # mailbox shows it to that (admin) key, and nobody without one.
    deadline = time.monotonic() + 30
    messages: list[dict[str, str]] = []
    while time.monotonic() < deadline and not messages:
        messages = _get(f"{base}/dev/mailbox", {"Authorization": f"Bearer {key}"})[1]["items"]
        time.sleep(0.2)
    assert [m["subject"] for m in messages] == ["notifier is running"]
    assert list((folder / ".notifier" / "mail").glob("*.eml"))
    with urllib.request.urlopen(f"{base}/dev/mailbox", timeout=5) as resp:  # noqa: S310 (loopback)
        assert resp.url == f"{base}/console/sign-in?next=/console/mailbox"
        assert "notifier is running" not in resp.read().decode()


def _cli(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A `notifier` command run from `folder` in a second terminal: nothing NOTIFIER_* exported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_") and k != "PORT"}
    return subprocess.run(
        [sys.executable, "-m", "notifier.cli", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _check_second_terminal(folder: Path) -> str:
    """The other commands reach the servers of the running `notifier dev` with nothing exported;
    returns the Redis URL they were given."""
    env_file = folder / ".notifier" / "env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    created = _cli(folder, "api-key", "create", "--name", "x", "--scope", "accounts")
    assert created.returncode == 0, created.stderr
    assert "created API key" in created.stdout and "using the servers of `notifier dev`" in created.stderr
    digests = _cli(folder, "digests", "run")
    assert digests.returncode == 0, digests.stderr
    assert digests.stdout.startswith("due accounts: 0")
    values = dict(
        line.split("=", 1) for line in env_file.read_text().splitlines() if not line.startswith("#")
    )
    return values["NOTIFIER_REDIS_URL"]


@pytest.fixture
def home() -> Iterator[Path]:
    """A project folder for `notifier dev` that every user can traverse: as root, pgserver runs
    PostgreSQL as its own user, which cannot enter pytest's 0700 /tmp/pytest-of-root."""
    folder = Path(tempfile.mkdtemp(prefix="notifier-dev-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_dev_starts_embedded_services_and_stops_cleanly(home: Path) -> None:
    tmp_path = home
    proc, base = _run_dev(tmp_path, {})
    try:
        _wait_ready(proc, base)
        _check_engine(base, tmp_path)
        redis_url = _check_second_terminal(tmp_path)
        # The first console user of a real deployment comes from the command line.
        added = _cli(
            tmp_path, "console-user", "add", "Ada@Example.org", "--name", "Ada", "--role", "marketing"
        )
        assert (
            added.returncode == 0
            and "added console user ada@example.org (marketing, invited)" in added.stdout
        )
        listed = _cli(tmp_path, "console-user", "list").stdout
        assert "dev-admin@example.com" in listed and "ada@example.org" in listed
        again = _cli(tmp_path, "console-user", "add", "ada@example.org", "--name", "A", "--role", "admin")
        assert again.returncode == 2 and "already a console user" in again.stderr
    finally:
        out = _stop(proc)
    assert "notifier dev is running" in out and "PostgreSQL  embedded" in out and "stopped." in out
    assert "sign in as dev-admin@example.com (admin)" in out
    assert "Traceback" not in out
    assert not (tmp_path / ".notifier" / "postgres" / "postmaster.pid").exists()  # PostgreSQL stopped
    # Stopped, it is forgotten: a command says what to do instead of waiting on dead servers.
    assert not (tmp_path / ".notifier" / "env").exists()
    after = _cli(tmp_path, "api-key", "list")
    assert after.returncode == 2 and "NOTIFIER_DATABASE_URL is not set" in after.stderr

    # A restart keeps the data (same key, no new migrations) and Redis keeps its port.
    proc, base = _run_dev(tmp_path, {})
    try:
        _wait_ready(proc, base)
        key = (tmp_path / ".notifier" / "dev_api_key").read_text().strip()
        assert _get(f"{base}/v1/accounts/nobody", {"Authorization": f"Bearer {key}"})[0] == 404
        assert _check_second_terminal(tmp_path) == redis_url
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


def test_cli_reads_the_dev_file_only_when_no_url_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database: str, services: Services
) -> None:
    for name in [k for k in os.environ if k.startswith("NOTIFIER_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    devenv.write(
        Path(".notifier"),
        {"env": "development", "database_url": database, "redis_url": services.redis_url},
    )
    got = devenv.cli_settings()
    assert (got.env, got.database_url, got.redis_url) == ("development", database, services.redis_url)
    # Anything set in the environment is the user's choice: the file is not read at all.
    monkeypatch.setenv("NOTIFIER_REDIS_URL", "redis://elsewhere.example:6379/0")
    got = devenv.cli_settings()
    assert (got.env, got.database_url) == ("production", None)
    monkeypatch.delenv("NOTIFIER_REDIS_URL")
    # A file left by a `notifier dev` that was killed names servers that are gone: one clear line.
    devenv.write(
        Path(".notifier"), {"database_url": database, "redis_url": f"redis://127.0.0.1:{free_port()}/0"}
    )
    with pytest.raises(ConfigError, match="do not answer: start `notifier dev`"):
        devenv.cli_settings()


def test_embedded_redis_keeps_its_port_across_restarts(tmp_path: Path) -> None:
    first = EmbeddedRedis.start(tmp_path / "redis")
    first.stop()
    second = EmbeddedRedis.start(tmp_path / "redis")
    try:
        assert second.port == first.port
    finally:
        second.stop()
    # Taken by something else meanwhile: another port, remembered from then on.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first.port))
        third = EmbeddedRedis.start(tmp_path / "redis")
        third.stop()
    assert third.port != first.port
    assert (tmp_path / "redis" / "port").read_text().strip() == str(third.port)


def test_dev_refuses_to_capture_mail_in_production(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_") and k != "PORT"}
    result = subprocess.run(
        [sys.executable, "-m", "notifier.cli", "dev", "--port", str(free_port())],
        cwd=tmp_path,
        env={**env, "NOTIFIER_ENV": "production", "NOTIFIER_SECRET_KEY": "s" * 32},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("notifier: error: mail capture") and result.stderr.count("\n") == 1
    assert not (tmp_path / ".notifier" / "postgres").exists()  # refused before starting anything
