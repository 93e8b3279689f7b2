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
    shutdown_seconds: float = Field(
        8.0,
        gt=0,
        description="SIGTERM: give back what was not handed over, finish or record the calls "
        "in flight, and exit within this many seconds (keep it under the orchestrator's kill "
        "timeout, e.g. docker compose stop_grace_period)",
    )
    max_attempts: int = Field(5, ge=1, description="attempts before a retryable error fails")
    retry_base_seconds: float = Field(30.0, gt=0, description="first retry backoff (doubles)")
    retry_max_seconds: float = Field(3600.0, gt=0, description="upper bound of one backoff")

    # fixed schedules (cron touchpoints)
    plan_interval_seconds: float = Field(
        15.0, gt=0, description="cron fan-out job interval; also a fixed start's later touchpoints"
    )
    plan_lookahead_seconds: int = Field(120, ge=0, description="fan out cron occurrences early")
    catch_up_days: int = Field(
        7, ge=0, description="after downtime, cron occurrences this far back are recorded missed"
    )

    # delivery policies: workspace defaults (a template's own settings win)
    quiet_hours: str | None = Field(
        None, description="default quiet hours in the template's zone, e.g. 22:00-08:00"
    )
    quiet_hours_policy: str = Field("defer", pattern="^(defer|skip)$", description="defer|skip")
    frequency_cap: str | None = Field(
        None, description="default per-contact cap: wecom_daily, wecom_weekly, wecom_monthly_days"
    )
    frequency_cap_policy: str = Field("defer", pattern="^(defer|skip)$", description="defer|skip")

    # channels
    # message content (sop_templates.sandbox): what one part's render may take
    render_budget_ms: int = Field(
        200,
        ge=1,
        le=10_000,
        description="CPU-time budget of rendering one message part (stopped anyway after ten times this in wall-clock time)",
    )
    render_max_chars: int = Field(
        20_000, ge=1, le=1_000_000, description="longest rendered message part (characters)"
    )
    send_concurrency: int = Field(
        8,
        ge=1,
        le=256,
        description="adapter calls in flight per batch; the batches in progress share "
        "send_concurrency x dispatch_pipeline, so one fills the slots another leaves",
    )
    dispatch_pipeline: int = Field(
        2,
        ge=1,
        le=8,
        description="batches in progress at once per worker (the next is claimed and "
        "rendered while the previous one waits on its channel)",
    )
    prepare_ahead_seconds: float = Field(
        1.5,
        ge=0,
        le=10,
        description="rows due at one instant (a fixed-time send to many) are claimed and "
        "rendered up to this long before it and handed to their channel at that instant; 0: off",
    )
    redis_url: str | None = Field(None, description="shared rate-limit buckets (else database)")
    breaker_threshold: int = Field(
        5, ge=1, description="consecutive failed channel calls that open its breaker"
    )
    breaker_cooldown_seconds: float = Field(60.0, gt=0, description="open breaker pause")
    breaker_probe_wait_seconds: float = Field(
        10.0, gt=0, description="while a half-open probe runs, others wait this long"
    )
    task_poll_seconds: float = Field(60.0, gt=0, description="task-mode result polling interval")
    task_confirm_hours: float = Field(
        72.0, gt=0, description="unconfirmed mass-send tasks become unknown after this"
    )

    # staff tasks (remind mode, scheduler.staff)
    staff_inbox: bool = Field(
        True,
        description="remind mode puts each delivery in its staff member's inbox and sends one "
        "digest per staff member per window (false: one app message per delivery)",
    )
    staff_digest_minutes: int = Field(
        60, ge=1, le=1440, description="digest window: at most one digest per staff member in it"
    )
    staff_nudge_minutes: int = Field(
        30, ge=0, description="nudge a staff member this long before tasks' deadlines (0: off)"
    )
    staff_link_hours: float = Field(
        72.0, gt=0, description="how long a signed staff inbox link stays valid"
    )
    staff_check_seconds: float = Field(
        60.0, ge=0, description="how often digests, nudges and staff deadlines are checked"
    )
    public_url: str | None = Field(
        None,
        description="sopbot's public base address (https://...) as staff members and channels "
        "reach it: inbox links and material addresses start with it; default http://host:port",
    )

    # WeCom (企业微信) callback: 客户联系 → 接收事件服务器 (the callback is off until all three are set)
    wecom_callback_token: str | None = Field(None, description="callback Token")
    wecom_callback_aes_key: str | None = Field(
        None, description="callback EncodingAESKey (43 characters)"
    )
    wecom_corp_id: str | None = Field(None, description="corp id the callbacks are addressed to")
    wecom_callback_window_seconds: float = Field(
        600.0,
        gt=0,
        description="callbacks whose signed timestamp is further than this from now are refused",
    )

    # delivery log retention (scheduler.analytics.retention)
    rollup_interval_seconds: float = Field(
        300.0,
        ge=0,
        description="how often the scheduler adds finished deliveries to the statistics "
        "rollups (0: only `sopbot retention rollup`)",
    )
    retention_days: int = Field(
        90, ge=0, description="archive finished deliveries older than this many days; 0 keeps all"
    )
    archive_dir: str = Field(
        "./sopbot-archive", description="where retention writes deliveries-<day>.ndjson.gz"
    )
    materials_dir: str = Field(
        "./sopbot-materials",
        description="where the material library keeps uploaded images and files",
    )
    material_link_days: float = Field(
        30.0,
        gt=0,
        description="signed material addresses in messages and the staff inbox stay valid "
        "this many days (rotating the secret key revokes them all)",
    )

    # operator UI and API auth (api.auth)
    secret_key: str | None = Field(
        None, description="signs session cookies and CSRF tokens; default: generated once, stored"
    )
    cookie_secure: bool = Field(
        False, description="mark the session cookie Secure (set when served over HTTPS)"
    )
    session_hours: float = Field(12.0, gt=0, description="UI login lifetime")
    max_body_bytes: int = Field(
        10 * 1024 * 1024, gt=0, description="largest request body (413 past it)"
    )
    max_import_bytes: int = Field(
        210 * 1024 * 1024,
        gt=0,
        description="largest body of POST /api/contacts/import (a 200 MB CSV and its form)",
    )
    login_max_failures: int = Field(
        5, gt=0, description="failed logins per username, and per address, within the window"
    )
    login_window_minutes: float = Field(
        15.0, gt=0, description="failed logins count this long; then the lock lifts"
    )
    require_approval: bool = Field(
        False, description="workspace default: templates need an approver before publishing"
    )
    ui_language: str = Field("zh_CN", pattern="^(zh_CN|en)$", description="default UI language")

    worker_id: str | None = Field(None, description="lease owner name; default host:pid")

    # tracked links (scheduler.outcomes.links, api/routes/links.py)
    link_base_url: str = Field(
        "http://127.0.0.1:8000", description="public address that short links start with"
    )
    link_prefix: str = Field(
        "l", pattern=r"^[a-z0-9-]{1,16}$", description="short links are /{prefix}/{token}"
    )
    link_click_flush_seconds: float = Field(
        0.2,
        ge=0,
        le=10,
        description="clicks are written in batches this often (0: each in its own request)",
    )

    # operations (scheduler.operations.heartbeat, api/routes/ops.py, sopbot.logging)
    heartbeat_seconds: float = Field(
        10.0, gt=0, description="how often a scheduler process records its heartbeat"
    )
    worker_stale_seconds: float = Field(
        45.0, gt=0, description="a worker not seen for this long is no longer counted live"
    )
    workspace_refresh_seconds: float = Field(
        2.0,
        gt=0,
        description="how often a process checks for workspace settings saved in another process",
    )
    metrics_cache_seconds: float = Field(
        5.0, ge=0, description="/metrics reuses its database figures for this long"
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="`sopbot worker` serves /metrics on this port"
    )
    log_format: str = Field("text", pattern="^(text|json)$", description="text|json")
    log_level: str = Field("INFO", description="root log level (DEBUG, INFO, WARNING, ...)")
    run_scheduler: bool = Field(True, description="run the scheduler inside `serve`")
    serve_scheduler_process: bool = Field(
        True,
        description="`serve` runs its scheduler in a child process, so pages never wait "
        "behind a burst (false: on the API's own event loop)",
    )
    sql_echo: bool = Field(False, description="log every SQL statement (debugging)")

    def public_base(self) -> str:
        """The address links leaving sopbot start with (no trailing slash)."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


def markdown_table() -> str:
    """Every setting as the README's configuration table (a test keeps them equal)."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if default is None:
            shown = "unset"
        elif isinstance(default, bool):
            shown = f"`{str(default).lower()}`"
        else:
            shown = f"`{default}`"
        meaning = (field.description or "").replace("|", "\\|")
        lines.append(f"| `SOPBOT_{name.upper()}` | {shown} | {meaning} |")
    return "\n".join(lines)
