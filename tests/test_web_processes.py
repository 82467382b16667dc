"""`notifier web --processes N --loop L`: several processes on one port, stopped together."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from notifier.embedded import free_port
from tests.conftest import Services


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == str(pid):
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_healthy(port: int, proc: subprocess.Popen[str]) -> None:
    for _ in range(300):
        assert proc.poll() is None, proc.communicate()[1]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("web did not answer")


@pytest.fixture
def web(services: Services) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_") and k != "PORT"},
        "NOTIFIER_DATABASE_URL": services.admin_url,
        "NOTIFIER_REDIS_URL": services.redis_url,
        "NOTIFIER_SECRET_KEY": "test-secret-test-secret-test-secret",
        "NOTIFIER_LOG_LEVEL": "INFO",
        # What production's start-up checks ask for (notifier.startup_checks).
        "NOTIFIER_PUBLIC_URL": "https://notifier.example.org",
        "NOTIFIER_SERVICE_FROM": "Example <service@example.org>",
        "NOTIFIER_NEWSLETTER_FROM": "Example News <news@example.org>",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "notifier.cli", "web", "--port", str(port), "--processes", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
            for child in _children(proc.pid):
                os.kill(child, signal.SIGKILL)
        proc.communicate(timeout=30)


def test_two_processes_share_the_port_and_stop_on_sigterm(web) -> None:
    proc, port = web
    _wait_healthy(port, proc)
    children = _children(proc.pid)
    assert len(children) == 2
    for _ in range(20):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert resp.status == 200
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert stderr.count("(uvloop loop)") == 2  # each child logs that it listens, on uvloop
    # Loopback unless configured (NOTIFIER_HOST, `--host`; the Procfile passes 0.0.0.0).
    assert stderr.count(f"web listening on http://127.0.0.1:{port} ") == 2
    assert not any(_alive(child) for child in children)


def test_a_child_that_dies_stops_the_set(web) -> None:
    proc, port = web
    _wait_healthy(port, proc)
    first, second = sorted(_children(proc.pid))
    os.kill(first, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGKILL
    assert not _alive(second)


def test_processes_below_one_is_one_line(services: Services) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "notifier.cli", "web", "--processes", "0"],
        env={
            **os.environ,
            "NOTIFIER_DATABASE_URL": services.admin_url,
            "NOTIFIER_REDIS_URL": services.redis_url,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "notifier: error: --processes must be at least 1"


def test_capture_is_refused_in_production(services: Services) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "notifier.cli", "web", "--port", str(free_port())],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")},
            "NOTIFIER_DATABASE_URL": services.admin_url,
            "NOTIFIER_REDIS_URL": services.redis_url,
            "NOTIFIER_SECRET_KEY": "test-secret-test-secret-test-secret",
            "NOTIFIER_CAPTURE_MAIL": "true",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "notifier: error: mail capture (NOTIFIER_CAPTURE_MAIL, or `notifier dev` without "
        "NOTIFIER_SMTP_HOST) is refused when NOTIFIER_ENV is production: set NOTIFIER_SMTP_HOST and "
        "unset NOTIFIER_CAPTURE_MAIL, or set NOTIFIER_ENV=development"
    )


def test_the_procfile_web_listens_on_all_interfaces_unless_configured() -> None:
    procfile = (Path(__file__).parent.parent / "Procfile").read_text()
    assert "web: notifier web --host ${NOTIFIER_HOST:-0.0.0.0}\n" in procfile
