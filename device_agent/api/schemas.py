"""The API's request and response bodies: every field documented in the OpenAPI schema.

Responses are built from the store's records by :mod:`device_agent.api.views`; every field
a job or a domain may not have yet is optional (null).
"""
from typing import Dict, List, Literal, Optional, Tuple, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationInfo,
    create_model,
    field_validator,
)

from device_agent import jobspec
from device_agent.capture import sessions as capture_sessions
from device_agent.capture import sources as capture_sources
from device_agent.errors import AgentError
from device_agent.manifest import load_manifest

JobState = Literal[jobspec.JOB_STATES]


class Problem(BaseModel):
    """An RFC 7807 error body (``application/problem+json``)."""

    type: str = Field("about:blank", description="always about:blank")
    title: str = Field(..., description="the code in words")
    status: int = Field(..., description="the HTTP status")
    code: str = Field(..., description="a stable machine-readable code, e.g. invalid_input, "
                                       "unauthorized, payload_too_large, "
                                       "memory_budget_exceeded")
    detail: object = Field(..., description="what went wrong: a sentence, or for 422 a list "
                                            "of {loc, msg}")


def _problem(description: str) -> dict:
    return {"model": Problem, "description": description,
            "content": {"application/problem+json": {}}}


ERROR_RESPONSES = {
    400: _problem("bad input: a bad archive, image, layout or parameter"),
    401: _problem("missing or wrong API token"),
    404: _problem("no such domain, job or version"),
    409: _problem("contradicts the current state (no dataset yet, no adapter yet, ...)"),
    413: _problem("the request body is over the upload limit"),
    422: _problem("the request does not match the schema, or an adapter is malformed"),
    503: _problem("the worker is starting or restarting, or weights are missing"),
}


def _request_field(param: jobspec.Param) -> Tuple[object, object]:
    """(annotation, Field) of one job parameter: its type, default and bounds from the
    contract (a parameter that also takes "auto" is range-checked by a validator below)."""
    kind = {dict: Dict[str, Union[StrictBool, int, float, str]]}.get(param.type, param.type)
    if param.choices:
        kind = Literal[param.choices]
    if param.auto:
        kind = Union[kind, Literal["auto"]]
    if param.nullable:
        kind = Optional[kind]
    bounds = {}  # type: Dict[str, float]
    if param.low is not None and not param.auto:
        bounds["gt" if param.open_low else "ge"] = param.low
    if param.high is not None and not param.auto:
        bounds["lt" if param.open_high else "le"] = param.high
    return kind, Field(param.default, description=param.description, **bounds)


_JobFields = create_model("_JobFields", __config__=ConfigDict(extra="forbid"),
                          **{p.name: _request_field(p) for p in jobspec.PARAMS})


class JobRequest(_JobFields):
    """Hyperparameters of one training job (:data:`device_agent.jobspec.PARAMS`); unknown
    fields are refused."""

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        if value not in load_manifest():
            raise ValueError("unknown backbone %r" % value)
        return value

    @field_validator(*[p.name for p in jobspec.PARAMS if p.auto])
    @classmethod
    def _auto_or_in_range(cls, value: Union[int, str], info: ValidationInfo) -> Union[int, str]:
        if value != "auto":
            try:
                jobspec.check_value(jobspec.PARAM_BY_NAME[info.field_name], value)
            except AgentError as exc:  # a schema error: 422 with the field, as for the rest
                raise ValueError(exc.message) from None
        return value


class JobCreated(BaseModel):
    job_id: str = Field(..., description="poll GET /v1/jobs/{job_id}")


class ActivateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(..., ge=1, le=2 ** 31 - 1,
                         description="an adapter version the domain keeps")


class DatasetSummary(BaseModel):
    dataset_id: int = Field(..., description="the stored archive (a job may name it with "
                                             "?dataset_id=; by default jobs train the "
                                             "working set its images joined)")
    domain: str = Field(..., description="the domain the dataset belongs to")
    classes: List[str] = Field(..., description="class names, sorted (the label order)")
    counts: Dict[str, Dict[str, int]] = Field(..., description="split -> class -> images")
    rejected: List[Dict[str, str]] = Field(..., description="files left out, each with "
                                                            "`file` and `reason`")
    layout: str = Field(..., description="\"train/val\" or \"class folders\" (then a seeded "
                                         "stratified split)")
    added: int = Field(0, description="images new to the working set")
    duplicates: int = Field(0, description="images the working set had already")
    relabeled: int = Field(0, description="images that took this archive's label")


class JobProgress(BaseModel):
    epoch: Optional[int] = Field(None, description="the epoch being trained, from 0")
    epochs: Optional[int] = Field(None, description="epochs in the job")
    step: Optional[int] = Field(None, description="the last finished step of this epoch")
    steps: Optional[int] = Field(None, description="steps per epoch")
    fraction: float = Field(0.0, description="0-1, of all steps of the job")
    eta_s: Optional[float] = Field(None, description="estimated seconds left")
    loss: Optional[float] = Field(None, description="the last step's training loss")


class EpochMetrics(BaseModel):
    epoch: int = Field(..., description="from 0")
    val_top1: Optional[float] = Field(None, description="validation top-1 accuracy, 0-1")
    val_top5: Optional[float] = Field(None, description="validation top-5 (top-k for fewer "
                                                        "classes), 0-1")


class JobMemory(BaseModel):
    """Every figure in MiB (2^20 bytes), the unit of the job's telemetry."""

    batch_size: Optional[int] = Field(None, description="images per step (after \"auto\")")
    micro_batch: Optional[int] = Field(None, description="images per forward/backward chunk")
    memory_limit_mb: Optional[float] = Field(None, description="the job's ceiling")
    saved_activation_mb: Optional[float] = Field(None, description="what autograd keeps for "
                                                                   "backward per step, measured")
    estimated_peak_mb: Optional[float] = Field(None, description="the planner's estimate of "
                                                                 "the worker's peak RSS over "
                                                                 "the whole job")
    step_peak_rss_mb: Optional[float] = Field(None, description="the worker's highest RSS "
                                                                "during a step, measured")
    worker_peak_rss_mb: Optional[float] = Field(None, description="the worker's highest RSS "
                                                                  "from the plan to the job's "
                                                                  "end (steps, evaluations, "
                                                                  "checkpoints), measured")
    cuda_peak_mb: Optional[float] = Field(None, description="CUDA allocator peak (CUDA only)")
    adjustments: List[Dict[str, object]] = Field(
        default_factory=list, description="micro-batch halvings under memory pressure or OOM, "
                                          "each with `micro_batch` and `reason`")


class JobLatency(BaseModel):
    step_ms_p50: Optional[float] = Field(None, description="median training step, ms")
    step_ms_p95: Optional[float] = Field(None, description="95th percentile step, ms")
    images_per_sec: Optional[float] = Field(None, description="training throughput")


class JobCpu(BaseModel):
    """The worker's thread policy and the CPU the job got: a slow job says why."""

    intra_op: Optional[int] = Field(None, description="the most torch intra-op threads the "
                                                      "worker runs")
    threads_in_use: Optional[int] = Field(None, description="the job's intra-op threads now "
                                                            "(the tuner's choice)")
    adaptive: Optional[bool] = Field(None, description="the count is measured and tuned "
                                                       "between steps (false: fixed)")
    tuned_rates: Optional[Dict[str, float]] = Field(None, description="images/s last "
                                                                      "measured per count")
    thread_switches: Optional[int] = Field(None, description="times the tuner changed count")
    wait_policy: Optional[str] = Field(None, description="OpenMP's wait policy (an "
                                                         "operator's OMP_WAIT_POLICY, or the "
                                                         "default)")
    inter_op: Optional[int] = Field(None, description="torch inter-op threads")
    predict_while_training: Optional[int] = Field(None, description="intra-op threads of a "
                                                                    "prediction beside a job")
    chosen_by: Optional[str] = Field(None, description="\"cpu budget\", or the variable "
                                                       "that set the count "
                                                       "(DEVICE_AGENT_THREADS, OMP_NUM_THREADS)")
    host_cpus: Optional[int] = Field(None, description="CPUs of the machine")
    affinity_cpus: Optional[int] = Field(None, description="CPUs the worker may run on")
    quota_cpus: Optional[float] = Field(None, description="the cgroup CPU quota, in CPUs "
                                                          "(null: none)")
    usable_cpus: Optional[float] = Field(None, description="the smaller of the two")
    limited_by: Optional[str] = Field(None, description="host, affinity or cgroup quota")
    cpu_used: Optional[float] = Field(None, description="CPUs the worker used (CPU seconds "
                                                        "per second; recent while running, "
                                                        "the job's mean once done)")
    cpu_share: Optional[float] = Field(None, description="cpu_used / threads in use: near 1, "
                                                         "the job had its cores; far below, "
                                                         "other work took them")


class JobTelemetry(BaseModel):
    """What the job did to the board, from the telemetry samples taken while it ran."""

    peak_ram_mb: Optional[float] = Field(None, description="highest system RAM in use, MB")
    peak_swap_mb: Optional[float] = Field(None, description="highest swap in use, MB")
    worker_peak_rss_mb: Optional[float] = Field(None, description="the worker's highest "
                                                                  "sampled RSS, MB")
    cuda_peak_mb: Optional[float] = Field(None, description="CUDA allocator peak, MB")
    avg_power_mw: Optional[float] = Field(None, description="mean total power, mW (null "
                                                            "without a power rail)")
    peak_power_mw: Optional[float] = Field(None, description="highest total power, mW")
    energy_j: Optional[float] = Field(None, description="total power integrated over the "
                                                        "job, joules")
    max_temp_c: Optional[float] = Field(None, description="hottest sensor seen, C")
    duration_s: Optional[float] = Field(None, description="from the last start to the end "
                                                          "(or now), s")
    samples: int = Field(0, description="telemetry samples behind these figures")


class Job(BaseModel):
    id: str = Field(..., description="the job's id")
    domain: str = Field(..., description="the domain being trained")
    state: JobState = Field(..., description="queued -> running -> succeeded | failed | "
                                             "cancelled; interrupted (worker died) -> queued")
    dataset_id: Optional[int] = Field(None, description="the archive the job trains on; null: "
                                                        "the domain's working set")
    snapshot_id: Optional[str] = Field(None, description="the content-addressed snapshot it "
                                                         "trains (fixed when it starts)")
    warm_started: Optional[bool] = Field(None, description="warm_start jobs: whether it "
                                         "started from the active adapter (null: not asked)")
    warm_start_note: Optional[str] = Field(None, description="why it did or did not")
    params: Dict[str, object] = Field(..., description="the JobRequest as accepted")
    created_at: float = Field(..., description="Unix time")
    started_at: Optional[float] = Field(None, description="Unix time of the last start")
    finished_at: Optional[float] = Field(None, description="Unix time it ended")
    attempts: int = Field(..., description="starts, including resumes after a worker crash")
    error: Optional[str] = Field(None, description="why it failed or was interrupted")
    progress: JobProgress = Field(..., description="where the job is, and the time left")
    history: List[EpochMetrics] = Field(default_factory=list, description="one per epoch")
    val_top1: Optional[float] = Field(None, description="the kept (best) epoch's top-1")
    memory: JobMemory = Field(..., description="planned and measured training memory")
    latency: JobLatency = Field(..., description="training step latency and throughput")
    cpu: JobCpu = Field(default_factory=JobCpu, description="threads and the CPU share the "
                                                           "job got")
    adapter_bytes: Optional[int] = Field(None, description="size of the trained adapter file")
    trainable_params: Optional[int] = Field(None, description="parameters the job trained")
    telemetry: JobTelemetry = Field(..., description="peaks, power and energy while it ran")
    class_results: Optional["ClassResults"] = Field(  # per-class results (issue 14)
        None, description="the kept epoch's validation confusion matrix and per-class figures "
                          "(null until the job succeeds, and without validation images)")


class VersionInfo(BaseModel):
    version: int = Field(..., description="1, 2, ... in the order stored")
    created_at: float = Field(..., description="Unix time")
    job_id: Optional[str] = Field(None, description="null for an imported adapter")
    snapshot_id: Optional[str] = Field(None, description="the snapshot its job trained (null: "
                                                         "imported, or trained before them)")
    val_top1: Optional[float] = Field(None, description="its validation top-1, 0-1")


class DomainStatus(BaseModel):
    name: str = Field(..., description="a-z, 0-9, '_' and '-', at most 63 characters")
    created_at: float = Field(..., description="Unix time")
    active_version: Optional[int] = Field(None, description="serves predictions; null "
                                                            "until a job succeeds")
    method: Optional[str] = Field(None, description="the active adapter's method")
    backbone: Optional[str] = Field(None, description="the shared backbone it adapts")
    classes: List[str] = Field(default_factory=list, description="the active adapter's labels")
    val_top1: Optional[float] = Field(None, description="the active adapter's validation "
                                                        "top-1, 0-1")
    adapter_bytes: Optional[int] = Field(None, description="the active adapter file's size")
    trainable_params: Optional[int] = Field(None, description="parameters of the adapter")
    trained_at: Optional[float] = Field(None, description="Unix time the active version was "
                                                          "stored")
    versions: List[VersionInfo] = Field(..., description="every kept version (rollback)")
    last_job: Optional[Job] = Field(None, description="with its memory and latency summary")
    class_results: Optional["ClassResults"] = Field(  # per-class results (issue 14)
        None, description="the active version's validation confusion matrix and per-class "
                          "figures (null for an adapter trained without them)")


class Prediction(BaseModel):
    class_: str = Field(..., alias="class", description="a class name of the domain")
    probability: float = Field(..., description="softmax probability, 0-1")


class PredictResponse(BaseModel):
    domain: str = Field(..., description="the domain that answered")
    version: int = Field(..., description="the adapter version that answered")
    predictions: List[List[Prediction]] = Field(..., description="per image, the top-k")
    latency_ms: float = Field(..., description="time in the worker (decode, forward)")
    backend: Optional[str] = Field(None, description="what answered: torch, onnxruntime or "
                                                     "tensorrt (serve --predict-backend)")


class WorkerHealth(BaseModel):
    state: str = Field(..., description="starting, ready, restarting, stopped")
    pid: Optional[int] = Field(None, description="the worker's process id")
    restarts: int = Field(..., description="worker restarts since the daemon started")
    last_exit_code: Optional[int] = Field(None, description="negative: killed by that signal")
    worker: Optional[Dict[str, str]] = Field(None, description="python, torch, device")
    threads: Optional[JobCpu] = Field(None, description="the worker's thread policy")


class Health(BaseModel):
    status: str = Field(..., description="\"ok\" while the API answers")
    version: str = Field(..., description="device-agent's version")
    worker: WorkerHealth = Field(..., description="the torch worker process")


class CpuCore(BaseModel):
    load_pct: Optional[float] = Field(None, description="busy share of the core, %")
    freq_mhz: Optional[float] = Field(None, description="clock, MHz")


class PowerRail(BaseModel):
    cur: float = Field(..., description="instantaneous, mW")
    avg: float = Field(..., description="average (as the source reports it), mW")


class TelemetrySample(BaseModel):
    """One normalized sample; every figure may be null where the board or source lacks it."""

    ts: Optional[float] = Field(None, description="Unix time of the sample, s")
    ram_used_mb: Optional[float] = Field(None, description="RAM in use, MB (on Jetson the "
                                                           "GPU's memory is part of it)")
    ram_total_mb: Optional[float] = Field(None, description="RAM size, MB")
    swap_used_mb: Optional[float] = Field(None, description="swap in use, MB")
    swap_total_mb: Optional[float] = Field(None, description="swap size, MB")
    cpus: Optional[List[Optional[CpuCore]]] = Field(None, description="per core; null for "
                                                                      "an offline core")
    gpu_load_pct: Optional[float] = Field(None, description="integrated GPU load, %")
    gpu_freq_mhz: Optional[float] = Field(None, description="GPU clock, MHz")
    emc_load_pct: Optional[float] = Field(None, description="memory-controller load, %")
    temps_c: Dict[str, float] = Field(default_factory=dict, description="sensor -> degrees "
                                                                       "C (absent dropped)")
    power_mw: Dict[str, PowerRail] = Field(default_factory=dict, description="rail -> mW")
    power_total_mw: Optional[float] = Field(None, description="module input power by the "
                                            "board's rule: POM_5V_IN (Nano), VDD_IN (TX2, "
                                            "Xavier NX, Orin NX/Nano), sum of rails (AGX "
                                            "Xavier), null (AGX Orin)")
    source: str = Field(..., description="jtop, tegrastats, linux or replay")
    worker: Dict[str, Optional[object]] = Field(
        default_factory=dict, description="the worker's figures: pid, rss_mb, job_id and, "
                                          "on CUDA, cuda_allocated_mb/cuda_reserved_mb/"
                                          "cuda_peak_mb")


# --- the data loop (issue 14): samples, the working set and its snapshots -------------------

class SamplesAdded(BaseModel):
    domain: str = Field(..., description="the domain (created with its first samples)")
    added: int = Field(..., description="images new to the working set")
    duplicates: int = Field(..., description="images it had already (the same bytes)")
    relabeled: int = Field(0, description="images that took a new label (relabel=true)")
    ids: List[str] = Field(..., description="each file's content hash (sha256 hex), in order")
    splits: List[Literal["train", "val"]] = Field(..., description="where each file's image "
                                                  "is, in order (it stays there)")


class ClassCount(BaseModel):
    label: str = Field(..., description="the class name")
    train: int = Field(..., description="images in train")
    val: int = Field(..., description="images in val")
    total: int = Field(..., description="train + val")


class DatasetWarning(BaseModel):
    kind: Literal["too_few_images", "imbalance", "near_duplicates", "no_train_images",
                  "too_few_classes"] = Field(..., description="what is wrong")
    message: str = Field(..., description="the warning in words")
    classes: List[str] = Field(default_factory=list, description="the classes concerned")
    pairs: List[Tuple[str, str]] = Field(default_factory=list, description="near_duplicates: "
                                         "(train sha256, val sha256) pairs, at most 20")


class DatasetStats(BaseModel):
    domain: str = Field(..., description="the domain")
    snapshot_id: Optional[str] = Field(None, description="the id a job starting now would "
                                       "train (sha256 of the sorted split/label/hash lines); "
                                       "null when the working set is empty")
    total: int = Field(..., description="images in the working set")
    splits: Dict[str, int] = Field(..., description="split -> images")
    sources: Dict[str, int] = Field(..., description="upload, archive, capture, review -> "
                                                     "images")
    classes: List[ClassCount] = Field(..., description="per class, sorted by name")
    warnings: List[DatasetWarning] = Field(..., description="what may make training poor")
    thresholds: Dict[str, Union[int, float]] = Field(..., description="min_images_per_class, "
                                         "imbalance_ratio, near_duplicate_bits, "
                                         "near_duplicate_max_pairs_checked")
    near_duplicates_checked: int = Field(..., description="train/val pairs compared")


# The review queue of doubtful predictions (issue 14): settings, the queue, a decision.
class ReviewSettingsUpdate(BaseModel):
    """A domain's review settings; a field left out keeps its current value."""

    model_config = ConfigDict(extra="forbid")
    enabled: Optional[StrictBool] = Field(None, description="keep doubtful predictions")
    threshold: Optional[float] = Field(None, gt=0, le=1, description="keep an image whose "
                                                                     "top probability is "
                                                                     "under this")
    max_items: Optional[int] = Field(None, ge=1, le=2 ** 31 - 1, description="the most items "
                                                                            "kept; the oldest "
                                                                            "go first")
    max_bytes: Optional[int] = Field(None, ge=1, le=2 ** 53, description="the most image "
                                                                         "bytes kept; the "
                                                                         "oldest go first")


class ReviewSettingsView(BaseModel):
    enabled: bool = Field(..., description="doubtful predictions are kept (off by default)")
    threshold: float = Field(..., description="an image whose top probability is under this "
                                              "is kept (default 0.5)")
    max_items: int = Field(..., description="the most items kept (default 200)")
    max_bytes: int = Field(..., description="the most image bytes kept (default 50 MiB)")
    cap_items: int = Field(..., description="the daemon's ceiling of max_items "
                                            "(review_max_items)")
    cap_bytes: int = Field(..., description="the daemon's ceiling of max_bytes "
                                            "(review_max_mb)")


class ReviewItemView(BaseModel):
    id: int = Field(..., description="the item's id in its domain's queue (never reused)")
    created_at: float = Field(..., description="Unix time of the prediction")
    version: int = Field(..., description="the adapter version that predicted it")
    predictions: List[Prediction] = Field(..., description="its top-3, most probable first")
    bytes: int = Field(..., description="the kept image's size")
    media_type: str = Field(..., description="image/jpeg or image/png")
    image: str = Field(..., description="the image's URL (token needed)")


class ReviewCounters(BaseModel):
    """What happened to the domain's doubtful predictions since the daemon started."""

    kept: int = Field(..., description="images queued")
    dropped_oldest: int = Field(..., description="old items dropped to stay within bounds")
    skipped_busy: int = Field(..., description="images not kept: the keeper was behind")
    too_large: int = Field(..., description="images larger than max_bytes on their own")
    failed: int = Field(..., description="images that could not be kept (the log says why)")


class ReviewQueueView(BaseModel):
    domain: str = Field(..., description="the domain")
    settings: ReviewSettingsView = Field(..., description="its review settings")
    count: int = Field(..., description="items in the queue")
    bytes: int = Field(..., description="bytes of the queued images")
    items: List[ReviewItemView] = Field(..., description="newest first, at most `limit`")
    next_before: Optional[int] = Field(None, description="pass as `before` for the next page; "
                                                         "null on the last one")
    counters: ReviewCounters = Field(..., description="since the daemon started")


class ReviewDecision(BaseModel):
    """Exactly one of: a label (the image becomes a sample of that class) or discard."""

    model_config = ConfigDict(extra="forbid")
    label: Optional[str] = Field(None, min_length=1, max_length=255,
                                 description="the image's class (a new one is allowed)")
    discard: Optional[StrictBool] = Field(None, description="true: drop the image")

    @field_validator("discard")
    @classmethod
    def _only_true(cls, value: Optional[bool]) -> Optional[bool]:
        if value is False:
            raise ValueError("discard must be true when given")
        return value


class ReviewOutcome(BaseModel):
    id: int = Field(..., description="the item decided")
    action: Literal["labelled", "discarded"] = Field(..., description="what was done")
    label: Optional[str] = Field(None, description="the class it was added to")
    sample_ids: List[str] = Field(default_factory=list, description="the samples added "
                                                                    "(content hashes)")
    duplicates: int = Field(0, description="1 when the working set had the image already")
# --- capture from a camera or a video (issue 14) ----------------------------------------------

class CaptureStart(BaseModel):
    """What to capture: ``count`` frames of ``source``, one every ``interval`` seconds, each
    stored as a sample labelled ``label``."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(..., max_length=capture_sources.MAX_SOURCE_CHARS,
                        description="/dev/videoN (V4L2), csi://N (a Jetson's CSI camera, "
                                    "through nvarguscamerasrc), rtsp://host[:port]/path, or a "
                                    "video file's path relative to the data dir's videos/ "
                                    "folder")
    label: str = Field(..., max_length=255, description="the class the frames are samples "
                                                        "of (the ImageFolder class-name rules)")
    count: int = Field(..., ge=1, le=capture_sessions.MAX_COUNT,
                       description="frames to store")
    interval: float = Field(1.0, ge=0, le=capture_sessions.MAX_INTERVAL_S,
                            allow_inf_nan=False,
                            description="seconds between frames (a video file: seconds of "
                                        "video; 0: every frame); count x interval is at most "
                                        "%d h" % (capture_sessions.MAX_SPAN_S // 3600))


class CaptureProgress(BaseModel):
    """A domain's capture: running, or the last one (kept in memory until the daemon
    restarts)."""

    domain: str = Field(..., description="the domain the frames are stored in")
    source: str = Field(..., description="the source as given (an RTSP password hidden)")
    label: str = Field(..., description="the frames' label")
    count: int = Field(..., description="frames asked for")
    interval_s: float = Field(..., description="seconds between frames")
    size: int = Field(..., description="the stored images' side in pixels (a centred square "
                                       "of each frame, resized): the domain's trained "
                                       "resolution, else its backbone's input size")
    state: Literal["running", "succeeded", "failed", "stopped"] = Field(
        ..., description="running; succeeded (count frames taken); failed (see error); "
                         "stopped (DELETE)")
    grabbed: int = Field(..., description="frames taken so far (of count)")
    stored: int = Field(..., description="frames stored as new samples")
    duplicates: int = Field(..., description="frames identical to a sample the domain has "
                                             "(not stored twice)")
    failed: int = Field(..., description="frames that could not be decoded or were refused")
    error: Optional[str] = Field(None, description="why a failed capture stopped")
    started_at: float = Field(..., description="Unix time")
    finished_at: Optional[float] = Field(None, description="Unix time; null while running")
# --- per-class results (issue 14): device_agent.classmetrics, shown on jobs and domains ---

class ClassFigures(BaseModel):
    name: str = Field(..., description="the class")
    precision: Optional[float] = Field(None, description="of the images predicted as this "
                                                         "class, the share that are (0-1); "
                                                         "null when none was predicted as it")
    recall: Optional[float] = Field(None, description="of this class's images, the share "
                                                      "predicted as it (0-1); null when the "
                                                      "validation split has none")
    f1: Optional[float] = Field(None, description="harmonic mean of precision and recall; "
                                                  "null when either is")
    support: int = Field(..., description="validation images of the class (its row's sum)")
    predicted: int = Field(..., description="validation images predicted as the class (its "
                                            "column's sum)")


class ConfusedPair(BaseModel):
    true: str = Field(..., description="the class the images are")
    predicted: str = Field(..., description="the class they were taken for")
    count: int = Field(..., description="how many")


class ClassResults(BaseModel):
    """One evaluation on the validation split: ``matrix[i][j]`` counts the images of class
    ``classes[i]`` predicted as ``classes[j]``; ``correct / total`` is the val top-1."""

    classes: List[str] = Field(..., description="the order of the matrix's rows and columns")
    matrix: List[List[int]] = Field(..., description="row = true class, column = prediction")
    per_class: List[ClassFigures] = Field(..., description="one per class, in class order")
    most_confused: List[ConfusedPair] = Field(..., description="off-diagonal cells with a "
                                                               "count, largest first (at "
                                                               "most 10)")
    total: int = Field(..., description="validation images counted")
    correct: int = Field(..., description="of them, predicted right (the diagonal's sum)")


Job.model_rebuild()
DomainStatus.model_rebuild()
