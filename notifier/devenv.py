"""`.notifier/env`: how the other commands reach a running `notifier dev` with nothing exported.

`notifier dev` writes the settings it chose (embedded database and Redis URLs, the capture SMTP
server, the public URL, `NOTIFIER_ENV=development`) to `env` in its data folder and removes the
file when it stops. A command in a second terminal (`notifier api-key create`, `notifier digests
run`, a `notifier worker`, …) that has no `NOTIFIER_DATABASE_URL` and no `NOTIFIER_REDIS_URL`
reads that file after `.env`; variables set in the environment still win over both.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from notifier.settings import ConfigError, Settings, load_settings

FILE_NAME = "env"


def env_path(data_dir: Path) -> Path:
    """Where `notifier dev` describes itself for the other commands."""
    return data_dir / FILE_NAME


def write(data_dir: Path, values: Mapping[str, object]) -> Path:
    """Write `values` (setting name → value) as `NOTIFIER_*` lines, readable only by the owner.
    It may hold a database URL: it is a file for this machine's user, never a log."""
    path = env_path(data_dir)
    lines = [
        "# Written by `notifier dev` while it runs; removed when it stops. The other notifier",
        "# commands read it when NOTIFIER_DATABASE_URL and NOTIFIER_REDIS_URL are not set.",
        *(f"NOTIFIER_{name.upper()}={value}" for name, value in values.items()),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("\n".join(lines) + "\n")
    return path


def remove(data_dir: Path) -> None:
    """Forget the file (on a clean stop): the servers it names are gone."""
    env_path(data_dir).unlink(missing_ok=True)


def _answers(url: str) -> bool:
    """Whether a TCP server listens where `url` points (a Unix socket URL counts as answering:
    the connection itself then says what is wrong)."""
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        return True
    with contextlib.suppress(OSError), socket.create_connection((parts.hostname, parts.port), 1):
        return True
    return False


def cli_settings() -> Settings:
    """Settings for a CLI command: the environment and `.env`, and, when neither names a database
    or Redis, the file of a running `notifier dev`. Raises ConfigError when that file names servers
    that no longer answer (`notifier dev` was killed)."""
    settings = load_settings()
    path = env_path(settings.data_dir)
    if settings.database_url or settings.redis_url or not path.is_file():
        return settings
    settings = load_settings(_env_file=(".env", str(path)))
    if settings.redis_url and not _answers(settings.redis_url):
        raise ConfigError(
            f"the servers of `notifier dev` named in {path} do not answer: start `notifier dev` "
            "(or set NOTIFIER_DATABASE_URL and NOTIFIER_REDIS_URL)"
        )
    print(f"notifier: using the servers of `notifier dev` ({path})", file=sys.stderr)
    return settings
