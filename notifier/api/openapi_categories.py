"""The categories API in the OpenAPI document (`/openapi.json`); schemas come from the models of
notifier.answers and notifier.categories."""

from __future__ import annotations

from typing import Any

from notifier import answers, categories
from notifier.api.openapi import PAGE, Body, Operation, Param, answer, problem
from notifier.validation import MAX_CATEGORY

_TIME = "2026-12-01T09:30:00+00:00"
_IN: dict[str, Any] = {
    "labels": {"en": "Certificates", "de": "Zertifikate"},
    "descriptions": {"en": "Expiry and renewal of your certificates"},
    "default_frequency": "immediate",
    "required": True,
}
EXAMPLE = {"key": "registry", **_IN, "created_at": _TIME, "updated_at": _TIME}
KEY = Param("key", "path", {"type": "string", "maxLength": MAX_CATEGORY}, "the category", example="registry")


def operations() -> list[Operation]:
    """The category routes described."""
    return [
        Operation(
            "PUT",
            "/v1/categories/{key}",
            "categories",
            "Declare a category",
            {
                200: answer(answers.CategoryAnswer, "replaced", example=EXAMPLE),
                201: answer(answers.CategoryAnswer, "declared", example=EXAMPLE),
                422: problem("invalid fields, all listed in `errors`"),
            },
            scope="admin",
            description="The whole declaration: fields left out take their defaults. A required "
            "category cannot default to `off`, and members cannot turn it off. Intake declares an "
            "unknown category with the defaults (no labels, `default_frequency` null: the member's "
            "own frequency, not required). Audited. See docs/digests.md.",
            parameters=[KEY],
            request=Body(categories.CategoryIn, example=_IN),
        ),
        Operation(
            "GET",
            "/v1/categories",
            "categories",
            "List categories",
            {
                200: answer(
                    answers.CategoryPage, "a page", example={"items": [EXAMPLE], "next_cursor": None}
                ),
                422: problem("bad limit or cursor"),
            },
            scope="admin",
            description="Newest first, keyset-paginated: pass `next_cursor` as `cursor` until it is null.",
            parameters=list(PAGE),
        ),
    ]
