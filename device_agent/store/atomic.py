"""Moved to :mod:`device_agent.atomic` (a ground-floor module both columns use); this name
stays only for the routers that still import it from here."""
from device_agent.atomic import write_bytes, write_json

__all__ = ["write_bytes", "write_json"]
