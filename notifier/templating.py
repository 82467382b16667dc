"""The one Jinja environment factory: every template the engine renders is found under
`templates/` through `environment(folder)`.

`templates/mail/` holds e-mails (layouts, digests, service messages, the newsletter layout),
`templates/pages/` the member pages, `templates/console/` the console and `templates/static/`
files served as they are. Marketing's own templates (newsletter subjects and bodies) are never
files: they compile in the sandbox of `notifier.mail.newsletter_render`, which passes its
sandboxed class here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
STATIC_DIR = TEMPLATES_DIR / "static"


def environment(
    folder: str | None,
    *,
    html: bool = True,
    env_class: type[jinja2.Environment] = jinja2.Environment,
    **options: Any,
) -> jinja2.Environment:
    """A Jinja environment over `templates/<folder>` (no loader when `folder` is None, for
    templates compiled from strings). `StrictUndefined` always: a missing variable is an error
    naming it, never an empty string. With `html`, `.html` templates (and, without a folder,
    every template) are autoescaped. `options` override the rest (trim_blocks, caching, ...)."""
    loader = jinja2.FileSystemLoader(TEMPLATES_DIR / folder) if folder is not None else None
    autoescape: Any = (
        (jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False) if folder else True)
        if html
        else False
    )
    settings: dict[str, Any] = {
        "loader": loader,
        "autoescape": autoescape,
        "undefined": jinja2.StrictUndefined,
    }
    settings.update(options)
    return env_class(**settings)
