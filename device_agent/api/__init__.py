"""The HTTP API (FastAPI + pydantic v2, Python 3.8+). It never imports torch: training and
inference happen in the worker process (device_agent.worker) it supervises."""
