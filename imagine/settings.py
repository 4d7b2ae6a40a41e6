"""One typed Settings object read from the environment and an optional `.env` file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "imagineart/imagineart-2.0-preview/text-to-image"


class Settings(BaseSettings):
    """Every setting the product reads; names are the environment variables, case-insensitive."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    database_url: str = Field(
        default="sqlite:///var/imagine.sqlite3",
        description="SQLAlchemy URL of the database (PostgreSQL in production, SQLite by default).",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="Redis URL: Celery broker and slot signals."
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker URL when it is not REDIS_URL (the demo's embedded one).",
    )
    fal_key: SecretStr | None = Field(
        default=None, description="fal API key `key_id:key_secret`; never logged or stored."
    )
    fal_queue_url: str = Field(
        default="https://queue.fal.run", description="Base URL of fal's queue API (or falsim)."
    )
    fal_jwks_url: str = Field(
        default="https://rest.fal.ai/.well-known/jwks.json",
        description="Where the webhook signing keys (JWKS) are fetched from.",
    )
    fal_model: str = Field(default=DEFAULT_MODEL, description="fal endpoint id to submit to.")
    webhook_base_url: str | None = Field(
        default=None,
        description="Public base URL of the receiver; unset means polling mode (no webhooks).",
    )
    webhook_verify: bool = Field(
        default=True,
        description="Verify fal's ED25519 webhook signatures (never off in production).",
    )
    webhook_max_body_bytes: int = Field(
        default=1_048_576, description="Webhook bodies larger than this get 413."
    )
    archive_dir: Path = Field(
        default=Path("var/archive"), description="Where downloaded images and thumbnails are kept."
    )
    archive_enabled: bool = Field(default=True, description="Download and keep every image.")
    max_in_flight: int = Field(
        default=40, ge=1, description="Most jobs SUBMITTING/SUBMITTED/IN_PROGRESS at fal at once."
    )
    max_attempts: int = Field(default=5, ge=1, description="Submit attempts before a job FAILS.")
    retry_backoff_base: float = Field(
        default=2.0, gt=0, description="Seconds of the first retry backoff (doubles each attempt)."
    )
    retry_backoff_max: float = Field(default=300.0, gt=0, description="Cap of one retry backoff.")
    http_timeout: float = Field(default=30.0, gt=0, description="Seconds for one call to fal.")
    poll_after_seconds: float = Field(
        default=120.0,
        gt=0,
        description="A submitted job with no webhook for this long is polled by the reconciler.",
    )
    submitting_stale_seconds: float = Field(
        default=120.0,
        gt=0,
        description="A job SUBMITTING this long is recovered by the reconciler.",
    )
    reconcile_interval: float = Field(
        default=5.0, gt=0, description="Seconds between reconciler passes (Celery beat)."
    )
    price_1k_usd: float = Field(default=0.03, ge=0, description="Estimated price of one 1K image.")
    price_2k_usd: float = Field(default=0.05, ge=0, description="Estimated price of one 2K image.")
    api_token: SecretStr | None = Field(
        default=None,
        description="When set, every /api route needs `Authorization: Bearer <token>`.",
    )
    notify_secret: SecretStr | None = Field(
        default=None, description="Secret for signing outgoing notifications (Standard Webhooks)."
    )
    job_hooks: list[str] = Field(
        default_factory=list,
        description="Python callables `module:function` called with each finished job.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level of every process."
    )

    @field_validator("webhook_base_url", "fal_queue_url", "fal_jwks_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @property
    def celery_broker_url(self) -> str:
        """The broker Celery connects to."""
        return self.broker_url or self.redis_url

    @property
    def polling_mode(self) -> bool:
        """True when fal cannot reach us and the reconciler must poll every job."""
        return not self.webhook_base_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
