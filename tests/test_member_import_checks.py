"""The import's fast row checks (`member_import.RowChecker`) against the reference (`check_row`,
the API's pydantic rules): for every row, the same staging values and the same errors, in the
same order. Rows are generated with the cells that matter over-represented: near-valid values,
surrounding and inner whitespace, control and text-direction characters, lengths at the limits."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from notifier.import_file import STAGED_COLUMNS, RowChecker, check_row, column_plan
from notifier.validation import MAX_EXTERNAL_ID, MAX_NAME

HEADER = ("external_id", "email", "name", "timezone", "locale", "attributes.country", "notes")
PLAN, _ = column_plan(HEADER, {})

NASTY_CHARS = st.sampled_from(list(" \t\r\n\x00\x0b\x0c\x1c\x1f\x85\xa0\u2028\u202e\u3000\"'@.,:_+-/\\é"))
NASTY = st.text(st.one_of(NASTY_CHARS, st.characters(codec="utf-8", exclude_categories=["Cs"])), max_size=40)
PADDING = st.sampled_from(["", " ", "\t", "\xa0", "\u3000", "\x1c", "\x85"])


def padded(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(PADDING, inner, PADDING).map("".join)


EXTERNAL_IDS = padded(
    st.one_of(
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@+\-]{0,20}", fullmatch=True),
        st.just("x" * MAX_EXTERNAL_ID),
        st.just("x" * (MAX_EXTERNAL_ID + 1)),
        NASTY,
    )
)
EMAILS = padded(
    st.one_of(
        st.from_regex(r"[a-z0-9.+_-]{1,10}@[a-z0-9-]{1,10}(\.[a-z]{2,5}){0,2}", fullmatch=True),
        st.sampled_from(
            ["a@b", "ab", "x@@example.org", "Ada@EXAMPLE.org", '"q d"@example.org', "é@bücher.de"]
        ),
        NASTY,
    )
)
NAMES = padded(st.one_of(NASTY, st.just("n" * MAX_NAME), st.just("n" * (MAX_NAME + 1))))
ZONES = padded(st.sampled_from(["UTC", "Europe/Berlin", "Mars/Olympus", "localtime", "EST5EDT", "utc", ""]))
LOCALES = padded(
    st.sampled_from(["en", "de-CH", "pt_BR", "e", "english-language-tag-far-too-long-x", "de ch", ""])
)
COUNTRIES = padded(st.one_of(st.sampled_from(["DE", "", "x" * 500, "x" * 501]), NASTY))


@st.composite
def rows(draw: st.DrawFn) -> list[str]:
    cells = [
        draw(EXTERNAL_IDS),
        draw(EMAILS),
        draw(NAMES),
        draw(ZONES),
        draw(LOCALES),
        draw(COUNTRIES),
        draw(NASTY),
    ]
    if draw(st.integers(0, 20)) == 0:  # a row of the wrong width now and then
        cells = cells[: draw(st.integers(0, len(cells) - 1))]
    return cells


def reference(cells: list[str]) -> tuple[list[Any], list[Any]]:
    values, errors = check_row(cells, PLAN, len(HEADER))
    return ([] if errors else [values.get(name) for name in STAGED_COLUMNS[2:]]), errors


@settings(max_examples=1500, deadline=None)
@given(cells=rows())
@example(cells=["m-1", "ada@example.com", "Ada", "Europe/Berlin", "de_CH", "DE", ""])
@example(cells=["", "ada@example.com", "Ada", "", "", "", ""])
@example(cells=["m-1", " Ada@EXAMPLE.ORG ", " Ada ", " UTC ", " en ", " DE ", "x"])
@example(cells=["m-1", "ada@example.com", "Ada\u202e", "UTC", "en", "\x00", ""])
def test_the_fast_checks_give_the_reference_values_and_errors(cells: list[str]) -> None:
    checker = RowChecker(PLAN, len(HEADER))
    assert checker.check(cells) == reference(cells)


def test_good_rows_give_their_time_zones_and_the_default_for_an_empty_cell() -> None:
    checker = RowChecker(PLAN, len(HEADER))
    checker.check(["m-1", "a@example.com", "A", "Asia/Tokyo", "", "", ""])
    checker.check(["m-2", "b@example.com", "B", "", "", "", ""])
    checker.check(["m-3", "c@example.com", "C", "Mars/Olympus", "", "", ""])  # bad: not gathered
    assert checker.zones == {"Asia/Tokyo", "UTC"}
