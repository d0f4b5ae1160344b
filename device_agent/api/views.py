"""Store records -> the API's response shapes (:mod:`device_agent.api.schemas`)."""
import time
from typing import Dict, Optional

from device_agent.store.db import Store

_MEMORY = ("batch_size", "micro_batch", "memory_limit_mb", "saved_activation_mb",
           "estimated_peak_mb", "step_peak_rss_mb", "cuda_peak_mb")
_LATENCY = ("step_ms_p50", "step_ms_p95", "images_per_sec")


def job_view(record: Dict[str, object]) -> Dict[str, object]:
    """A job with its live progress, or its final report once it has one."""
    progress, report = record["progress"], record["report"]
    latest = dict(progress, **report)  # the report's final figures win
    epoch, step = progress.get("epoch"), progress.get("step")
    epochs, steps = progress.get("epochs"), progress.get("steps")
    fraction = 0.0
    if epochs and steps and epoch is not None and step is not None:
        fraction = min(1.0, (epoch * steps + step) / float(epochs * steps))
    if record["state"] == "succeeded":
        fraction = 1.0
    memory = {k: latest.get(k) for k in _MEMORY}
    memory["step_peak_rss_mb"] = latest.get("step_peak_rss_mb") or progress.get("rss_mb")
    memory["worker_peak_rss_mb"] = report.get("peak_rss_mb")
    memory["adjustments"] = report.get("memory_adjustments",
                                       progress.get("memory_adjustments", []))
    return {
        "id": record["id"], "domain": record["domain"], "state": record["state"],
        "params": record["params"], "created_at": record["created_at"],
        "started_at": record["started_at"], "finished_at": record["finished_at"],
        "attempts": record["attempts"], "error": record["error"],
        "progress": {"epoch": epoch, "epochs": epochs, "step": step, "steps": steps,
                     "fraction": fraction,
                     "eta_s": 0.0 if record["state"] == "succeeded" else progress.get("eta_s"),
                     "loss": progress.get("loss")},
        "history": report.get("history") or progress.get("history", []),
        "val_top1": report.get("val_top1"),
        "memory": memory,
        "latency": {k: latest.get(k) for k in _LATENCY},
        "cpu": latest.get("cpu") or {},
        "adapter_bytes": report.get("adapter_bytes"),
        "trainable_params": report.get("trainable_params"),
        "telemetry": dict(record.get("telemetry") or {}, duration_s=_duration(record)),
    }


def _duration(record: Dict[str, object]) -> Optional[float]:
    started = record["started_at"]
    if started is None:
        return None
    return (record["finished_at"] or time.time()) - started


def domain_status(store: Store, domain: str) -> Dict[str, object]:
    record = store.get_domain(domain)
    versions = store.versions(domain)
    active = next((v for v in versions if v["version"] == record["active_version"]), None)
    summary = active["summary"] if active else {}  # type: Dict[str, object]
    last = store.last_job(domain)  # type: Optional[Dict[str, object]]
    return {"name": domain, "created_at": record["created_at"],
            "active_version": record["active_version"],
            "method": summary.get("method"), "backbone": summary.get("backbone"),
            "classes": summary.get("classes", []),
            "val_top1": summary.get("val_top1"), "adapter_bytes": summary.get("adapter_bytes"),
            "trainable_params": summary.get("trainable_params"),
            "trained_at": active["created_at"] if active else None,
            "versions": [{"version": v["version"], "created_at": v["created_at"],
                          "job_id": v["job_id"], "val_top1": v["summary"].get("val_top1")}
                         for v in versions],
            "last_job": job_view(last) if last else None}
