"""The one Jinja environment factory: every template the engine renders is found under
`templates/` through `environment(folder)`.

`templates/mail/` holds e-mails (layouts, digests, service messages, the newsletter layout),
`templates/pages/` the member pages, `templates/console/` the console and `templates/static/`
files served as they are. Marketing's own templates (newsletter subjects and bodies) are never
files: they compile in the sandbox of `notifier.mail.newsletter_render`, which passes its
sandboxed class here.

Every environment speaks gettext (the Jinja i18n extension, new style, trimmed): templates mark
their texts with `{% trans %}` / `_()` and plural forms with `{% trans count=n %}…{% pluralize %}`.
An environment speaks one language (`locale`, a global its templates see; English by default):
a renderer keeps one per language it writes (notifier/i18n.py chooses the language). The
`number` filter formats a number for that language; `when` an ISO instant for that language in
the render context's `time_zone` ("Mo., 1. Juni, 15:00").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from notifier import i18n

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
STATIC_DIR = TEMPLATES_DIR / "static"


def environment(
    folder: str | None,
    *,
    html: bool = True,
    env_class: type[jinja2.Environment] = jinja2.Environment,
    locale: str = i18n.DEFAULT,
    **options: Any,
) -> jinja2.Environment:
    """A Jinja environment over `templates/<folder>` (no loader when `folder` is None, for
    templates compiled from strings). `StrictUndefined` always: a missing variable is an error
    naming it, never an empty string. With `html`, `.html` templates (and, without a folder,
    every template) are autoescaped. Texts marked for translation read in `locale` (one of
    `i18n.LOCALES`). `options` override the rest (trim_blocks, caching, ...)."""
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
        "extensions": ["jinja2.ext.i18n"],
    }
    settings.update(options)
    env = env_class(**settings)
    env.policies["ext.i18n.trimmed"] = True
    env.install_gettext_translations(i18n.translations(locale), newstyle=True)  # type: ignore[attr-defined]
    env.globals["locale"] = i18n.normalise(locale)
    env.filters["number"] = _number
    env.filters["when"] = _when
    return env


@jinja2.pass_context
def _number(context: jinja2.runtime.Context, value: float) -> str:
    return i18n.format_number(value, context.get("locale") or i18n.DEFAULT)


@jinja2.pass_context
def _when(context: jinja2.runtime.Context, instant: str) -> str:
    return i18n.format_instant(
        instant, context.get("time_zone") or "UTC", context.get("locale") or i18n.DEFAULT
    )
