"""Log set-up for the ``sopbot`` processes: plain text by default, one JSON
object per line with ``SOPBOT_LOG_FORMAT=json`` (for Loki, Elasticsearch,
CloudWatch, ...).

Fields passed with ``extra=`` (``delivery_ids``, ``worker_id``, ``reason``, ...)
become JSON fields, so a delivery id from a complaint can be searched for."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from sopbot.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("x", logging.INFO, __file__, 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, pid, the static
    ``fields`` and every ``extra=`` field."""

    def __init__(self, fields: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
            **self.fields,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


# Libraries that narrate routine work at INFO: APScheduler two lines per job run
# (the dispatch tick runs every second), Alembic one per plugin it loads. At
# the default level they are held to warnings and errors; SOPBOT_LOG_LEVEL=debug
# lets them through again.
CHATTY_LOGGERS = ("apscheduler", "alembic.runtime.plugins")


class _BusyTickFilter(logging.Filter):
    """APScheduler warns each time a tick is skipped because the previous one
    still runs; for the dispatch tick draining a backlog that is the design
    (max_instances=1), not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


def configure_logging(settings: Settings, **fields: Any) -> None:
    """Configure the root logger once for a CLI process. ``fields`` (e.g.
    ``worker_id``) are added to every JSON line."""
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter({k: v for k, v in fields.items() if v is not None}))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    quiet = logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
    apscheduler = logging.getLogger("apscheduler.scheduler")
    if not any(isinstance(f, _BusyTickFilter) for f in apscheduler.filters):
        apscheduler.addFilter(_BusyTickFilter())


def uvicorn_log_config(settings: Settings, process_role: str = "api") -> dict[str, Any] | None:
    """A ``logging.config.dictConfig`` for uvicorn that writes JSON too (uvicorn
    applies it in each of its worker processes). ``None`` keeps uvicorn's own."""
    if settings.log_format != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {"()": "sopbot.logging.JsonFormatter", "fields": {"process_role": process_role}}
        },
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "json"},
        },
        "root": {"handlers": ["default"], "level": settings.log_level.upper()},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": True},
        },
    }
