"""`/docs`: the OpenAPI document as one self-contained HTML page (no scripts, no network).

A table of contents by tag, each operation with its parameters, request body and answers, every
schema linked to its section (`$ref` becomes a link), the examples of the document, and the
document's `code` spans set as code rather than shown with their backticks.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:62rem;margin:2rem auto;padding:0 1rem;color:#1a1a1a}
h2{margin-top:2.5rem;border-bottom:1px solid #ccc}
nav ul{columns:2;padding-left:1.2rem}nav li{break-inside:avoid}
.op,.schema{margin:1.5rem 0;padding:.5rem 1rem;border-left:4px solid #36c;background:#f7f9fc}
.schema{border-left-color:#999}
.m{font-weight:700;font-family:monospace;margin-right:.5rem}
code,pre{font-family:ui-monospace,monospace;font-size:13px}
pre{background:#fff;border:1px solid #ddd;padding:.5rem;overflow:auto;max-height:20rem}
table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}
"""

_CODE = re.compile(r"`([^`]+)`")
_REF = "#/components/schemas/"


def _e(value: Any) -> str:
    return html.escape(str(value))


def prose(value: str) -> str:
    """`value` escaped, its `code` spans as <code>."""
    return _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", _e(value))


def _anchor(name: str) -> str:
    return "schema-" + re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _link(ref: str) -> str:
    name = ref.removeprefix(_REF)
    return f'<a href="#{_anchor(name)}">{_e(name)}</a>'


def shape(schema: Any) -> str:
    """A schema in a few words, its references as links."""
    if not isinstance(schema, dict) or not schema:
        return "any"
    if "$ref" in schema:
        return _link(schema["$ref"])
    if "anyOf" in schema:
        return " or ".join(shape(s) for s in schema["anyOf"])
    if "const" in schema:
        return f"<code>{_e(json.dumps(schema['const']))}</code>"
    if "enum" in schema:
        return "one of " + ", ".join(f"<code>{_e(json.dumps(v))}</code>" for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {shape(schema.get('items'))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {shape(schema['additionalProperties'])}"
    limits = [
        f"{word} {schema[key]}"
        for key, word in (
            ("minimum", "≥"),
            ("maximum", "≤"),
            ("minLength", "length ≥"),
            ("maxLength", "length ≤"),
        )
        if key in schema
    ]
    out = _e(kind) + (f" ({_e(schema['format'])})" if "format" in schema else "")
    return out + (f", {_e(', '.join(limits))}" if limits else "")


def _meaning(description: str, example: Any) -> str:
    """A table cell: the description, and the example on a line of its own."""
    lines = [prose(description)] if description else []
    if example is not None:
        lines.append(f"e.g. <code>{_e(example)}</code>")
    return "<br>".join(lines)


def _example(value: Any) -> str:
    return f"<pre>{_e(json.dumps(value, indent=2, ensure_ascii=False))}</pre>"


def _body(content: dict[str, Any]) -> str:
    parts = []
    for media, body in content.items():
        parts.append(f"<code>{_e(media)}</code>: {shape(body.get('schema'))}")
    first: dict[str, Any] = next(iter(content.values()), {})
    out = "; ".join(parts)
    if "example" in first:
        out += "<br>Example:" + _example(first["example"])
    return out


def _operation(path: str, method: str, op: dict[str, Any]) -> list[str]:
    parts = [f"<div class=op id='{_e(op['operationId'])}'>"]
    parts.append(f"<h3><span class=m>{_e(method.upper())}</span><code>{_e(path)}</code></h3>")
    parts.append(f"<p><strong>{prose(op.get('summary', ''))}</strong></p>")
    if op.get("description"):
        parts.append(f"<p>{prose(op['description'])}</p>")
    if op.get("x-scope"):
        parts.append(f"<p>API key scope: <code>{_e(op['x-scope'])}</code></p>")
    if op.get("parameters"):
        parts.append("<table><tr><th>parameter</th><th>in</th><th>schema</th><th>meaning</th></tr>")
        for p in op["parameters"]:
            required = " (required)" if p.get("required") else ""
            meaning = _meaning(p.get("description", ""), p.get("example"))
            parts.append(
                f"<tr><td><code>{_e(p['name'])}</code>{required}</td><td>{_e(p['in'])}</td>"
                f"<td>{shape(p['schema'])}</td><td>{meaning}</td></tr>"
            )
        parts.append("</table>")
    if op.get("requestBody"):
        parts.append(f"<p>Request body: {_body(op['requestBody']['content'])}</p>")
    parts.append("<table><tr><th>status</th><th>meaning</th><th>body</th></tr>")
    for status, answer in op["responses"].items():
        headers = ", ".join(f"<code>{_e(h)}</code>" for h in answer.get("headers", {}))
        meaning = prose(answer["description"]) + (f"<br>headers: {headers}" if headers else "")
        parts.append(
            f"<tr><td>{_e(status)}</td><td>{meaning}</td><td>{_body(answer.get('content', {}))}</td></tr>"
        )
    parts.append("</table></div>")
    return parts


def _schema(name: str, schema: dict[str, Any]) -> list[str]:
    parts = [f"<div class=schema id='{_anchor(name)}'><h3>{_e(name)}</h3>"]
    if schema.get("description"):
        parts.append(f"<p>{prose(schema['description'])}</p>")
    properties = schema.get("properties")
    if not properties:
        parts.append(f"<p>{shape(schema)}</p></div>")
        return parts
    required = set(schema.get("required", []))
    parts.append("<table><tr><th>field</th><th>schema</th><th>meaning</th></tr>")
    for field, sub in properties.items():
        flag = "" if field in required else " (optional)"
        branches = [sub, *sub.get("anyOf", [])]  # `X | None` holds X's description and examples
        description = next((b["description"] for b in branches if "description" in b), "")
        examples: list[Any] = next((b["examples"] for b in branches if b.get("examples")), [])
        meaning = _meaning(description, json.dumps(examples[0], ensure_ascii=False) if examples else None)
        parts.append(
            f"<tr><td><code>{_e(field)}</code>{flag}</td><td>{shape(sub)}</td><td>{meaning}</td></tr>"
        )
    parts.append("</table>")
    extra = schema.get("additionalProperties")
    parts.append("<p>No other fields.</p>" if extra is False else "")
    parts.append("</div>")
    return parts


def render_docs(spec: dict[str, Any]) -> str:
    """The document as one self-contained HTML page."""
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {t["name"]: [] for t in spec.get("tags", [])}
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            by_tag.setdefault(op["tags"][0], []).append((path, method, op))
    by_tag = {tag: ops for tag, ops in by_tag.items() if ops}
    schemas: dict[str, Any] = spec["components"]["schemas"]
    title = _e(spec["info"]["title"])
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{title} API</title><style>{_STYLE}</style></head><body>",
        f"<h1>{title} API</h1><p>{prose(spec['info']['description'])}</p>",
        "<p>Machine-readable: <a href=/openapi.json>/openapi.json</a> (OpenAPI 3.1).</p>",
        "<nav><h2>Contents</h2>",
    ]
    for tag, ops in by_tag.items():
        parts.append(f"<h3><a href='#tag-{_e(tag)}'>{_e(tag)}</a></h3><ul>")
        for path, method, op in ops:
            parts.append(
                f"<li><a href='#{_e(op['operationId'])}'><span class=m>{_e(method.upper())}</span>"
                f"{_e(path)}</a> {prose(op.get('summary', ''))}</li>"
            )
        parts.append("</ul>")
    parts.append("<h3><a href='#schemas'>Schemas</a></h3><ul>")
    parts.extend(f"<li>{_link(name)}</li>" for name in schemas)
    parts.append("</ul></nav>")
    for tag, ops in by_tag.items():
        parts.append(f"<h2 id='tag-{_e(tag)}'>{_e(tag)}</h2>")
        for path, method, op in ops:
            parts.extend(_operation(path, method, op))
    parts.append("<h2 id='schemas'>Schemas</h2>")
    for name, schema in schemas.items():
        parts.extend(_schema(name, schema))
    parts.append("</body></html>")
    return "".join(parts)
