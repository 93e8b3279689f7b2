"""Orchestration across domains: how SOPs react to audience events, publishing, the editor's timeline and test sends."""
