"""A newsletter body as templates: Markdown to HTML and HTML to text with marketing's Jinja tags
kept intact, and the rewriting of its links for click counting (`notifier.clicks`)."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping

from markdown_it import MarkdownIt

JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_MARKDOWN = MarkdownIt("commonmark", {"html": True, "linkify": False}).enable("table")


def _protect(source: str) -> tuple[str, list[str]]:
    """Replace Jinja tags by inert placeholders so Markdown cannot escape their quotes."""
    found: list[str] = []

    def swap(match: re.Match[str]) -> str:
        found.append(match.group(0))
        return f"NOTIFIERJINJA{len(found) - 1}X"

    return JINJA.sub(swap, source), found


def _restore(text: str, found: list[str]) -> str:
    for i, tag in enumerate(found):
        text = text.replace(f"NOTIFIERJINJA{i}X", tag)
    return text


def markdown_to_html(source: str) -> str:
    """Markdown (with Jinja tags left intact) to an HTML fragment."""
    protected, found = _protect(source)
    return _restore(_MARKDOWN.render(protected), found)


_BLOCK_END = re.compile(r"</(p|h[1-6]|li|tr|div|table|blockquote|pre)>|<br\s*/?>", re.IGNORECASE)
_TAG = re.compile(r"<[^>]+>")
_HREF = re.compile(r"<a\s[^>]*href=\"([^\"]+)\"[^>]*>(.*?)</a>", re.IGNORECASE | re.DOTALL)


def html_to_text(fragment: str) -> str:
    """A readable plain-text version of an HTML fragment: links as `text (url)`, blocks as lines."""
    text = _HREF.sub(lambda m: f"{m.group(2)} ({m.group(1)})", fragment)
    text = _BLOCK_END.sub("\n", text)
    text = _TAG.sub("", text)
    lines = [" ".join(html.unescape(line).split()) for line in text.splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip() + "\n"


# Click counting (notifier.clicks): the links of a body that can be counted, and their rewriting.
MAX_TRACKED_LINKS = 500
_ANCHOR = re.compile(r"<a\b[^>]*>", re.IGNORECASE)
_ANCHOR_HREF = re.compile(r"""(\bhref\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
TRACKABLE = re.compile(r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s\x00-\x1f\x7f\"'<>{}]+$")
_TEXT_URL = re.compile(r"https?://[^\s<>()\[\]\"']+", re.IGNORECASE)


def anchor_hrefs(fragment: str) -> list[str]:
    """The `href` of every `<a>` tag of an HTML fragment, unescaped, in order."""
    found = []
    for tag in _ANCHOR.finditer(fragment):
        href = _ANCHOR_HREF.search(tag.group(0))
        if href:
            found.append(html.unescape(href.group(3)))
    return found


def track_html(fragment: str, targets: Mapping[str, str]) -> str:
    """`fragment` with each `<a href>` found in `targets` pointing to its counting address."""

    def anchor(tag: re.Match[str]) -> str:
        def href(m: re.Match[str]) -> str:
            target = targets.get(html.unescape(m.group(3)))
            return m.group(0) if target is None else f'{m.group(1)}"{html.escape(target)}"'

        return _ANCHOR_HREF.sub(href, tag.group(0), count=1)

    return _ANCHOR.sub(anchor, fragment)


def track_text(text: str, targets: Mapping[str, str]) -> str:
    """The text part with each address found in `targets` (as written) replaced by its counting one."""
    return _TEXT_URL.sub(lambda m: targets.get(m.group(0), m.group(0)), text)
