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

import functools
from pathlib import Path
from typing import Any

import jinja2
from babel.support import Translations
from jinja2 import nodes
from jinja2.ext import InternationalizationExtension

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
        "extensions": [_TranslatedWhenCompiled],
    }
    settings.update(options)
    env = env_class(**settings)
    env.policies["ext.i18n.trimmed"] = True
    catalogue = i18n.translations(locale)
    env.install_gettext_translations(catalogue, newstyle=True)  # type: ignore[attr-defined]
    env.extend(compiled_catalogue=catalogue)
    env.globals["locale"] = i18n.normalise(locale)
    env.filters["number"] = functools.partial(i18n.format_number, locale=env.globals["locale"])
    env.filters["when"] = _when
    return env


class _TranslatedWhenCompiled(InternationalizationExtension):
    """The i18n extension, with each `{% trans %}` block that has no plural translated when the
    template compiles: an environment speaks one language, so its templates carry their sentences
    already in it and render them without a gettext call (a digest has some twenty). Variables
    are filled (and, in HTML, escaped) as the new-style gettext would; plurals and `_()` are
    translated when rendered."""

    def _make_node(
        self,
        singular: str,
        plural: str | None,
        context: str | None,
        variables: dict[str, nodes.Expr],
        plural_expr: nodes.Expr | None,
        vars_referenced: bool,
        num_called_num: bool,
    ) -> nodes.Output:
        catalogue: Translations | None = getattr(self.environment, "compiled_catalogue", None)
        if catalogue is None or plural_expr is not None or context is not None:
            return super()._make_node(
                singular, plural, context, variables, plural_expr, vars_referenced, num_called_num
            )
        text = catalogue.gettext(singular)
        if not variables:
            return nodes.Output([nodes.TemplateData(text % {})])
        pairs = [nodes.Pair(nodes.Const(key), value) for key, value in variables.items()]
        return nodes.Output([nodes.Mod(nodes.MarkSafeIfAutoescape(nodes.Const(text)), nodes.Dict(pairs))])


@jinja2.pass_context
def _when(context: jinja2.runtime.Context, instant: str) -> str:
    return i18n.format_instant(
        instant, context.get("time_zone") or "UTC", context.get("locale") or i18n.DEFAULT
    )
