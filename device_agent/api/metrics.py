"""``GET /metrics``: Prometheus text format through prometheus-client.

Board gauges come from the sampler's latest sample and per-domain figures from the store
at scrape time (a custom collector: no stale label sets); latencies are histograms fed by
the HTTP middleware and by the worker's training events. One registry per app.
"""
import time
from typing import Dict, Iterator, Optional

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily

from device_agent import classmetrics

STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
JOB_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 3600, 7200, 21600)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
MB = 1024 * 1024
# Per-class series of one domain at most: each class is a label value, and every label
# value is another time series, so their number must stay bounded
# (https://prometheus.io/docs/practices/naming/#labels). Over the cap, the classes of lowest
# recall are the ones exported (those worth an alert), ties by name.
MAX_CLASSES_EXPORTED = 50


class Metrics(object):
    def __init__(self, sampler, store) -> None:
        self.registry = CollectorRegistry()
        self.http = Histogram("device_agent_http_request_duration_seconds",
                              "HTTP request latency by route", ["method", "route", "status"],
                              buckets=HTTP_BUCKETS, registry=self.registry)
        self.steps = Histogram("device_agent_train_step_duration_seconds",
                               "training step latency", buckets=STEP_BUCKETS,
                               registry=self.registry)
        self.jobs = Histogram("device_agent_job_duration_seconds",
                              "training job run time, by final state", ["state"],
                              buckets=JOB_BUCKETS, registry=self.registry)
        self.registry.register(_BoardCollector(sampler, store))
        self.started = {}  # type: Dict[str, float]
        # the running job's latest threads and CPU share
        self.training_cpu = {}  # type: Dict[str, float]
        self.registry.register(_TrainingCpuCollector(self.training_cpu))
        self.registry.register(_ClassCollector(store))  # per-class results (issue 14)

    def observe_event(self, job_id: str, event: Dict[str, object]) -> None:
        """A worker's job event as the runner saw it (``job_done``: the job's end)."""
        kind = event.get("event")
        for ms in event.get("step_ms_recent") or []:
            self.steps.observe(ms / 1000.0)
        cpu = event.get("cpu") or {}
        if cpu.get("cpu_share") is not None:
            self.training_cpu.update(share=cpu["cpu_share"], threads=cpu.get("intra_op"))
        if kind == "start":
            self.started[job_id] = time.time()
        elif kind == "job_done":
            self.training_cpu.clear()
            began = self.started.pop(job_id, None)
            if began is not None:
                self.jobs.labels(str(event["state"])).observe(time.time() - began)


class _TrainingCpuCollector(object):
    """The running job's threads and CPU share (absent between jobs): a starved job shows
    as a share far below 1 (README: Sharing the CPU)."""

    def __init__(self, figures: Dict[str, float]) -> None:
        self.figures = figures

    def collect(self) -> Iterator[GaugeMetricFamily]:
        figures = dict(self.figures)
        yield _gauge("device_agent_train_cpu_share", "CPU the running job got, as a share of "
                     "its threads' CPUs (0-1)", figures.get("share"))
        yield _gauge("device_agent_train_threads", "intra-op threads of the running job",
                     figures.get("threads"))


class _BoardCollector(object):
    def __init__(self, sampler, store) -> None:
        self.sampler = sampler
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sample = self.sampler.latest() or {}
        yield from _memory(sample)
        yield from _board(sample)
        yield from self._jobs_and_domains()

    def _jobs_and_domains(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("device_agent_jobs", "jobs by state", labels=["state"])
        for state, count in sorted(self.store.job_counts().items()):
            jobs.add_metric([state], count)
        yield jobs
        top1 = GaugeMetricFamily("device_agent_domain_val_top1",
                                 "validation top-1 of each domain's active adapter",
                                 labels=["domain", "method", "backbone"])
        for domain, summary in sorted(self.store.active_summaries().items()):
            if summary.get("val_top1") is not None:
                top1.add_metric([domain, str(summary.get("method")),
                                 str(summary.get("backbone"))], summary["val_top1"])
        yield top1


def _gauge(name: str, help_text: str, value: Optional[float], scale: float = 1.0):
    family = GaugeMetricFamily(name, help_text)
    if value is not None:
        family.add_metric([], value * scale)
    return family


def _memory(sample: Dict[str, object]) -> Iterator[GaugeMetricFamily]:
    worker = sample.get("worker") or {}
    for name, key, text in (("ram_used", "ram_used_mb", "RAM in use"),
                            ("ram_total", "ram_total_mb", "RAM size"),
                            ("swap_used", "swap_used_mb", "swap in use"),
                            ("swap_total", "swap_total_mb", "swap size")):
        yield _gauge("device_agent_%s_bytes" % name, text, sample.get(key), MB)
    yield _gauge("device_agent_worker_rss_bytes", "the torch worker's resident memory",
                 worker.get("rss_mb"), MB)
    yield _gauge("device_agent_worker_cuda_allocated_bytes", "CUDA memory the worker holds",
                 worker.get("cuda_allocated_mb"), MB)


def _board(sample: Dict[str, object]) -> Iterator[GaugeMetricFamily]:
    yield _gauge("device_agent_gpu_load_ratio", "integrated GPU load (0-1)",
                 sample.get("gpu_load_pct"), 0.01)
    yield _gauge("device_agent_power_total_watts", "module input power by the board's rule",
                 sample.get("power_total_mw"), 0.001)
    rails = GaugeMetricFamily("device_agent_power_rail_watts", "power per rail (current)",
                              labels=["rail"])
    for rail, values in sorted((sample.get("power_mw") or {}).items()):
        rails.add_metric([rail], values["cur"] / 1000.0)
    yield rails
    temps = GaugeMetricFamily("device_agent_temperature_celsius", "thermal sensors",
                              labels=["sensor"])
    for sensor, value in sorted((sample.get("temps_c") or {}).items()):
        temps.add_metric([sensor], value)
    yield temps
    cpus = GaugeMetricFamily("device_agent_cpu_load_ratio", "per-core load (0-1)",
                             labels=["core"])
    for index, core in enumerate(sample.get("cpus") or []):
        if core is not None and core.get("load_pct") is not None:
            cpus.add_metric([str(index)], core["load_pct"] / 100.0)
    yield cpus


class _ClassCollector(object):
    """Per-class recall and precision of each domain's active adapter version, read from
    its stored summary at scrape time (a deleted domain has no active version: no series).
    Label values are escaped by prometheus-client's exposition, not here."""

    def __init__(self, store) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        recall = GaugeMetricFamily("device_agent_class_recall", "validation recall of each "
                                   "class of each domain's active adapter (0-1; at most %d "
                                   "classes a domain, lowest recall first)"
                                   % MAX_CLASSES_EXPORTED, labels=["domain", "class"])
        precision = GaugeMetricFamily("device_agent_class_precision", "validation precision "
                                      "of the same classes (0-1; absent for a class never "
                                      "predicted)", labels=["domain", "class"])
        classes = GaugeMetricFamily("device_agent_domain_classes", "classes of each domain's "
                                    "active adapter (more than the per-class series when "
                                    "over the cap)", labels=["domain"])
        for domain, summary in sorted(self.store.active_summaries().items()):
            results = classmetrics.results_of(summary.get("classes"),
                                              summary.get("val_confusion"))
            if results is None:
                continue
            classes.add_metric([domain], len(results.classes))
            for figures in exported_classes(results.per_class):
                recall.add_metric([domain, figures.name], figures.recall)
                if figures.precision is not None:
                    precision.add_metric([domain, figures.name], figures.precision)
        yield recall
        yield precision
        yield classes


def exported_classes(per_class, cap: int = MAX_CLASSES_EXPORTED) -> list:
    """The classes with a recall, at most ``cap``: the lowest recall first, ties by name."""
    known = [f for f in per_class if f.recall is not None]
    return sorted(known, key=lambda f: (f.recall, f.name))[:cap]
