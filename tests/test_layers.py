"""The layers of docs/architecture.md, checked on the source: the domain imports neither aiohttp
nor arq nor a front door; mail sits under the domain; nothing imports in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FRONT_DOORS = (
    "notifier.api",
    "notifier.pages",
    "notifier.console",
    "notifier.member",
    "notifier.cli",
    "notifier.app",
    "notifier.dev",
    "workers",
)
# The domain and what it stands on: no web framework, no job queue, no front door.
DOMAIN = (
    "accounts",
    "answers",
    "audit",
    "bounces",
    "consent",
    "db",
    "digest",
    "digest_email",
    "errors",
    "idempotency_records",
    "inbox",
    "netguard",
    "newsletter",
    "newsletter_test_send",
    "preferences",
    "providers",
    "ratelimit",
    "queues",
    "reports",
    "schedule",
    "selftest",
    "serialize",
    "service",
    "settings",
    "staff",
    "startup_checks",
    "suppression",
    "templating",
    "i18n",
    "tokens",
    "validation",
    "verp",
    "webhooks",
    "heartbeat",
    "embedded",
    "member_import",
    "import_file",
    "brand",
    "newsletter_templates",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


SOURCES = {module_name(p): p for d in ("notifier", "workers") for p in (ROOT / d).rglob("*.py")}


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("module", [f"notifier.{m}" for m in DOMAIN])
def test_the_domain_imports_no_framework_and_no_front_door(module: str) -> None:
    used = imports(SOURCES[module])
    bad = sorted(n for n in used if _under(n, ("aiohttp", "arq", *FRONT_DOORS)))
    assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize("module", sorted(m for m in SOURCES if m.startswith("notifier.mail")))
def test_mail_sits_under_the_domain(module: str) -> None:
    used = imports(SOURCES[module])
    domain_above = tuple(
        f"notifier.{m}"
        for m in (
            "accounts",
            "consent",
            "digest",
            "digest_email",
            "inbox",
            "newsletter",
            "newsletter_test_send",
            "preferences",
            "service",
        )
    )
    bad = sorted(n for n in used if _under(n, ("aiohttp", *FRONT_DOORS, *domain_above)))
    assert not bad, f"{module} imports {bad}"


def test_no_import_cycle_at_module_level() -> None:
    """Top-level imports between our modules form no cycle (imports inside functions may)."""
    graph: dict[str, set[str]] = {}
    for name, path in SOURCES.items():
        deps: set[str] = set()
        for stmt in ast.parse(path.read_text()).body:
            if isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.level == 0:
                candidates = [stmt.module] + [f"{stmt.module}.{a.name}" for a in stmt.names]
            elif isinstance(stmt, ast.Import):
                candidates = [a.name for a in stmt.names]
            else:
                continue
            deps.update(c for c in candidates if c in SOURCES and c != name)
        graph[name] = deps
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        seen[node] = 1
        stack.append(node)
        for dep in graph[node]:
            if seen.get(dep) == 1:
                cycle = [*stack[stack.index(dep) :], dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in seen:
                visit(dep)
        stack.pop()
        seen[node] = 2

    for name in sorted(graph):
        if name not in seen:
            visit(name)
