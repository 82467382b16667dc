"""Every knob of the engine, read from `NOTIFIER_*` environment variables or a `.env` file."""

from __future__ import annotations

import json
import re
import secrets
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from notifier.validation import check_colour, check_https_image, check_one_line

_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")


class ConfigError(Exception):
    """Configuration that cannot work; the CLI prints the message as one line and exits."""


class Settings(BaseSettings):
    """One settings object for web, worker and CLI. Tests build their own instance."""

    model_config = SettingsConfigDict(
        env_prefix="NOTIFIER_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    env: Literal["production", "development", "test"] = "production"
    data_dir: Path = Path(".notifier")
    log_level: str = "INFO"

    # Services. Unset means "embedded" in `notifier dev` and in the test suite.
    database_url: str | None = None
    redis_url: str | None = None
    db_pool_min: int = Field(default=2, ge=1)
    db_pool_max: int = Field(default=10, ge=1)
    # PostgreSQL behind a transaction-pooling PgBouncer: no named prepared statements (PgBouncer
    # before 1.21 cannot route them). See docs/scaling.md.
    db_transaction_pooling: bool = False

    # Web
    # Loopback unless configured: a platform that routes to the process sets NOTIFIER_HOST=0.0.0.0
    # (the Procfile does).
    host: str = "127.0.0.1"
    port: int = Field(default=8000, validation_alias=AliasChoices("NOTIFIER_PORT", "PORT"), ge=0, le=65535)
    public_url: str = "http://localhost:8000"
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_batch_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)

    # Per API key and web process: sustained requests/s and burst; 0 turns the limit off.
    api_rate_limit: float = Field(default=500.0, ge=0)
    api_rate_burst: int = Field(default=1000, ge=1)

    # Secrets. Links are signed with `secret_key` and verified with it or any of
    # `old_secret_keys` (comma-separated), so the key can be rotated without breaking a link.
    secret_key: SecretStr | None = None
    old_secret_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)

    # SMTP
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_tls: Literal["none", "starttls", "tls"] = "none"
    smtp_timeout: float = Field(default=30.0, gt=0)
    smtp_pool_size: int = Field(default=8, ge=1, le=64)
    smtp_pipelining: bool = Field(
        default=True, description="pipeline MAIL/RCPT/DATA (RFC 2920) where the server offers it"
    )
    send_rate: float = Field(
        default=0.0, ge=0, description="messages per second over all workers; 0 = no limit"
    )
    capture_mail: bool = False

    # The member's inbox on the website (docs/inbox.md)
    inbox_origins: str = Field(
        default="",
        description="comma-separated origins (https://www.example.org) whose pages may call /member/v1",
    )
    inbox_url: str | None = Field(
        default=None, description="the organisation's own inbox page for e-mail links; unset: the hosted page"
    )
    # 30 s stays under the 55 to 60 s idle timeouts of common proxies and load balancers; each
    # heartbeat is a write per quiet stream (16% of a web process holding 10,000 streams at 15 s).
    inbox_heartbeat_seconds: float = Field(default=30.0, gt=0, le=300)

    # Webhooks out (notifier.webhooks): private, loopback and link-local destinations are refused
    # unless allowed (development and tests); each POST has this long to answer.
    webhooks_allow_private: bool = False
    webhooks_timeout: float = Field(default=10.0, gt=0, le=30)

    # Mail identity
    service_from: str = "Notifier <no-reply@localhost>"
    newsletter_from: str = "Notifier News <news@localhost>"
    unsubscribe_mailto: str | None = None
    postal_address: str = ""
    # The house style (notifier.brand, docs/console.md#brand): the defaults of every e-mail layout
    # and member page; the console's brand page overrides each of them.
    brand_name: str = Field(default="", max_length=100, description="the organisation's name")
    brand_logo_url: str | None = Field(default=None, description="an https:// URL of the logo image")
    brand_primary_color: str = Field(default="#1d4ed8", description="#rrggbb: links, buttons, the top bar")
    brand_accent_color: str = Field(default="#b45309", description="#rrggbb: quotes, rules, highlights")
    brand_footer_text: str = Field(default="", max_length=500, description="a line above the postal address")
    list_id_domain: str = "notifier.localhost"
    dkim_domain: str | None = None
    dkim_selector: str | None = None
    dkim_private_key: SecretStr | None = None
    dkim_private_key_path: Path | None = None

    # Deliverability loop (docs/deliverability.md). With `bounce_domain` set, each e-mail's
    # envelope sender is a signed `bounces+ID-SIG@bounce_domain` (VERP) and `notifier inbound`
    # accepts reports for that domain and for `unsubscribe_mailto`.
    bounce_domain: str | None = None
    inbound_smtp_host: str = "127.0.0.1"
    inbound_smtp_port: int = Field(default=2525, ge=0, le=65535)
    inbound_max_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    # Soft-bounce rule: this many temporary failures of one address within `soft_bounce_days`
    # suppress it (reason `soft_bounce`).
    soft_bounce_limit: int = Field(default=3, ge=1)
    soft_bounce_days: int = Field(default=14, ge=1)
    # Provider webhooks (`/webhooks/{provider}`); a provider without its setting answers 404.
    sendgrid_verification_key: str | None = None  # the "Verification Key": base64 DER or PEM
    mailgun_signing_key: SecretStr | None = None
    postmark_webhook_username: str | None = None
    postmark_webhook_password: SecretStr | None = None
    # SNS topics whose SES events are accepted (comma-separated ARNs): SNS signs every topic's
    # messages with the same certificate, so the topic is what says they are ours.
    ses_topic_arns: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # An SNS signing certificate (PEM file) trusted instead of fetching SigningCertURL: for tests
    # and machines without network; the URL must still be an https SNS host of amazonaws.com.
    sns_certificate_file: Path | None = None

    # Digests and workers
    immediate_coalesce_seconds: int = Field(default=120, ge=0)
    digest_max_per_category: int = Field(default=5, ge=1)
    worker_max_jobs: int = Field(default=20, ge=1)
    retention_days: int = Field(default=365, ge=1)

    # Newsletters
    newsletter_double_opt_in: bool = Field(
        default=False, description="opt-ins count only after the member confirms by e-mail"
    )
    # Test-sends go to subscribed members and to addresses at these domains (comma-separated);
    # unset: the domain of NEWSLETTER_FROM. At most `test_send_per_hour` recipients per API key.
    test_send_domains: Annotated[list[str] | None, NoDecode] = None
    test_send_per_hour: int = Field(default=50, ge=1)
    # Failed console sign-ins per client address and quarter of an hour before a 429.
    console_sign_in_attempts: int = Field(default=10, ge=1)
    # Console sessions (docs/console.md): end after this long without a request, and this long
    # after sign-in whatever the activity; dangerous actions (erasing a member, sending to more
    # than `console_fresh_recipients`) need a sign-in within the last `console_fresh_minutes`.
    console_idle_minutes: int = Field(default=30, ge=1, le=24 * 60)
    console_session_hours: int = Field(default=12, ge=1, le=24 * 30)
    console_fresh_minutes: int = Field(default=10, ge=1, le=24 * 60)
    console_fresh_recipients: int = Field(default=1000, ge=0)
    # Magic links per address and per client address within a quarter of an hour.
    console_link_per_address: int = Field(default=5, ge=1)
    console_link_per_client: int = Field(default=20, ge=1)
    # Signing in to the console with an API key: development only (refused in production).
    console_key_sign_in: bool = False
    # Four-eyes sending: a newsletter to more than this many recipients needs a second person's
    # approval before it can start (unset: no approval needed).
    four_eyes_recipients: int | None = Field(default=None, ge=0)
    # OpenID Connect sign-in (docs/console.md): on when the issuer and client id are set.
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    # Only addresses at these domains may sign in by OpenID Connect (comma-separated; unset: any
    # domain, still only invited users).
    oidc_allowed_domains: Annotated[list[str] | None, NoDecode] = None

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        scheme = urlsplit(value).scheme
        if scheme not in {"postgres", "postgresql"}:
            raise ValueError(f"must start with postgresql://, got {scheme or 'no scheme'}://")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        scheme = urlsplit(value).scheme
        if scheme not in {"redis", "rediss", "unix", "redis+sentinel"}:
            raise ValueError(
                "must start with redis://, rediss://, unix:// or redis+sentinel://, "
                f"got {scheme or 'no scheme'}://"
            )
        if scheme == "redis+sentinel":
            sentinel_hosts(value)  # raises ValueError naming what is wrong
        return value

    @field_validator(
        "old_secret_keys", "test_send_domains", "ses_topic_arns", "oidc_allowed_domains", mode="before"
    )
    @classmethod
    def _split_list(cls, value: object) -> object:
        """A list from the environment: comma- or space-separated (or a JSON list)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for part in re.split(r"[\s,]+", text) if part]
        return value

    @field_validator("test_send_domains", "oidc_allowed_domains")
    @classmethod
    def _domains(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        domains = [d.strip().lower().lstrip("@").rstrip(".") for d in value]
        bad = [d for d in domains if not _DOMAIN.fullmatch(d)]
        if bad:
            raise ValueError(f"not a domain (use the xn-- form of international ones): {bad[0]!r}")
        return domains

    @field_validator("bounce_domain")
    @classmethod
    def _bounce_domain(cls, value: str | None) -> str | None:
        if not value:
            return None
        domain = value.strip().lower().rstrip(".")
        if not _DOMAIN.fullmatch(domain):
            raise ValueError(f"not a domain (use the xn-- form of international ones): {value!r}")
        return domain

    @field_validator("brand_primary_color", "brand_accent_color")
    @classmethod
    def _check_colour(cls, value: str) -> str:
        return check_colour(value)

    @field_validator("brand_logo_url")
    @classmethod
    def _check_logo(cls, value: str | None) -> str | None:
        return check_https_image(value) if value else None

    @field_validator("brand_name", "brand_footer_text")
    @classmethod
    def _check_brand_text(cls, value: str) -> str:
        return check_one_line(value.strip())

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if urlsplit(value).scheme not in {"http", "https"}:
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("inbox_origins")
    @classmethod
    def _check_origins(cls, value: str) -> str:
        origins = [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
        for origin in origins:
            parts = urlsplit(origin)
            if parts.scheme not in {"http", "https"} or not parts.netloc or parts.path or parts.query:
                raise ValueError(f"{origin!r} is not an origin such as https://www.example.org")
        return ",".join(origins)

    @field_validator("inbox_url")
    @classmethod
    def _check_inbox_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if urlsplit(value).scheme not in {"http", "https"}:
            raise ValueError("must be an http:// or https:// URL")
        return value

    @property
    def inbox_origin_list(self) -> list[str]:
        """The origins of NOTIFIER_INBOX_ORIGINS, normalised (no trailing slash)."""
        return [o for o in self.inbox_origins.split(",") if o]

    @model_validator(mode="after")
    def _pool_bounds(self) -> Settings:
        if self.db_pool_min > self.db_pool_max:
            self.db_pool_min = self.db_pool_max
        return self

    @property
    def secret(self) -> bytes:
        """The signing key as bytes; `require_secret` must have run first."""
        if self.secret_key is None:
            raise ConfigError("NOTIFIER_SECRET_KEY is not set")
        return self.secret_key.get_secret_value().encode()

    @property
    def keyring(self) -> tuple[bytes, ...]:
        """The keys a signed link may be verified with: the current one first, then the older
        ones of NOTIFIER_OLD_SECRET_KEYS (rotation). Signing uses only the current one."""
        keys = [self.secret]
        for old in self.old_secret_keys:
            key = old.get_secret_value().encode()
            if key and key not in keys:
                keys.append(key)
        return tuple(keys)

    @property
    def test_send_allowed_domains(self) -> frozenset[str]:
        """The domains test-sends may go to besides subscribed members (see test_send_domains)."""
        if self.test_send_domains is not None:
            return frozenset(self.test_send_domains)
        return frozenset({parseaddr(self.newsletter_from)[1].rpartition("@")[2].lower()} - {""})

    def require_secret(self) -> None:
        """Outside development a missing secret stops start-up; development keeps one on disk."""
        if self.secret_key is not None and self.secret_key.get_secret_value():
            return
        if self.env == "production":
            raise ConfigError(
                "NOTIFIER_SECRET_KEY is not set: generate one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(48))'` and set it"
            )
        path = self.data_dir / "secret_key"
        if path.exists():
            key = path.read_text().strip()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            key = secrets.token_urlsafe(48)
            path.write_text(key + "\n")
            path.chmod(0o600)
        self.secret_key = SecretStr(key)

    def check_capture(self) -> None:
        """Mail capture (and its mailbox) is for development: refused when env is production."""
        if self.capture_mail and self.env == "production":
            raise ConfigError(
                "mail capture (NOTIFIER_CAPTURE_MAIL, or `notifier dev` without NOTIFIER_SMTP_HOST) is "
                "refused when NOTIFIER_ENV is production: set NOTIFIER_SMTP_HOST and unset "
                "NOTIFIER_CAPTURE_MAIL, or set NOTIFIER_ENV=development"
            )

    def check_console_keys(self) -> None:
        """Signing in to the console with an API key is for development: refused in production."""
        if self.console_key_sign_in and self.env == "production":
            raise ConfigError(
                "NOTIFIER_CONSOLE_KEY_SIGN_IN is for development and is refused when NOTIFIER_ENV is "
                "production: console users sign in as themselves (docs/console.md)"
            )

    @property
    def oidc_enabled(self) -> bool:
        """Whether the console offers OpenID Connect sign-in."""
        return bool(self.oidc_issuer and self.oidc_client_id)

    def require_services(self) -> tuple[str, str]:
        """Both service URLs, or a ConfigError naming the missing one."""
        if not self.database_url:
            raise ConfigError(
                "NOTIFIER_DATABASE_URL is not set (or run `notifier dev` for embedded services)"
            )
        if not self.redis_url:
            raise ConfigError("NOTIFIER_REDIS_URL is not set (or run `notifier dev` for embedded services)")
        return self.database_url, self.redis_url

    def to_env(self) -> dict[str, str]:
        """The settings given explicitly (not left at their defaults) as NOTIFIER_* environment
        variables, so that a child process (`notifier worker`, `notifier web`, the CLI) reads the
        same configuration. It holds the secrets: pass it to a child's environment, never log it."""
        env: dict[str, str] = {}
        for name in sorted(self.model_fields_set):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, list):  # as JSON: an item may hold a comma
                value = json.dumps([v.get_secret_value() if isinstance(v, SecretStr) else v for v in value])
            elif isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"NOTIFIER_{name.upper()}"] = str(value)
        return env


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment; a validation error becomes one readable ConfigError."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            field = "_".join(str(p) for p in err["loc"]).upper()
            parts.append(f"NOTIFIER_{field}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("invalid configuration: " + "; ".join(parts)) from None


def sentinel_hosts(url: str) -> tuple[list[tuple[str, int]], str, int]:
    """`redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER[/DB]` as (sentinels, master
    name, database). Raises ValueError naming what is wrong."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    hosts: list[tuple[str, int]] = []
    for item in filter(None, netloc.split(",")):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "26379")
        if not host or not port.isdigit():
            raise ValueError(f"sentinel address {item!r} is not HOST:PORT")
        hosts.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not hosts or not path:
        raise ValueError("a sentinel URL is redis+sentinel://HOST:PORT[,HOST:PORT]/MASTER[/DB]")
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("after the master name, a sentinel URL may only name a database number")
    return hosts, path[0], int(path[1]) if len(path) == 2 else 0
