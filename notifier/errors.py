"""Why a request is refused, raised by any layer (domain, pages, API) without knowing HTTP's
machinery: `notifier.api.problems` turns a `Problem` into an RFC 9457 document, the pages and the
console into a page. The status is the HTTP status the refusal deserves (404, 409, 422, ...)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


class Problem(Exception):
    """A refusal: `status`, a `detail` for people, an optional `title`, field-level `errors`
    (`[{field, message}]`), extra `headers` and extra members of the problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra
