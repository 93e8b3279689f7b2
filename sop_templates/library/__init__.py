"""The built-in template library: the three SOP scenarios as ready-made specs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

LIBRARY_DIR = Path(__file__).resolve().parent


def load(name: str) -> dict[str, Any]:
    """One library spec by file stem (``new_friend``, ``tagged_class``, ``store_groups``)."""
    return yaml.safe_load((LIBRARY_DIR / f"{name}.yaml").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def names() -> list[str]:
    return sorted(p.stem for p in LIBRARY_DIR.glob("*.yaml"))


def catalog() -> list[dict[str, Any]]:
    """Every library scenario to start from: its key, name, description and spec."""
    return [
        {"key": key, "name": spec["name"], "description": spec.get("description", ""), "spec": spec}
        for key, spec in ((k, load(k)) for k in names())
    ]
