"""Telemetry: one normalized sample from jtop, tegrastats, Linux or a replayed log
(stdlib only; jetson-stats is imported lazily, only when its socket exists)."""
