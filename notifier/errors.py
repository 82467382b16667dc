"""Why a request is refused, raised by any layer (domain, pages, API) without knowing HTTP's
machinery: `notifier.api.problems` turns a `Problem` into an RFC 9457 document, the pages and the
console into a page. The status is the HTTP status the refusal deserves (404, 409, 422, ...)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Annotated, Any

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict

# RFC 9110's names where Python's `HTTPStatus` phrases still carry the older ones (Python 3.13
# renamed them), so a title is the same on every Python and as docs/api.md shows it.
_RFC9110_TITLES = {
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
}


def status_title(status: int) -> str:
    """The problem title of an HTTP status: its RFC 9110 reason phrase."""
    return _RFC9110_TITLES.get(status) or HTTPStatus(status).phrase


@with_config(ConfigDict(extra="forbid"))
class FieldError(TypedDict):
    """One invalid field of a request."""

    field: Annotated[str, Field(description="dotted path, e.g. `messages.3.subject`", examples=["email"])]
    message: Annotated[str, Field(examples=["value is not a valid email address"])]


class Problem(Exception):
    """A refusal: `status`, a `detail` for people, an optional `title`, field-level `errors`
    (`[{field, message}]`), extra `headers` and extra members of the problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        errors: Sequence[Mapping[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or status_title(status)
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra
