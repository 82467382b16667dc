"""The JSON answers of the `/v1` API as pydantic models.

The handlers build their answers from these models and `notifier.responses.json_response`
serialises them, and the OpenAPI document takes its answer schemas from the same models
(`model_json_schema`, serialisation mode): the document cannot describe a field the answer lacks,
nor the answer grow one the document does not show. Descriptions and examples are written on the
fields; what a route does is described in the per-area description modules.

Every list answer is a `Page`: `{"items": [...], "next_cursor": ...}`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from typing import Annotated, Any, Generic, Literal, NotRequired, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema, with_config
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from notifier import newsletter
from notifier.audit import ActorType
from notifier.errors import FieldError
from notifier.schedule import Frequency


def utc_isoformat(value: datetime) -> str:
    """A timestamp as every answer writes it: in UTC, as `datetime.isoformat()` does (`+00:00`)."""
    return value.astimezone(UTC).isoformat()


# Timestamps in UTC as `utc_isoformat` writes them (as the API always has), described as RFC 3339
# date-times.
Timestamp = Annotated[
    datetime,
    PlainSerializer(utc_isoformat, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]

# A wall-clock time of day as `HH:MM`.
ClockTime = Annotated[
    time,
    PlainSerializer(lambda value: value.strftime("%H:%M"), return_type=str),
    WithJsonSchema({"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$", "example": "09:00"}),
]

ErasureReason = Literal["request", "child", "retention", "other"]
EmailStatus = Literal["queued", "sending", "sent", "failed", "suppressed", "cancelled"]

T = TypeVar("T")


class Answer(BaseModel):
    """Closed: a field the model does not declare is refused when the answer is built."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def of_row(cls, row: Mapping[str, Any], **values: Any) -> Self:
        """The answer of a database row: each required field from the row's column of the same
        name (KeyError when the query lacks it), unless given in `values`, which also set the
        optional fields. Validated like any answer."""
        required = _required_fields(cls)
        return cls.model_validate({**{name: row[name] for name in required if name not in values}, **values})


@functools.cache
def _required_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The required fields of an answer model, found once per model (answers are built per row)."""
    return tuple(name for name, info in model.model_fields.items() if info.is_required())


class Page(Answer, Generic[T]):
    """One page of a keyset-paginated list, newest first."""

    items: list[T]
    next_cursor: str | None = Field(
        description="pass it as `cursor` for the next page; null on the last page"
    )


# --- accounts ---------------------------------------------------------------------------------


class CategoryChoice(Answer):
    """How often the member gets one category."""

    frequency: Frequency


class QuietHoursAnswer(Answer):
    """No e-mail between `start` and `end`, local time (crossing midnight when end < start);
    with `weekends`, none on Saturday and Sunday either."""

    start: str = Field(examples=["22:00"])
    end: str = Field(examples=["07:00"])
    weekends: bool


class AccountPreferences(Answer):
    """An account's digest and newsletter preferences."""

    digest_frequency: Frequency
    digest_hour: int = Field(ge=0, le=23, description="local hour of daily and weekly digests")
    digest_weekday: int = Field(ge=1, le=7, description="ISO weekday of weekly digests, 1 = Monday")
    timezone: str = Field(description="an IANA time-zone name", examples=["Europe/Berlin"])
    newsletter: bool
    categories: dict[str, CategoryChoice] = Field(
        description="the member's frequency per category; a category left out follows its "
        "`default_frequency`, else `digest_frequency`",
        examples=[{"registry": {"frequency": "immediate"}, "community": {"frequency": "weekly"}}],
    )
    quiet_hours: QuietHoursAnswer | None = Field(description="null: none")


class CurrentPreferences(AccountPreferences):
    """The preferences and when the next digest is due."""

    next_digest_at: Timestamp | None = Field(description="null: no digest scheduled")
    lists: dict[str, bool] = Field(
        description="every list not archived (key: subscribed); the default list `newsletter` is `newsletter`",
        examples=[{"newsletter": True, "offers": False}],
    )


class Account(Answer):
    """An account (its internal id stays internal)."""

    external_id: str = Field(description="the producer's id", examples=["reg-1042"])
    email: str = Field(json_schema_extra={"format": "email"}, examples=["ann@example.org"])
    name: str = Field(examples=["Ann Example"])
    timezone: str = Field(examples=["Europe/Berlin"])
    locale: str = Field(examples=["de"])
    attributes: dict[str, Any] = Field(
        description="the producer's attributes of the member, for segments",
        examples=[{"country": "DE", "plan": "pro", "interests": ["cycling", "books"]}],
    )
    preferences: AccountPreferences
    created_at: Timestamp
    updated_at: Timestamp


class ErasureReceipt(Answer):
    id: int
    reason: ErasureReason
    created_at: Timestamp


class Erasure(Answer):
    """The receipt of an erasure: no personal data."""

    erased: Literal[True]
    erasure: ErasureReceipt


class AuditEntry(Answer):
    """Who changed what, when."""

    id: int
    actor_type: ActorType
    actor: str = Field(description="the API key's name, `signed link`, ...", examples=["registry"])
    action: str = Field(examples=["account.created", "account.updated"])
    changes: dict[str, Any] = Field(
        description="`{field: {before, after}}`, and `source` (where a preference change came from)"
    )
    created_at: Timestamp


class AuditPage(Page[AuditEntry]):
    """A page of an account's audit trail, newest first."""


class Suppression(Answer):
    model_config = ConfigDict(extra="allow")

    list: str
    reason: str
    created_at: str


class Export(Answer):
    """Everything held on the account. Features may add sections."""

    model_config = ConfigDict(extra="allow")

    exported_at: Timestamp
    account: Account
    preferences: AccountPreferences
    consents: list[dict[str, Any]]
    lists: list[dict[str, Any]] = Field(description="list memberships: list key, subscribed, when")
    messages: list[dict[str, Any]]
    digests: list[dict[str, Any]]
    emails: list[dict[str, Any]]
    events: list[dict[str, Any]]
    audit: list[AuditEntry]
    suppressed: bool = Field(description="the address is on the suppression list")
    suppressions: list[Suppression]


# --- the inbox --------------------------------------------------------------------------------


class Message(Answer):
    """An inbox message."""

    id: int
    category: str = Field(examples=["blog.comments"])
    subject: str = Field(examples=["New comment on your post"])
    body: str
    url: str | None
    data: dict[str, Any] | None
    created_at: Timestamp
    read_at: Timestamp | None
    archived_at: Timestamp | None


class InboxPage(Page[Message]):
    """A page of an inbox, newest first."""


class UnreadCounts(Answer):
    total: int = Field(ge=0)
    categories: dict[str, Annotated[int, Field(ge=1)]] = Field(
        description="only categories with unread messages"
    )


class MarkedRead(Answer):
    marked_read: int = Field(ge=0, description="how many messages were marked read")


# The batch answer is a typed dict, not a model: a thousand results are built per request on
# the intake's hot path, where plain dicts cost a fifth as much; mypy checks every one built
# against these declarations, and the document's schema comes from them as from the models.
@with_config(ConfigDict(extra="forbid"))
class BatchResult(TypedDict):
    """The answer to one item of a batch, in the order of the request."""

    index: Annotated[int, Field(description="position in the request's `messages`")]
    status: Annotated[
        Literal[201, 404, 422], Field(description="201 created, 404 unknown account, 422 invalid")
    ]
    id: NotRequired[Annotated[int, Field(description="the new message (status 201)")]]
    errors: NotRequired[list[FieldError]]


@with_config(ConfigDict(extra="forbid"))
class BatchAnswer(TypedDict):
    """Every item of a batch answered: 201 when all were accepted, 207 when any was not."""

    accepted: Annotated[int, Field(ge=0)]
    rejected: Annotated[int, Field(ge=0)]
    results: list[BatchResult]


# --- service mail and operations --------------------------------------------------------------


class ServiceMessageQueued(Answer):
    id: int
    status: Literal["queued"]
    template: str = Field(examples=["welcome"])


class ServiceMessage(Answer):
    """Where a service e-mail is."""

    id: int
    template: str
    status: EmailStatus
    attempts: int
    last_error: str | None
    message_id: str | None
    created_at: Timestamp
    sent_at: Timestamp | None


class Liveness(Answer):
    status: Literal["ok"]


class Readiness(Answer):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str] = Field(
        description="per backing service: `ok`, or `error: ` and the kind of error",
        examples=[{"postgres": "ok", "redis": "ok"}],
    )


# --- newsletters ------------------------------------------------------------------------------


class NewsletterFigures(Answer):
    """Counts derived from the newsletter's outbox rows and events."""

    recipients: int = Field(ge=0)
    sent: int = Field(ge=0)
    failed: int = Field(ge=0)
    suppressed: int = Field(ge=0)
    pending: int = Field(ge=0)
    cancelled: int = Field(ge=0)
    waiting: int = Field(ge=0, description="of `pending`: recipients whose local time has not come")
    bounced: int = Field(ge=0)
    complained: int = Field(ge=0)
    unsubscribed: int = Field(ge=0)
    resubscribed: int = Field(ge=0)


class ClicksOnDay(Answer):
    day: date = Field(description="the day in UTC")
    clicks: int = Field(ge=0)


class LinkClicks(Answer):
    """One link of a newsletter that counts clicks: how often it was followed, never by whom."""

    link: int = Field(ge=0, description="its number in `/c/{newsletter}/{link}`")
    url: str = Field(description="where it leads")
    clicks: int = Field(ge=0, description="all days together")
    days: list[ClicksOnDay]


class NewsletterVariant(Answer):
    """The newsletter for members of one language."""

    subject: str
    preheader: str | None = Field(default=None, description="absent: the newsletter's own")
    body: str


class AudienceCount(Answer):
    """How many members an audience reaches now."""

    count: int = Field(ge=0)


class NewsList(Answer):
    """A list members opt in to."""

    key: str = Field(examples=["offers"])
    name: str = Field(examples=["Offers"])
    description: str
    double_opt_in: bool = Field(description="an opt-in counts once confirmed (the default list: the setting)")
    default: bool = Field(description="the list that was the newsletter consent; `newsletter` in preferences")
    archived_at: Timestamp | None
    subscribers: int | None = Field(default=None, description="members subscribed (one list's GET only)")
    created_at: Timestamp
    updated_at: Timestamp


class NewsListPage(Page[NewsList]):
    """Every list, the default first, in one page."""


class Segment(Answer):
    """A saved segment."""

    key: str = Field(examples=["germany"])
    name: str = Field(examples=["Members in Germany"])
    rule: dict[str, Any] = Field(examples=[{"attr": "country", "op": "eq", "value": "DE"}])
    created_at: Timestamp
    updated_at: Timestamp


class SegmentPage(Page[Segment]):
    """Every saved segment by key, in one page."""


class Newsletter(Answer):
    id: int
    subject: str
    preheader: str
    body: str
    body_format: Literal["markdown", "html"]
    variants: dict[str, NewsletterVariant] = Field(
        description="by language (en, de, fr, es): what members of that language get instead"
    )
    lists: list[str] = Field(description="list keys; empty: the default list `newsletter`")
    segment: dict[str, Any] | None = Field(description="the inline segment rule, if any")
    segment_key: str | None = Field(description="the saved segment, if any")
    status: newsletter.Status
    recipients: int | None = Field(ge=0, description="audience frozen when sending started")
    scheduled_at: Timestamp | None
    started_at: Timestamp | None
    finished_at: Timestamp | None
    cancelled_at: Timestamp | None
    failure: str | None = Field(description="why a `failed` newsletter stopped")
    track_clicks: bool = Field(description="whether clicks on its links are counted (per link and day)")
    local_time: ClockTime | None = Field(description="sent at this time in each member's time zone")
    local_date: date | None = Field(description="the day of `local_time`")
    next_due_at: Timestamp | None = Field(
        default=None, description="with GET and cancel: when the next waiting recipient's local time comes"
    )
    clicks: list[LinkClicks] | None = Field(
        default=None,
        description="with GET and cancel: each counted link's clicks (empty unless `track_clicks`)",
    )
    created_by: str | None
    created_at: Timestamp | None
    updated_at: Timestamp | None
    figures: NewsletterFigures | None = Field(default=None, description="with GET and cancel")


class NewsletterPage(Page[Newsletter]):
    """A page of newsletters, newest first."""


class NewsletterTemplate(Answer):
    """A saved subject, preheader and body that newsletter drafts start from."""

    id: int
    name: str
    subject: str
    preheader: str
    body: str
    body_format: Literal["markdown", "html"]
    created_by: str
    updated_by: str
    created_at: Timestamp
    updated_at: Timestamp


class NewsletterTemplatePage(Page[NewsletterTemplate]):
    """A page of newsletter templates, newest first."""


class NewsletterPreview(Answer):
    subject: str
    html: str
    text: str


class TestSendQueued(Answer):
    emails: list[int] = Field(description="the test e-mails' ids, one per address")


# --- categories -------------------------------------------------------------------------------


class CategoryAnswer(Answer):
    """A declared category."""

    key: str = Field(examples=["registry"])
    labels: dict[str, str] = Field(description="name per language tag")
    descriptions: dict[str, str] = Field(description="description per language tag")
    default_frequency: Frequency | None = Field(
        description="how often members who have not chosen get it; null: the member's default frequency"
    )
    required: bool = Field(description="members cannot turn it off")
    created_at: Timestamp
    updated_at: Timestamp


class CategoryPage(Page[CategoryAnswer]):
    pass
