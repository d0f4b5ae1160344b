"""The torch worker: speaks the protocol on stdin/stdout (stderr carries its logs).

It owns one frozen backbone per (name, weights), shared by a training net and an inference
net -- two AdaptedNets around the same Backbone, so a prediction never switches the domain
being trained. One training job runs at a time, in a thread, sending ``job_event``s and at
its end one ``job_done`` with the report; the main loop keeps answering status, predict and
cancel meanwhile (a cancel sets the flag the trainer's ``should_stop`` reads). Every
exception becomes an ``error`` reply (one boundary); a broken stream ends the process, and
the API restarts it.

    python -m device_agent.worker [--device auto] [--weights random]
"""
import argparse
import io
import os
import platform
import signal
import sys
import threading
import time
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
from PIL import Image

from device_agent import __version__, bounds
from device_agent.cpu_budget import ThreadPolicy, plan_threads, read_budget
from device_agent.errors import Conflict, InvalidInput
from device_agent.jobspec import MIB, JobReport, TrainParams
from device_agent.model import adapter_io
from device_agent.model.backbones import build_backbone
from device_agent.model.layers import Backbone
from device_agent.model.network import AdaptedNet
from device_agent.protocol import messages
from device_agent.protocol.framing import ProtocolError
from device_agent.protocol.peer import Peer
from device_agent.training import data
from device_agent.training.job import add_job_domain, train_domain, warm_start
from device_agent.training.loop import Stopped, TrainConfig, peak_rss_mb, resolve_device
from device_agent.training.threads import CpuMeter, ThreadTuner, apply_policy, set_threads
from device_agent.worker.backends import PredictBackends

STEP_EVENT_INTERVAL_S = 0.5
# The inference cache's bounds (adapters kept loaded for predictions) and the decode limit;
# the API's environment reaches the worker, so DEVICE_AGENT_MAX_PIXELS applies to both.
CACHE_DOMAINS_ENV = "DEVICE_AGENT_WORKER_CACHE_DOMAINS"
CACHE_MB_ENV = "DEVICE_AGENT_WORKER_CACHE_MB"
MAX_PIXELS_ENV = "DEVICE_AGENT_MAX_PIXELS"


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


def _error(exc: BaseException) -> Dict[str, str]:
    reply = messages.error_reply(0, exc)
    return {"code": reply["code"], "message": reply["message"]}


class Worker(object):
    def __init__(self, peer: Peer, threads: ThreadPolicy, device: str = "auto",
                 weights: Optional[str] = None) -> None:
        self.peer = peer
        self.threads = threads
        self.device = resolve_device(device)
        self.weights = weights  # None: the manifest's files; "random": tests only
        self.backbones = {}  # type: Dict[str, Backbone]
        self.inference = {}  # type: Dict[str, AdaptedNet]
        # domain -> (adapter dir, config), least recently used first (an LRU, bounded below)
        self.loaded = OrderedDict()  # type: OrderedDict
        self.cache_domains = _env_int(CACHE_DOMAINS_ENV, 8)
        self.cache_bytes = _env_int(CACHE_MB_ENV, 256) << 20
        self.max_pixels = _env_int(MAX_PIXELS_ENV, bounds.DEFAULT_MAX_PIXELS)
        self.job = None  # type: Optional[Tuple[str, threading.Thread, threading.Event]]
        self.predict_tuner = self._tuner()
        # torch, onnxruntime or tensorrt (DEVICE_AGENT_PREDICT_BACKEND; worker/backends.py)
        self.backends = PredictBackends.from_environ(self.device, threads.intra_op,
                                                     busy=lambda: self.job is not None)
        self.handlers = {"status": self.status, "train": self.train, "predict": self.predict,
                         "load": self.load, "forget": self.forget, "cancel": self.cancel,
                         "shutdown": self.status, "export": self.export}

    def serve(self) -> int:
        self.peer.send("hello", agent_version=__version__, protocol=messages.PROTOCOL_VERSION,
                       python=platform.python_version(), torch=torch.__version__,
                       device=str(self.device), threads=self.threads.as_dict())
        while True:
            try:
                frame = self.peer.receive()
            except ProtocolError as exc:  # the stream cannot be resynchronised: say so, end
                self.peer.send_header(messages.error_reply(0, exc))
                return 2
            if frame is None:
                return 0
            header, payload = frame
            kind = header["kind"]
            try:
                if kind not in messages.REQUESTS:
                    raise ProtocolError("%s is not a request" % kind)
                self.peer.send("result", reply_to=header["id"],
                               data=self.handlers[kind](header, payload))
            except Exception as exc:  # the one place errors become replies
                self.peer.send_header(messages.error_reply(header["id"], exc))
            if kind == "shutdown":
                return 0

    # --- requests -----------------------------------------------------------------------

    def status(self, header: dict, payload: bytes) -> Dict[str, object]:
        return {"busy": self.job is not None, "job_id": self.job[0] if self.job else None,
                "device": str(self.device), "backbones": sorted(self.backbones),
                "domains": sorted(self.loaded), "threads": self._threads_in_use(),
                "peak_rss_mb": peak_rss_mb(), "cuda": self._cuda_memory(),
                "predict_backend": self.backends.as_dict()}

    def _threads_in_use(self) -> Dict[str, object]:
        """The policy, and what torch and OpenMP actually run with (this thread's view)."""
        return dict(self.threads.as_dict(), torch_intra_op=torch.get_num_threads(),
                    torch_inter_op=torch.get_num_interop_threads(),
                    omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))

    def _cuda_memory(self) -> Optional[Dict[str, float]]:
        """CUDA allocator figures in MiB, the unit the API shows."""
        if self.device.type != "cuda":
            return None
        return {"cuda_allocated_mb": torch.cuda.memory_allocated(self.device) / MIB,
                "cuda_reserved_mb": torch.cuda.memory_reserved(self.device) / MIB,
                "cuda_peak_mb": torch.cuda.max_memory_allocated(self.device) / MIB}

    def train(self, header: dict, payload: bytes) -> Dict[str, object]:
        if self.job is not None:
            raise Conflict("the worker is training job %s; one job runs at a time" % self.job[0])
        params = TrainParams.from_mapping(header["params"])
        config = TrainConfig.from_params(params, str(self.device)).validate()
        split = data.discover(header["dataset_dir"], config.val_fraction, config.seed)
        cancel = threading.Event()
        thread = threading.Thread(target=self._run_job, name="train-" + header["job_id"],
                                  args=(header, params, config, split, cancel), daemon=True)
        self.job = (header["job_id"], thread, cancel)
        thread.start()
        return {"started": True, "classes": split.classes, "train_images": len(split.train),
                "val_images": len(split.val)}

    def export(self, header: dict, payload: bytes) -> Dict[str, object]:
        """An adapter version's ONNX bundle (device_agent/export). Not beside a training
        job: on a 4 GB board a second backbone and the exporter's trace would crowd it."""
        if self.job is not None:
            raise Conflict("the worker is training job %s; export after it" % self.job[0])
        from device_agent.export.worker_request import handle_export

        return handle_export(header)

    def cancel(self, header: dict, payload: bytes) -> Dict[str, object]:
        if self.job is None or self.job[0] != header["job_id"]:
            return {"cancelled": False}
        self.job[2].set()
        return {"cancelled": True}

    def predict(self, header: dict, payload: bytes) -> Dict[str, object]:
        images = []
        for index, blob in enumerate(messages.split_parts(header, payload)):
            # The API checked every header already; checked again here, before load(), so
            # no caller can make the worker decode a pixel bomb.
            bounds.check_image_header(blob, self.max_pixels, "image %d" % index)
            try:
                with Image.open(io.BytesIO(blob)) as image:
                    image.load()
                    images.append(data.to_rgb(image))
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise InvalidInput("image %d is not a readable image: %s" % (index, exc)) from exc
        if not images or header["top_k"] < 1:
            raise InvalidInput("predict needs at least one image and top_k >= 1")
        net, config = self._domain_net(header["domain"], header["adapter_dir"])
        # This thread's own OpenMP team: tuned when idle, a small one beside a training job
        # (which has its own team) so that neither starves the other.
        tuner = self.predict_tuner
        if self.job:
            set_threads(self.threads.predict_while_training)
        else:
            set_threads(tuner.threads() if tuner is not None else self.threads.intra_op)
        started = time.time()
        answer = self.backends.classify(header["domain"], header["adapter_dir"], net, config,
                                        images, header["top_k"])
        seconds = time.time() - started
        if tuner is not None and not self.job:
            tuner.record(seconds, len(images))
        return {"predictions": answer.tops, "latency_ms": 1000 * seconds,
                "backend": answer.backend}

    def _tuner(self) -> Optional[ThreadTuner]:
        """None where the count is fixed: an override, one CPU, or a GPU doing the work."""
        if not self.threads.adaptive or self.device.type != "cpu":
            return None
        return ThreadTuner(self.threads.intra_op)

    def forget(self, header: dict, payload: bytes) -> Dict[str, object]:
        """Drop a (deleted) domain's adapter from the inference cache."""
        self.backends.forget(header["domain"])
        return {"forgotten": self._evict(header["domain"])}

    def load(self, header: dict, payload: bytes) -> Dict[str, object]:
        """Load (and so validate against the live backbone) a domain's adapter."""
        _, config = self._domain_net(header["domain"], header["adapter_dir"])
        return {"method": config["method"], "backbone": config["backbone"]["name"],
                "classes": config["class_names"], "metrics": config.get("metrics", {})}

    # --- models -------------------------------------------------------------------------

    def _backbone(self, name: str) -> Backbone:
        if name not in self.backbones:
            backbone, _ = build_backbone(name, self.weights)
            self.backbones[name] = backbone.to(self.device)
        return self.backbones[name]

    def _domain_net(self, domain: str, adapter_dir: str) -> Tuple[AdaptedNet, dict]:
        """The inference net with ``domain`` active, (re)loading its adapter when the
        directory changed (a new version); the backbone itself is never reloaded."""
        config = adapter_io.read_config(adapter_dir)
        name = str(config["backbone"]["name"])
        if name not in self.inference:
            self.inference[name] = AdaptedNet(self._backbone(name))
        net = self.inference[name]
        if self.loaded.get(domain, ("", None))[0] != adapter_dir or domain not in net.domains:
            self._evict(domain)
            adapter_io.load_domain(net, adapter_dir, domain)
            net.to(self.device)
            self.loaded[domain] = (adapter_dir, config)
        self.loaded.move_to_end(domain)
        self._evict_over_budget(keep=domain)
        net.set_active(domain)
        return net, self.loaded[domain][1]

    def _evict(self, domain: str) -> bool:
        """Remove ``domain``'s adapter from whichever inference net holds it."""
        entry = self.loaded.pop(domain, None)
        found = False
        for net in self.inference.values():
            if domain in net.domains:
                net.remove_domain(domain)
                found = True
        return found or entry is not None

    def _evict_over_budget(self, keep: str) -> None:
        """Least recently used first, until the cache holds at most ``cache_domains``
        adapters and ``cache_bytes`` of their weights (a fine-tuned domain is a whole
        backbone copy: eight of them held 507 MB)."""
        def cached_bytes() -> int:
            return sum(int(config.get("weights_bytes") or 0)
                       for _, config in self.loaded.values())

        while len(self.loaded) > 1 and (len(self.loaded) > self.cache_domains
                                        or cached_bytes() > self.cache_bytes):
            oldest = next(iter(self.loaded))
            if oldest == keep:
                break
            self._evict(oldest)

    # --- the training thread --------------------------------------------------------------

    def _run_job(self, header: dict, params: TrainParams, config: TrainConfig,
                 split: data.Split, cancel: threading.Event) -> None:
        job_id = header["job_id"]
        apply_policy(self.threads)  # a new thread: its OpenMP settings start from defaults
        report, error = {}, {}  # type: Tuple[Dict[str, object], Dict[str, str]]
        try:
            report = self._train(header, params, config, split, cancel).to_dict()
            state = "succeeded"
        except Stopped:
            state = "cancelled"
        except Exception as exc:
            state, error = "failed", _error(exc)
        # Free the worker before announcing the end: whoever hears it may send the next job.
        self.job = None
        self.peer.send("job_done", job_id=job_id, state=state, report=report, error=error)

    def _train(self, header: dict, params: TrainParams, config: TrainConfig, split: data.Split,
               cancel: threading.Event) -> JobReport:
        job_id = header["job_id"]
        net = AdaptedNet(self._backbone(params.backbone))
        add_job_domain(net, job_id, params, len(split.classes))
        warm = None  # type: Optional[WarmStart]
        if params.warm_start:  # issue 14: from the active adapter when it fits, and said
            warm = warm_start(net, job_id, header["warm_from"], split.classes, params)
            self._event(job_id, {"event": "warm_start", "warm_started": warm.used,
                                 "warm_start_note": warm.note})
        meter, tuner = CpuMeter(self.threads.intra_op), self._tuner()

        def complete_report(report: JobReport) -> None:
            report.cpu = dict(self._cpu_figures(tuner), **meter.overall())
            if warm is not None:
                report.warm_started, report.warm_start_note = warm.used, warm.note

        return train_domain(net, split, config, header["out_dir"],
                            self._progress_sender(job_id, meter, tuner), tuner, cancel.is_set,
                            complete_report)

    def _cpu_figures(self, tuner: Optional[ThreadTuner]) -> Dict[str, object]:
        figures = self.threads.as_dict()
        figures.update(tuner.as_dict() if tuner is not None
                       else {"threads_in_use": torch.get_num_threads()})
        return figures

    def _progress_sender(self, job_id: str, meter: CpuMeter, tuner: Optional[ThreadTuner]):
        """Step events are sent at most every STEP_EVENT_INTERVAL_S; each event carries the
        times of the steps not reported yet (``step_ms_recent``), so no latency is lost, and
        the CPU share the job got since the previous one (``cpu``)."""
        last = [0.0]
        recent: List[float] = []

        def send(event: Dict[str, object]) -> None:
            now = time.time()
            if event["event"] == "step":
                recent.append(float(event.pop("step_ms")))
                if now - last[0] < STEP_EVENT_INTERVAL_S:
                    return
                last[0] = now
                figures = self._cpu_figures(tuner)
                event["cpu"] = dict(figures, **meter.recent(int(figures["threads_in_use"])))
            elif event["event"] == "start":
                event["cpu"] = self._cpu_figures(tuner)
            if recent:  # any event sent carries the step times not sent yet
                event["step_ms_recent"] = list(recent)
                del recent[:]
            self._event(job_id, event)

        return send

    def _event(self, job_id: str, event: Dict[str, object]) -> None:
        self.peer.send("job_event", job_id=job_id, event=event)


def main(argv=None, thread_policy: Optional[ThreadPolicy] = None) -> int:
    """``thread_policy``: what ``python -m device_agent.worker`` chose before importing
    torch; without it the same rules are read now (the thread counts still apply, passive
    waiting only if the environment already asked for it)."""
    parser = argparse.ArgumentParser(prog="device_agent.worker", description=__doc__)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weights", help="'random' builds untrained backbones (tests only)")
    args = parser.parse_args(argv)
    stdout = sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames may reach the protocol stream
    # A file over RLIMIT_FSIZE (a full quota) must fail the write, not kill the worker.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    policy = thread_policy or plan_threads(os.environ, read_budget())
    apply_policy(policy)
    code = Worker(Peer(sys.stdin.buffer, stdout), policy, args.device, args.weights).serve()
    # A training thread may still run (shutdown mid-job): everything it must keep is on disk
    # (atomic checkpoints; the job is requeued and resumes), so leave without interpreter
    # teardown, which would abort inside libtorch's threads.
    stdout.flush()
    sys.stderr.flush()
    os._exit(code)
