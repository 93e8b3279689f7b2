"""Fixtures of the browser tests (see ``browser_kit``)."""

from browser_kit import live, page, pytest_collection_modifyitems

__all__ = ["live", "page", "pytest_collection_modifyitems"]
