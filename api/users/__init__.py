"""Users, roles, API tokens, UI sessions, the audit log and workspace settings."""
