"""Durable state: atomic file writes now; the SQLite store joins it with the daemon."""
