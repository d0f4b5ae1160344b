"""The daemon's torch-free core: the worker supervisor and the job runner. The API process
builds on it and never imports torch (stdlib only here)."""
