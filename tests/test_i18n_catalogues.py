"""The gettext catalogues are complete and up to date (`scripts/i18n check` runs this file):
extracting the sources (babel.cfg) finds no message a catalogue lacks, and every language but
English translates every message, every plural form, with no fuzzy entry and the same
placeholders as the English."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from babel.messages import Catalog, extract, pofile
from babel.messages.frontend import parse_mapping_cfg

from notifier import i18n

ROOT = Path(__file__).resolve().parents[1]
TRANSLATED = [locale for locale in i18n.LOCALES if locale != i18n.DEFAULT]
PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def sources() -> set[str]:
    """Every msgid the sources mark, extracted as `scripts/i18n extract` does."""
    with (ROOT / "babel.cfg").open() as config:
        method_map, options_map = parse_mapping_cfg(config)  # type: ignore[no-untyped-call]
    keywords = {**extract.DEFAULT_KEYWORDS, "N_": None}
    found = extract.extract_from_dir(str(ROOT), method_map, options_map, keywords=keywords, comment_tags=())
    ids: set[str] = set()
    for _, _, message, _, _ in found:
        ids.add(message[0] if isinstance(message, tuple) else message)
    return ids


def catalogue(locale: str) -> Catalog:
    path = i18n.LOCALE_DIR / locale / "LC_MESSAGES" / f"{i18n.DOMAIN}.po"
    with path.open("rb") as source:
        return pofile.read_po(source, locale=locale)


def key(message: Any) -> str:
    """A message's msgid (the singular of a plural one)."""
    return str(message.id[0] if isinstance(message.id, tuple) else message.id)


def forms(value: Any) -> tuple[str, ...]:
    """A message's msgid or msgstr as a tuple of its forms."""
    return tuple(str(v) for v in value) if isinstance(value, tuple) else (str(value or ""),)


def msgids(cat: Catalog) -> set[str]:
    return {key(m) for m in cat if m.id}


@pytest.fixture(scope="module")
def extracted() -> set[str]:
    ids = sources()
    assert len(ids) > 100  # the extraction found the templates, the pages and the component
    return ids


@pytest.mark.parametrize("locale", i18n.LOCALES)
def test_each_catalogue_holds_every_message_of_the_sources(locale: str, extracted: set[str]) -> None:
    ids = msgids(catalogue(locale))
    assert sorted(extracted - ids) == [], "run scripts/i18n update, then translate"
    assert sorted(ids - extracted) == [], "messages no source uses: run scripts/i18n update"


def test_the_template_is_up_to_date(extracted: set[str]) -> None:
    with (i18n.LOCALE_DIR / "messages.pot").open("rb") as source:
        assert msgids(pofile.read_po(source)) == extracted


@pytest.mark.parametrize("locale", TRANSLATED)
def test_every_message_is_translated_and_none_is_fuzzy(locale: str) -> None:
    cat = catalogue(locale)
    untranslated, fuzzy, placeholders = [], [], []
    for message in cat:
        if not message.id:
            continue
        strings = forms(message.string)
        if len(strings) != (cat.num_plurals if isinstance(message.id, tuple) else 1) or not all(strings):
            untranslated.append(key(message))
        if message.fuzzy:
            fuzzy.append(key(message))
        english = set(PLACEHOLDER.findall(" ".join(forms(message.id))))
        if any(not set(PLACEHOLDER.findall(s)) <= english for s in strings) or (
            english - {"n"} and any(not english - {"n"} <= set(PLACEHOLDER.findall(s)) for s in strings)
        ):
            placeholders.append(key(message))
    assert untranslated == [] and fuzzy == [] and placeholders == []


@pytest.mark.parametrize("locale", i18n.LOCALES)
def test_each_catalogue_compiles_and_translates(locale: str) -> None:
    translations = i18n.translations(locale)
    expected = {"en": "Unsubscribe", "de": "Abbestellen", "fr": "Se désabonner", "es": "Darse de baja"}
    assert translations.gettext("Unsubscribe") == expected[locale]
    assert i18n.translations("xx").gettext("Unsubscribe") == "Unsubscribe"
