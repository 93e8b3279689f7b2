"""Running sopbot: worker processes, heartbeats, metrics and the dashboard."""
