"""Audiences: who an SOP reaches, and the WeCom callback plumbing that feeds it."""
