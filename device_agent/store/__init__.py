"""Durable state: the SQLite store, datasets, atomic writes and the data-dir layout."""
