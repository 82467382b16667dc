"""Lists and segments in the OpenAPI document (`/openapi.json`): what each operation does; the
bodies' schemas come from the models of `notifier.lists`, `notifier.api.lists` and `answers`."""

from __future__ import annotations

from typing import Any

from notifier import answers, lists
from notifier.api.lists import CountIn, SegmentIn, SegmentPatch
from notifier.api.openapi import LOCATION, Answer, Body, Operation, Param, answer, problem

LIST_KEY = Param("key", "path", {"type": "string"}, "the list's key", example="offers")
SEGMENT_KEY = Param("key", "path", {"type": "string"}, "the segment's key", example="germany")
_TIME = "2026-12-01T09:30:00+00:00"
LIST_EXAMPLE = {
    "key": "offers",
    "name": "Offers",
    "description": "Discounts for members, twice a month.",
    "double_opt_in": True,
    "default": False,
    "archived_at": None,
    "subscribers": 0,
    "created_at": _TIME,
    "updated_at": _TIME,
}
RULE_EXAMPLE = {
    "all": [
        {"attr": "country", "op": "eq", "value": "DE"},
        {
            "any": [
                {"field": "locale", "op": "in", "value": ["de", "de-AT"]},
                {"attr": "plan", "op": "exists"},
            ]
        },
    ]
}
_BAD_RULE = problem("invalid fields, or a fault in the rule named by its path (`rule.all.2.op`)")


def _op(
    method: str, path: str, summary: str, description: str, answers_: dict[int | str, Answer], **kw: Any
) -> Operation:
    tag = "lists" if path.startswith("/v1/lists") else "segments"
    return Operation(method, path, tag, summary, answers_, scope="newsletters", description=description, **kw)


def operations() -> list[Operation]:
    """The list and segment routes described."""
    one = "/v1/lists/{key}"
    seg = "/v1/segments/{key}"
    missing = problem("no list with that key")
    no_segment = problem("no segment with that key")
    return [
        _op(
            "POST",
            "/v1/lists",
            "Create a list",
            "Members opt in per list (preferences `lists`), each opt-in with its own consent evidence; "
            f"keys are permanent. Reserved keys: {', '.join(sorted(lists.RESERVED_KEYS))}.",
            {
                201: answer(answers.NewsList, "the list", LOCATION, example=LIST_EXAMPLE),
                409: problem("the key is taken"),
                422: problem("invalid fields"),
            },
            request=Body(
                lists.ListIn,
                example={k: LIST_EXAMPLE[k] for k in ("key", "name", "description", "double_opt_in")},
            ),
        ),
        _op(
            "GET",
            "/v1/lists",
            "List the lists",
            "The default list first, then by key, in one page.",
            {200: answer(answers.NewsListPage, "the lists")},
            parameters=[
                Param("archived", "query", {"enum": ["true", "false"]}, "`true`: archived lists too")
            ],
        ),
        _op(
            "GET",
            one,
            "A list",
            "With its number of subscribers.",
            {200: answer(answers.NewsList, "the list"), 404: missing},
            parameters=[LIST_KEY],
        ),
        _op(
            "PATCH",
            one,
            "Edit a list",
            "Name, description, double opt-in; the key never changes.",
            {200: answer(answers.NewsList, "the list"), 404: missing, 422: problem("invalid fields")},
            parameters=[LIST_KEY],
            request=Body(lists.ListPatch, example={"name": "Member offers"}),
        ),
        _op(
            "POST",
            f"{one}/archive",
            "Archive a list",
            "No longer shown to members nor sent to; members and consent evidence stay. Idempotent.",
            {
                200: answer(answers.NewsList, "the archived list"),
                404: missing,
                409: problem("the default list"),
            },
            parameters=[LIST_KEY],
        ),
        _op(
            "DELETE",
            one,
            "Archive a list",
            "The same as `POST /v1/lists/{key}/archive`.",
            {
                200: answer(answers.NewsList, "the archived list"),
                404: missing,
                409: problem("the default list"),
            },
            parameters=[LIST_KEY],
        ),
        _op(
            "POST",
            "/v1/segments",
            "Save a segment",
            "A rule over attributes, locale, time zone and registration date (docs/newsletters.md).",
            {
                201: answer(answers.Segment, "the segment", LOCATION),
                409: problem("the key is taken"),
                422: _BAD_RULE,
            },
            request=Body(SegmentIn, example={"key": "germany", "name": "Germany", "rule": RULE_EXAMPLE}),
        ),
        _op(
            "GET",
            "/v1/segments",
            "List saved segments",
            "By key, in one page.",
            {200: answer(answers.SegmentPage, "the segments")},
        ),
        _op(
            "POST",
            "/v1/segments/count",
            "Count an audience",
            "How many members of any of `lists` (none: the default list) match the segment now, "
            "minus the suppressed: the audience sending would freeze at this moment.",
            {200: answer(answers.AudienceCount, "the count", example={"count": 1250}), 422: _BAD_RULE},
            request=Body(CountIn, example={"lists": ["offers"], "segment": RULE_EXAMPLE}),
        ),
        _op(
            "GET",
            seg,
            "A saved segment",
            "",
            {200: answer(answers.Segment, "the segment"), 404: no_segment},
            parameters=[SEGMENT_KEY],
        ),
        _op(
            "PATCH",
            seg,
            "Edit a saved segment",
            "A newsletter naming it uses the rule as it is when sending starts.",
            {200: answer(answers.Segment, "the segment"), 404: no_segment, 422: _BAD_RULE},
            parameters=[SEGMENT_KEY],
            request=Body(
                SegmentPatch, example={"rule": {"attr": "country", "op": "in", "value": ["DE", "AT"]}}
            ),
        ),
        _op(
            "DELETE",
            seg,
            "Delete a saved segment",
            "Refused while a newsletter names it.",
            {204: Answer("deleted"), 404: no_segment, 409: problem("a newsletter names it")},
            parameters=[SEGMENT_KEY],
        ),
    ]
