"""Store records -> the API's response shapes (:mod:`device_agent.api.schemas`)."""
import time
from typing import Dict, Optional

from device_agent import classmetrics
from device_agent.jobspec import LEGACY_MB, JobReport, to_mib
from device_agent.store.db import Store

# Job.memory field -> (the report's field, in bytes; the live progress fields, in the
# trainer's 10^6-byte MB). Every figure is shown in MiB, the unit of the job's telemetry.
_MEMORY = (("memory_limit_mb", "memory_limit_bytes", ("memory_limit_mb",)),
           ("saved_activation_mb", "saved_activation_bytes", ("saved_activation_mb",)),
           ("estimated_peak_mb", "estimated_peak_bytes", ("estimated_peak_mb",)),
           ("step_peak_rss_mb", "step_peak_rss_bytes", ("step_peak_rss_mb", "rss_mb")),
           ("worker_peak_rss_mb", "peak_rss_bytes", ()),
           ("cuda_peak_mb", "cuda_peak_bytes", ("cuda_peak_mb",)))


def _memory(progress: Dict[str, object], report: Optional[JobReport]) -> Dict[str, object]:
    """The report's figures once it is there, else the live ones."""
    memory = {}  # type: Dict[str, object]
    for shown, reported, live in _MEMORY:
        value = report.mib(reported) if report is not None else None
        if value is None:
            value = next((to_mib(progress[key], LEGACY_MB) for key in live
                          if progress.get(key) is not None), None)
        memory[shown] = value
    for key in ("batch_size", "micro_batch"):
        final = getattr(report, key) if report is not None else None
        memory[key] = final if final is not None else progress.get(key)
    memory["adjustments"] = (report.memory_adjustments if report is not None
                             else progress.get("memory_adjustments", []))
    return memory


def job_view(record: Dict[str, object]) -> Dict[str, object]:
    """A job with its live progress, or its final report once it has one."""
    progress = record["progress"]
    report = JobReport.from_dict(record["report"]) if record["report"] else None
    epoch, step = progress.get("epoch"), progress.get("step")
    epochs, steps = progress.get("epochs"), progress.get("steps")
    fraction = 0.0
    if epochs and steps and epoch is not None and step is not None:
        fraction = min(1.0, (epoch * steps + step) / float(epochs * steps))
    if record["state"] == "succeeded":
        fraction = 1.0
    final = report.to_dict() if report is not None else {}
    return {
        "id": record["id"], "domain": record["domain"], "dataset_id": record["dataset_id"],
        "snapshot_id": record.get("snapshot_id"),
        "warm_started": _final_or_live(final, progress, "warm_started"),
        "warm_start_note": _final_or_live(final, progress, "warm_start_note"),
        "state": record["state"],
        "params": record["params"], "created_at": record["created_at"],
        "started_at": record["started_at"], "finished_at": record["finished_at"],
        "attempts": record["attempts"], "error": record["error"],
        "progress": {"epoch": epoch, "epochs": epochs, "step": step, "steps": steps,
                     "fraction": fraction,
                     "eta_s": 0.0 if record["state"] == "succeeded" else progress.get("eta_s"),
                     "loss": progress.get("loss")},
        "history": final.get("history") or progress.get("history", []),
        "val_top1": final.get("val_top1"),
        "memory": _memory(progress, report),
        "latency": {k: _final_or_live(final, progress, k) for k in JobReport.LATENCY},
        "cpu": final.get("cpu") or progress.get("cpu") or {},
        "adapter_bytes": final.get("adapter_bytes"),
        "trainable_params": final.get("trainable_params"),
        "telemetry": dict(record.get("telemetry") or {}, duration_s=_duration(record)),
        "class_results": class_results_view(record["report"]),
    }


def class_results_view(stored: Optional[Dict[str, object]]) -> Optional[Dict[str, object]]:
    """The per-class results of a stored report or version summary as
    :class:`~device_agent.api.schemas.ClassResults` (None when it has none)."""
    results = classmetrics.results_of((stored or {}).get("classes"),
                                      (stored or {}).get("val_confusion"))
    if results is None:
        return None
    return dict(results._asdict(), per_class=[f._asdict() for f in results.per_class],
                most_confused=[p._asdict() for p in results.most_confused])


def _final_or_live(final: Dict[str, object], progress: Dict[str, object], key: str) -> object:
    value = final.get(key)
    return progress.get(key) if value is None else value


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
                          "job_id": v["job_id"], "val_top1": v["summary"].get("val_top1"),
                          "snapshot_id": v.get("snapshot_id")}
                         for v in versions],
            "last_job": job_view(last) if last else None,
            "class_results": class_results_view(summary)}
