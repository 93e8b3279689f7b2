"""Alembic migrations of the sopbot schema (``sopbot db upgrade``; see sopbot.migrate)."""
