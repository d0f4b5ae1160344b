"""A dependency-free progress bar for long CLI work (stderr; one line per epoch off a TTY)."""
import sys
import time
from typing import Dict, Optional, TextIO


class TrainingProgress(object):
    """Renders the training loop's progress events."""

    def __init__(self, stream: Optional[TextIO] = None, width: int = 28) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started = time.time()

    def __call__(self, event: Dict[str, object]) -> None:
        if event["event"] == "step" and self.interactive:
            self._bar(event)
        elif event["event"] == "epoch":
            self._epoch(event)

    def _bar(self, event: Dict[str, object]) -> None:
        epoch, epochs = int(event["epoch"]), int(event["epochs"])
        step, steps = int(event["step"]), int(event["steps"])
        done = (epoch * steps + step) / float(max(epochs * steps, 1))
        filled = int(self.width * done)
        elapsed = time.time() - self.started
        eta = elapsed * (1 - done) / done if done > 0 else 0.0
        self.stream.write("\r epoch %d/%d [%s%s] %3d%%  loss %.3f  %.0f img/s  eta %ds " % (
            epoch + 1, epochs, "#" * filled, "." * (self.width - filled), 100 * done,
            float(event["loss"]), float(event["images_per_sec"]), eta))
        self.stream.flush()

    def _epoch(self, event: Dict[str, object]) -> None:
        if self.interactive:
            self.stream.write("\n")
        line = " epoch %d/%d done" % (int(event["epoch"]) + 1, int(event["epochs"]))
        if "val_top1" in event:
            line += ": val top-1 %.3f, top-5 %.3f" % (event["val_top1"], event["val_top5"])
        self.stream.write(line + "\n")
        self.stream.flush()


class JobProgress(object):
    """Renders a daemon job's record (``GET /v1/jobs/{id}``) as it is polled."""

    def __init__(self, stream: Optional[TextIO] = None, width: int = 28) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.epochs_shown = 0
        self.state = None  # type: Optional[str]

    def __call__(self, job: Dict[str, object]) -> None:
        for entry in job["history"][self.epochs_shown:]:
            line = " epoch %d/%s done" % (entry["epoch"] + 1, job["progress"]["epochs"])
            if entry.get("val_top1") is not None:
                line += ": val top-1 %.3f" % entry["val_top1"]
            self._line(line)
        self.epochs_shown = len(job["history"])
        if job["state"] != self.state:
            self._line("job %s: %s" % (job["id"], job["state"]))
            self.state = job["state"]
        progress = job["progress"]
        if self.interactive and job["state"] == "running" and progress["step"] is not None:
            filled = int(self.width * progress["fraction"])
            self.stream.write("\r epoch %d/%d [%s%s] %3d%%  loss %.3f  %s img/s  eta %ss " % (
                progress["epoch"] + 1, progress["epochs"], "#" * filled,
                "." * (self.width - filled), 100 * progress["fraction"], progress["loss"] or 0,
                _number(job["latency"]["images_per_sec"]), _number(progress["eta_s"])))
            self.stream.flush()

    def _line(self, text: str) -> None:
        self.stream.write(("\r" if self.interactive else "") + text + " " * 20 + "\n")
        self.stream.flush()


def _number(value: Optional[float]) -> str:
    return "?" if value is None else "%.0f" % value
