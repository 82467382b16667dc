"""The rows of a member import file: which column holds which field, each row's cells checked
with the API's rules, and the file read in chunks of numbered rows (`notifier.member_import`
stages and merges them).

`check_row` is the reference: each cell through the API's own pydantic rule
(`notifier.validation`), the errors as the API words them. `RowChecker` is what an import runs:
each field's rule called directly, pydantic only to phrase a refusal, a row that any fast rule
refuses handed to `check_row` whole, so its errors are the reference's by construction; a
property test holds the accepted rows' values to the reference's
(tests/test_member_import_checks.py).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any

from pydantic import TypeAdapter, ValidationError

from notifier import attributes
from notifier.accounts import NewAccount
from notifier.errors import FieldError
from notifier.validation import (
    EXTERNAL_ID,
    MAX_EXTERNAL_ID,
    MAX_NAME,
    ONE_LINE,
    Email,
    ExternalId,
    Locale,
    Name,
    TimeZone,
    check_locale,
    check_one_line,
    check_timezone,
    errors_of,
    normalize_email,
)

FIELDS = ("external_id", "email", "name", "timezone", "locale")
ATTRIBUTE_PREFIX = "attributes."
STAGED_COLUMNS = ("import_id", "row_no", "external_id", "email", "name", "timezone", "locale", "attributes")

_RULES: dict[str, TypeAdapter[str]] = {
    "external_id": TypeAdapter(ExternalId),
    "email": TypeAdapter(Email),
    "name": TypeAdapter(Name),
    "timezone": TypeAdapter(TimeZone),
    "locale": TypeAdapter(Locale),
}
DEFAULTS = {name: NewAccount.model_fields[name].default for name in ("timezone", "locale")}


class ImportRefused(ValueError):
    """The file or the options cannot be imported at all (no row was written)."""


def parse_maps(maps: Sequence[str]) -> dict[str, str]:
    """`["Email Address=email", ...]` as {csv column: field}; ImportRefused for a bad map."""
    out: dict[str, str] = {}
    for item in maps:
        column, sep, target = item.partition("=")
        column, target = column.strip(), target.strip()
        if not sep or not column or not target:
            raise ImportRefused(f"a map is CSV_COLUMN=FIELD, got {item!r}")
        if target not in FIELDS and not _attribute_key(target):
            raise ImportRefused(f"{target!r} is not a field: map to {', '.join(FIELDS)} or attributes.KEY")
        out[column] = target
    return out


def _attribute_key(target: str) -> str | None:
    key = target.removeprefix(ATTRIBUTE_PREFIX)
    if target.startswith(ATTRIBUTE_PREFIX) and attributes.KEY.fullmatch(key):
        return key
    return None


def column_plan(header: Sequence[str], maps: Mapping[str, str]) -> tuple[dict[int, str], list[str]]:
    """Which column index holds which field, and the header names left unused. A column maps to
    the field it is named after unless `maps` says otherwise; ImportRefused when `external_id`
    has no column, a field has two, or a map names a column the header lacks."""
    names = [h.strip() for h in header]
    missing = [c for c in maps if c not in names]
    if missing:
        raise ImportRefused(f"the header has no column {', '.join(map(repr, missing))}")
    plan: dict[int, str] = {}
    ignored: list[str] = []
    for index, name in enumerate(names):
        target = maps.get(name, name if name in FIELDS or _attribute_key(name) else None)
        if target is None:
            ignored.append(name)
        elif target in plan.values():
            raise ImportRefused(f"two columns map to {target!r}")
        else:
            plan[index] = target
    if "external_id" not in plan.values():
        raise ImportRefused(
            "no column maps to external_id (name one external_id, or --map COLUMN=external_id)"
        )
    return plan, ignored


def check_row(
    cells: Sequence[str], plan: Mapping[int, str], width: int
) -> tuple[dict[str, Any], list[FieldError]]:
    """The row's values by field, checked by the API's rules (empty cells are absent), and the
    errors found; `attributes` collects the `attributes.*` cells as a JSON object. The reference
    the import's fast `RowChecker` is proven equal to (tests/test_member_import_checks.py)."""
    if len(cells) != width:
        return {}, [_width_error(len(cells), width)]
    values: dict[str, Any] = {}
    found: dict[str, str] = {}
    errors: list[FieldError] = []
    for index, target in plan.items():
        cell = cells[index].strip()
        if not cell:
            continue
        key = _attribute_key(target)
        if key is not None:
            try:
                found[key] = check_one_line(cell)
            except ValueError as exc:
                errors.append({"field": target, "message": str(exc)})
            continue
        try:
            values[target] = _RULES[target].validate_python(cell)
        except ValidationError as exc:
            errors.extend(errors_of(exc, target))
    if "external_id" not in values and not any(e["field"] == "external_id" for e in errors):
        errors.append({"field": "external_id", "message": "is required"})
    if found:
        errors.extend(attributes.problems(found))
        values["attributes"] = json.dumps(found, ensure_ascii=False)
    return values, errors


def _width_error(cells: int, width: int) -> FieldError:
    return {"field": "row", "message": f"has {cells} cells; the header has {width}"}


# Each field's rule as a plain function of the stripped, non-empty cell: the value the API's rule
# (`_RULES`) gives, or ValueError. A cell one of them refuses goes through `_RULES` for the
# API's own message, so a refusal reads exactly as the API's; that an accepted value is the
# API's too is a property test's job (tests/test_member_import_checks.py).
_EXTERNAL_ID = re.compile(EXTERNAL_ID)
_ONE_LINE_RE = re.compile(ONE_LINE)


def _fast_external_id(cell: str) -> str:
    if len(cell) <= MAX_EXTERNAL_ID and _EXTERNAL_ID.fullmatch(cell):
        return cell
    raise ValueError(cell)


def _fast_email(cell: str) -> str:
    if len(cell) >= 3:
        return normalize_email(cell)
    raise ValueError(cell)


def _fast_name(cell: str) -> str:
    if len(cell) <= MAX_NAME and _ONE_LINE_RE.fullmatch(cell):
        return cell
    raise ValueError(cell)


_FAST: dict[str, Callable[[str], str]] = {
    "external_id": _fast_external_id,
    "email": _fast_email,
    "name": _fast_name,
    "timezone": check_timezone,
    "locale": check_locale,
}


class RowChecker:
    """`check_row` compiled once for a file's columns, giving its values as the staging record
    (`STAGED_COLUMNS` after import_id and row_no; an empty cell is None). A row every fast rule
    accepts costs a few microseconds; any other row goes through `check_row` itself, so its
    errors are the reference's by construction. Also gathers the time zones of the good rows
    (`zones`; the default for a row without one) for the new members' digest windows."""

    def __init__(self, plan: Mapping[int, str], width: int) -> None:
        self.plan = plan
        self.width = width
        positions = {name: i for i, name in enumerate(STAGED_COLUMNS[2:])}
        self.fields = [(i, positions[t], _FAST[t]) for i, t in plan.items() if t in FIELDS]
        self.attributes = [(i, key) for i, t in plan.items() if (key := _attribute_key(t))]
        self.id_position = positions["external_id"]
        self.zone_position = positions["timezone"]
        self.zones: set[str] = set()

    def check(self, cells: Sequence[str]) -> tuple[list[Any], list[FieldError]]:
        """The row's staging values and its errors (none: the row is good), as `check_row`."""
        record = self._fast(cells)
        if record is None:
            values, errors = check_row(cells, self.plan, self.width)
            if errors:
                return [], errors
            record = [values.get(name) for name in STAGED_COLUMNS[2:]]
        self.zones.add(record[self.zone_position] or DEFAULTS["timezone"])
        return record, []

    def _fast(self, cells: Sequence[str]) -> list[Any] | None:
        """The record when every cell passes its fast rule, else None."""
        if len(cells) != self.width:
            return None
        record: list[Any] = [None] * (len(STAGED_COLUMNS) - 2)
        try:
            for index, position, fast in self.fields:
                cell = cells[index].strip()
                if cell:
                    record[position] = fast(cell)
            if self.attributes:
                found = {
                    key: check_one_line(cell)
                    for index, key in self.attributes
                    if (cell := cells[index].strip())
                }
                if found:
                    if attributes.problems(found):
                        return None
                    record[-1] = json.dumps(found, ensure_ascii=False)
        except ValueError:
            return None
        return record if record[self.id_position] is not None else None


class CountingReader(io.RawIOBase):
    """A binary file that counts the bytes read from it (the progress bar's measure)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.raw.readinto(buffer)  # type: ignore[attr-defined]
        self.count += n or 0
        return n or 0


Row = tuple[int, list[str] | str]  # spreadsheet row number; its cells, or why it is not CSV


def chunks(reader: Iterator[list[str]], size: int) -> Iterator[list[Row]]:
    """Rows with their spreadsheet number (the header is row 1), `size` at a time. A record the
    CSV reader refuses (a cell over its size limit) is passed on as its reason, and reading goes
    on with the next one."""
    chunk: list[Row] = []
    row_no = 1
    while True:
        row_no += 1
        try:
            cells: list[str] | str = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            cells = f"is not CSV: {exc}"
        except UnicodeDecodeError:
            raise ImportRefused(f"the file is not UTF-8 text (near row {row_no})") from None
        if not cells:  # a blank line
            continue
        chunk.append((row_no, cells))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
