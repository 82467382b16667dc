"""Languages: which of the shipped languages a member or a browser gets, the gettext catalogues of
every text the engine writes itself, and dates and numbers formatted for a language (babel).

The catalogues are `notifier/locale/<lang>/LC_MESSAGES/messages.po`, extracted from the Python
sources, the templates and the inbox component (`babel.cfg`; `scripts/i18n` extracts and updates,
docs/i18n.md says how to add a language). They are compiled in memory when first used, once per
process: a clean checkout or `pip install -e .` needs no build step, and no `.mo` file is kept.

English is the source language: an untranslated message (or an unknown language) reads English.
"""

from __future__ import annotations

import io
import json
import re
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

import babel
from babel import dates, numbers
from babel.messages import extract, mofile, pofile
from babel.support import Translations

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
DOMAIN = "messages"
DEFAULT = "en"
# The languages shipped, in the order pages list them; one catalogue each under LOCALE_DIR.
LOCALES: tuple[str, ...] = ("en", "de", "fr", "es")
# Whose conventions English dates follow: the organisation writes British English ("Mon 1 Jun").
_FORMAT_LOCALES = {"en": "en_GB"}


def N_(message: str) -> str:
    """Mark `message` for extraction without translating it (module constants translated later)."""
    return message


def normalise(tag: str | None) -> str:
    """The shipped language a locale tag asks for (`de-DE`, `de_AT`, `DE` → `de`), English for
    an empty, malformed or unsupported tag (`xx`, `pt-BR`). Never raises."""
    if not tag:
        return DEFAULT
    try:
        language = babel.core.parse_locale(tag.strip().replace("-", "_"))[0].lower()
    except ValueError:
        return DEFAULT
    return language if language in LOCALES else DEFAULT


_WEIGHTED = re.compile(
    r"^\s*([A-Za-z]{1,8}(?:[-_][A-Za-z0-9]{1,8})*|\*)\s*(?:;\s*q\s*=\s*([0-9.]{1,5}))?\s*$"
)


def negotiate(accept_language: str | None) -> str | None:
    """The shipped language a browser's `Accept-Language` prefers (quality values honoured,
    regional tags matched to their language by babel), or None when it names none of them."""
    if not accept_language:
        return None
    weighted: list[tuple[float, int, str]] = []
    for position, part in enumerate(accept_language[:1000].split(",")[:30]):
        match = _WEIGHTED.match(part)
        if match is None or match[1] == "*":
            continue
        try:
            quality = float(match[2]) if match[2] is not None else 1.0
        except ValueError:
            continue
        if quality > 0:
            weighted.append((-quality, position, match[1].replace("-", "_")))
    for _, _, tag in sorted(weighted):
        # Each tag in the browser's order, then its language alone (babel matches `de_DE` to
        # `de` only through its aliases): `de-CH, fr;q=0.5` is German, not French.
        found: str | None = babel.negotiate_locale([tag, tag.split("_")[0].lower()], list(LOCALES))
        if found is not None:
            return found
    return None


def choose(member_locale: str | None = None, accept_language: str | None = None) -> str:
    """The language of a page or e-mail: the member's own locale when there is a member (an
    unsupported one gets English), else what the browser prefers, else English."""
    if member_locale is not None:
        return normalise(member_locale)
    return negotiate(accept_language) or DEFAULT


@lru_cache(maxsize=len(LOCALES))
def translations(locale: str) -> Translations:
    """The catalogue of a shipped language, compiled from its `.po` file on first use (per
    process). An unknown language gets English (the messages themselves)."""
    language = normalise(locale)
    path = LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"
    with path.open("rb") as source:
        catalog = pofile.read_po(source, locale=language, domain=DOMAIN)
    compiled = io.BytesIO()
    mofile.write_mo(compiled, catalog, use_fuzzy=False)
    compiled.seek(0)
    return Translations(compiled, domain=DOMAIN)


def gettext(locale: str, message: str) -> str:
    """`message` in `locale` (English when not translated)."""
    return translations(locale).gettext(message)


# --- dates and numbers -----------------------------------------------------------------------


@lru_cache(maxsize=4 * len(LOCALES))
def _pattern(locale: str, with_year: bool) -> tuple[babel.Locale, str]:
    """A date and 24-hour time pattern in the order and words of `locale`: weekday, day and
    month ("Mon 1 Jun, 15:00", "Mo., 1. Juni, 15:00", "lun. 1 juin, 15:00", "lun, 1 jun, 15:00"),
    or with the year the locale's medium date ("2 Mar 2026, 08:30", "02.03.2026, 08:30")."""
    data = babel.Locale.parse(_FORMAT_LOCALES.get(locale, locale))
    date_part = data.date_formats["medium"].pattern if with_year else data.datetime_skeletons["MMMEd"].pattern
    combined = str(data.datetime_formats["medium"]).replace("{1}", date_part).replace("{0}", "HH:mm")
    return data, combined


def format_when(at: datetime, timezone: str, locale: str, *, with_year: bool = False) -> str:
    """When a message arrived, in the member's time zone and language: as a digest shows it
    (weekday, day, month, time), or `with_year` as the inbox page shows it."""
    data, pattern = _pattern(normalise(locale), with_year)
    return dates.format_datetime(at, pattern, tzinfo=ZoneInfo(timezone), locale=data)


# Digests format the same few instants and counts many times over (text and HTML, a pass's many
# members): remembered, a digest renders in a fraction of the time babel takes to format anew.
@lru_cache(maxsize=16384)
def format_instant(instant: str, timezone: str, locale: str) -> str:
    """`format_when` of an ISO 8601 instant (`2026-06-01T13:00:00Z`), remembered."""
    return format_when(datetime.fromisoformat(instant), timezone, locale)


@lru_cache(maxsize=4096)
def format_number(value: float, locale: str) -> str:
    """A number with the grouping and decimal signs of `locale` ("1,234" / "1.234" / "1 234")."""
    if isinstance(value, int) and 0 <= value < 1000:
        return str(value)  # no grouping below a thousand, and every shipped language writes 0-9
    language = normalise(locale)
    return numbers.format_decimal(value, locale=_FORMAT_LOCALES.get(language, language))


# --- the inbox component -----------------------------------------------------------------------


COMPONENT_SLOT = "{} /* notifier:catalogues */"


def component_script(source: str) -> str:
    """The `<notifier-inbox>` script with its catalogues written in: for each shipped language
    but English, msgid → text of every message the script marks (`gettext(...)`, `N_(...)`),
    from the same catalogues as the rest. Raises ValueError when the script has no slot."""
    if COMPONENT_SLOT not in source:
        raise ValueError("the component script has no catalogue slot")
    found = extract.extract("javascript", io.BytesIO(source.encode()), keywords={"gettext": None, "N_": None})
    messages = sorted({str(message) for _, message, _, _ in found})
    catalogues = {
        locale: {m: translations(locale).gettext(m) for m in messages}
        for locale in LOCALES
        if locale != DEFAULT
    }
    return source.replace(COMPONENT_SLOT, json.dumps(catalogues, ensure_ascii=False, sort_keys=True))
