"""The FastAPI app (JSON API under /api, operator UI) and the CLI."""
