"""Every knob of the engine, read from `NOTIFIER_*` environment variables or a `.env` file."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    # Web
    host: str = "0.0.0.0"  # noqa: S104  (a server listens on all interfaces by default)
    port: int = Field(default=8000, validation_alias=AliasChoices("NOTIFIER_PORT", "PORT"), ge=0, le=65535)
    public_url: str = "http://localhost:8000"
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_batch_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)

    # Per API key and web process: sustained requests/s and burst; 0 turns the limit off.
    api_rate_limit: float = Field(default=500.0, ge=0)
    api_rate_burst: int = Field(default=1000, ge=1)

    # Secrets
    secret_key: SecretStr | None = None

    # SMTP
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_tls: Literal["none", "starttls", "tls"] = "none"
    smtp_timeout: float = Field(default=30.0, gt=0)
    smtp_pool_size: int = Field(default=4, ge=1, le=64)
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
    inbox_heartbeat_seconds: float = Field(default=15.0, gt=0, le=300)

    # Mail identity
    service_from: str = "Notifier <no-reply@localhost>"
    newsletter_from: str = "Notifier News <news@localhost>"
    unsubscribe_mailto: str | None = None
    postal_address: str = ""
    list_id_domain: str = "notifier.localhost"
    dkim_domain: str | None = None
    dkim_selector: str | None = None
    dkim_private_key: SecretStr | None = None
    dkim_private_key_path: Path | None = None

    # Digests and workers
    immediate_coalesce_seconds: int = Field(default=120, ge=0)
    digest_max_per_category: int = Field(default=5, ge=1)
    worker_max_jobs: int = Field(default=20, ge=1)
    retention_days: int = Field(default=365, ge=1)

    # Newsletters
    newsletter_double_opt_in: bool = Field(
        default=False, description="opt-ins count only after the member confirms by e-mail"
    )

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
        if scheme not in {"redis", "rediss", "unix"}:
            raise ValueError(
                f"must start with redis://, rediss:// or unix://, got {scheme or 'no scheme'}://"
            )
        return value

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
            if isinstance(value, SecretStr):
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
