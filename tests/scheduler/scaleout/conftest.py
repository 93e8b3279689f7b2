"""Multi-process proofs: real ``sopbot worker`` processes against a real
PostgreSQL database of their own (``sopbot_scaleout_<pid>``), never the suite's.

Skipped when PostgreSQL does not answer. The harness (seeding, starting and
stopping workers, the mock channel's witness) is ``benchmarks.scaleout``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))

from pgtools import drop_database, fresh_database, private_name, require_postgres  # noqa: E402

from sopbot import migrate  # noqa: E402
from sopbot.db import make_engine  # noqa: E402

DATABASE = private_name("sopbot_scaleout")


@pytest.fixture
def scale_url() -> Iterator[str]:
    """A new, empty database, migrated to head with `sopbot db upgrade`."""
    require_postgres()
    from benchmarks.scaleout import db_upgrade

    url = fresh_database(DATABASE)
    db_upgrade(url, ROOT)
    yield url
    drop_database(DATABASE)


@pytest.fixture
def scale_engine(scale_url: str) -> Iterator[Engine]:
    engine = make_engine(scale_url)
    assert migrate.schema_state(engine).ok
    yield engine
    engine.dispose()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Where worker processes run and write their logs."""
    return tmp_path
