"""Settings from ``SOPBOT_*`` environment variables and an optional ``.env`` /
``sopbot.toml``-less env file. Nothing reads settings at import time: callers
build ``Settings()`` (or pass their own) and hand it to ``create_app``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SOPBOT_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str = Field(
        "sqlite:///./sopbot.db", description="SQLAlchemy URL; sqlite:/// or postgresql+psycopg://"
    )
    default_timezone: str = Field("Asia/Shanghai", description="IANA zone for new templates")
    host: str = Field("127.0.0.1", description="address `sopbot serve` binds")
    port: int = Field(8000, description="port `sopbot serve` binds")

    # dispatch
    tick_seconds: float = Field(1.0, gt=0, description="how often due deliveries are claimed")
    claim_batch_size: int = Field(500, ge=1, le=10_000, description="rows claimed per batch")
    max_batches_per_tick: int = Field(200, ge=1, description="cap on batches one tick drains")
    lease_seconds: int = Field(120, ge=5, description="how long a claim is held before reaping")
    max_attempts: int = Field(5, ge=1, description="attempts before a retryable error fails")
    retry_base_seconds: float = Field(30.0, gt=0, description="first retry backoff (doubles)")
    retry_max_seconds: float = Field(3600.0, gt=0, description="upper bound of one backoff")

    # fixed schedules (cron touchpoints)
    plan_interval_seconds: float = Field(15.0, gt=0, description="cron fan-out job interval")
    plan_lookahead_seconds: int = Field(120, ge=0, description="fan out cron occurrences early")
    catch_up_days: int = Field(
        7, ge=0, description="after downtime, cron occurrences this far back are recorded missed"
    )

    worker_id: str | None = Field(None, description="lease owner name; default host:pid")
    run_scheduler: bool = Field(True, description="run the scheduler inside `serve`")
    sql_echo: bool = False
