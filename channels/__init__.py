"""Channel adapters: the narrow seam between sopbot and a chat platform."""
