"""Settings from DEVICE_AGENT_* environment variables (and `device-agent serve` flags)."""
import sys
from typing import Literal, Optional

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from device_agent.store.layout import default_data_dir


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEVICE_AGENT_")

    data_dir: str = Field(default_factory=default_data_dir,
                          description="SQLite store, datasets, jobs and adapters live here")
    host: str = Field("127.0.0.1", description="bind address; 0.0.0.0 is an explicit choice")
    port: int = Field(8470, ge=1, le=65535)
    token: Optional[str] = Field(None, description="API token; generated into the data dir "
                                                   "(mode 0600) when not given")
    worker_python: str = Field(sys.executable, description="interpreter of the torch worker "
                                                            "(e.g. python3.6 on JetPack 4)")
    worker_device: str = Field("auto", description="auto (CUDA when present), cpu, cuda")
    worker_weights: Optional[str] = Field(None, description="'random': untrained backbones, "
                                                             "for tests only")
    max_upload_mb: int = Field(512, ge=1, description="largest accepted archive upload")
    max_extracted_mb: int = Field(2048, ge=1, description="largest unpacked dataset")
    max_files: int = Field(50000, ge=1, description="most files in one dataset archive")
    max_pixels: int = Field(40000000, ge=1, description="largest image, in pixels")
    max_predict_images: int = Field(32, ge=1, description="most images in one predict call")
    max_predict_mb: int = Field(64, ge=1, description="most bytes of images in one predict "
                                                      "call, MB (each image's pixels are "
                                                      "also checked against max_pixels)")
    max_json_kb: int = Field(64, ge=1, description="largest body of a request that is not an "
                                                   "upload (JSON), KiB")
    max_header_kb: int = Field(64, ge=4, description="largest request head (request line and "
                                                     "headers), KiB")
    max_connections: int = Field(1000, ge=1, description="open connections and requests at "
                                                         "once; more are answered 503")
    header_timeout_s: float = Field(10.0, gt=0, description="a request head must arrive "
                                                            "within this, s")
    body_idle_timeout_s: float = Field(30.0, gt=0, description="a request body may pause "
                                                               "this long between bytes, s")
    store_busy_timeout_s: float = Field(30.0, gt=0, le=600, description="a store write waits "
                                        "this long for a lock another process holds (an "
                                        "operator's sqlite3 shell, a backup), s; then it "
                                        "fails and is retried")
    stuck_after_s: float = Field(120.0, gt=0, description="/healthz fails when a daemon "
                                                          "thread has not beaten for this, s")
    threads: int = Field(0, ge=0, le=1024, description="the worker's torch threads (0: the "
                                                        "CPUs its affinity and cgroup quota "
                                                        "allow)")
    predict_backend: Literal["torch", "onnxruntime", "tensorrt"] = Field(
        "torch", description="what answers predictions: torch (eager), onnxruntime (the "
                             "domain's ONNX export) or tensorrt (an FP16 engine of it, CUDA); "
                             "one the worker cannot run falls back to torch, logged")
    memory_limit_mb: int = Field(0, ge=0, description="default per-job memory ceiling in MB "
                                                      "(0: what MemAvailable leaves)")
    telemetry_source: Literal["auto", "jtop", "tegrastats", "linux", "replay"] = Field(
        "auto", description="auto: jtop when /run/jtop.sock exists, else tegrastats when on "
                            "PATH, else Linux (/proc, /sys)")
    telemetry_replay: Optional[str] = Field(None, description="a tegrastats log that the "
                                                               "replay source plays back")
    telemetry_interval_s: float = Field(1.0, gt=0, le=3600, description="sampling interval")
    telemetry_buffer: int = Field(3600, ge=10, description="samples kept in memory")
    telemetry_history_step_s: float = Field(10.0, gt=0, description="history bucket in the "
                                                                     "store, s")
    telemetry_retention_days: float = Field(7.0, gt=0, description="history kept, days")
    metrics_require_token: bool = Field(True, description="/metrics needs the API token (set "
                                                          "false for token-less scrapers)")
    # issue 14, the data loop: GET /v1/domains/{d}/dataset warns under this many per class
    min_images_per_class: int = Field(20, ge=1, description="a class with fewer images in "
                                                            "the working set is warned about")
    demo: bool = Field(False, description="at start, upload the demo domain (handwritten "
                                          "digits from scikit-learn) and queue its training")
    # the review queue of doubtful predictions (issue 14): ceilings of every domain's bounds
    review_max_items: int = Field(1000, ge=1, description="the most items a domain's review "
                                                          "queue may be set to keep")
    review_max_mb: int = Field(256, ge=1, description="the most MB of images a domain's "
                                                      "review queue may be set to keep")
