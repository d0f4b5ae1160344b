"""The job contract (device_agent/jobspec.py) and everything built from it agree: the API's
request schema, the command-line flags, the worker, the trainer, the store's job states."""
import math

import pytest

from device_agent import jobspec
from device_agent.errors import InvalidInput
from device_agent.jobspec import PARAMS, JobReport, TrainParams

NUMERIC = [p for p in PARAMS if p.type in (int, float)]


def _valid_non_default(param):
    """A value every side must accept, other than the default."""
    special = {"method": "last", "backbone": "resnet18", "adapter_settings": {"pool": 2},
               "batch_size": 4, "lr": 0.01, "memory_limit_mb": 4096, "resolution": 32}
    if param.name in special:
        return special[param.name]
    if param.type is bool:
        return not param.default
    return param.type(param.low + 1) if param.type is int else (param.low + param.high) / 2


def _edges(param):
    """(value, accepted) at and just past both bounds."""
    step = 1 if param.type is int else 1e-6
    return [(param.low, not param.open_low), (param.low - step, False),
            (param.high, not param.open_high), (param.high + step, False)]


def test_defaults_fill_what_is_left_out():
    params = TrainParams.from_mapping({"epochs": 3})
    assert params.epochs == 3
    assert params.to_dict() == dict({p.name: p.default for p in PARAMS}, epochs=3)
    assert params.default_lr == jobspec.METHODS[jobspec.DEFAULT_METHOD].default_lr


def test_unknown_parameters_are_refused_by_name():
    with pytest.raises(InvalidInput, match="unknown training parameters: rm, zzz"):
        TrainParams.from_mapping({"epochs": 1, "zzz": 0, "rm": "-rf"})


@pytest.mark.parametrize("param", NUMERIC, ids=lambda p: p.name)
def test_bounds_hold_on_both_sides(param):
    for value, accepted in _edges(param):
        if accepted:
            assert getattr(TrainParams.from_mapping({param.name: value}), param.name) == value
        else:
            with pytest.raises(InvalidInput, match=param.name):
                TrainParams.from_mapping({param.name: value})


@pytest.mark.parametrize("name, value", [
    ("epochs", True), ("epochs", 2.0), ("epochs", "5"), ("lr", "0.1"), ("lr", float("nan")),
    ("label_smoothing", float("inf")), ("hflip", 1), ("hflip", "false"), ("method", "bogus"),
    ("method", 3), ("batch_size", "big"), ("batch_size", None), ("epochs", None),
    ("adapter_settings", [1, 2]), ("adapter_settings", {str(i): i for i in range(40)}),
    ("backbone", ["resnet18"]), ("seed", -1), ("seed", 2 ** 31),
])
def test_wrong_types_and_values_are_refused(name, value):
    with pytest.raises(InvalidInput, match=name):
        TrainParams.from_mapping({name: value})


def test_auto_and_null_where_the_contract_allows_them():
    params = TrainParams.from_mapping({"batch_size": "auto", "lr": None, "resolution": None})
    assert params.batch_size == "auto" and params.lr is None and params.resolution is None
    assert TrainParams.from_mapping({"lr": 1}).lr == 1.0  # a JSON integer is a number


def test_every_method_has_a_finite_default_lr():
    assert jobspec.DEFAULT_METHOD in jobspec.METHODS
    assert all(0 < m.default_lr <= 1 and math.isfinite(m.default_lr)
               for m in jobspec.METHODS.values())


# --- the API's schema -----------------------------------------------------------------------

def test_the_api_schema_has_exactly_the_contracts_fields_and_defaults():
    pytest.importorskip("pydantic")
    from device_agent.api.schemas import JobRequest

    fields = JobRequest.model_fields
    assert list(fields) == [p.name for p in PARAMS]
    assert {n: f.default for n, f in fields.items()} == {p.name: p.default for p in PARAMS}
    assert all(fields[p.name].description == p.description for p in PARAMS)


@pytest.mark.parametrize("param", NUMERIC, ids=lambda p: p.name)
def test_the_api_schema_has_the_contracts_bounds(param):
    pydantic = pytest.importorskip("pydantic")
    from device_agent.api.schemas import JobRequest

    for value, accepted in _edges(param):
        if accepted:
            assert getattr(JobRequest(**{param.name: value}), param.name) == value
        else:
            with pytest.raises(pydantic.ValidationError):
                JobRequest(**{param.name: value})


def test_the_api_accepts_every_parameter_the_worker_accepts():
    pytest.importorskip("pydantic")
    from device_agent.api.schemas import JobRequest

    sent = {p.name: _valid_non_default(p) for p in PARAMS}
    dumped = JobRequest(**sent).model_dump()
    assert dumped == sent == TrainParams.from_mapping(sent).to_dict()


def test_the_demo_job_is_a_valid_job():
    pytest.importorskip("pydantic")
    from device_agent.api.demo import DEMO_JOB

    assert TrainParams.from_mapping(DEMO_JOB).epochs == DEMO_JOB["epochs"]


# --- the command line -----------------------------------------------------------------------

def _argv_setting_every_parameter():
    from device_agent.cli.job_flags import flag_of

    argv = []
    for param in PARAMS:
        value = _valid_non_default(param)
        if param.type is bool:
            argv.append(flag_of(param))
        elif param.type is dict:
            argv += [flag_of(param), "%s=%s" % next(iter(value.items()))]
        else:
            argv += [flag_of(param), str(value)]
    return argv


@pytest.mark.parametrize("command", [["train", "data", "--out", "o"],
                                     ["push", "data", "--domain", "d"]])
def test_the_cli_flags_set_every_parameter(command):
    from device_agent.cli import build_parser
    from device_agent.cli.job_flags import params_from_args

    args = build_parser().parse_args(command + _argv_setting_every_parameter())
    assert params_from_args(args) == {p.name: _valid_non_default(p) for p in PARAMS}


def test_train_defaults_are_the_contracts_and_push_sends_only_what_is_given():
    from device_agent.cli import build_parser
    from device_agent.cli.job_flags import params_from_args

    train = build_parser().parse_args(["train", "data", "--out", "o", "--resolution", "0"])
    assert params_from_args(train) == {p.name: p.default for p in PARAMS
                                       if p.default is not None}
    push = build_parser().parse_args(["push", "data", "--domain", "d", "--no-hflip"])
    assert params_from_args(push) == {"hflip": False}


# --- the torch side -------------------------------------------------------------------------

def test_the_trainer_config_takes_the_contracts_defaults():
    pytest.importorskip("torch")
    from device_agent.model.network import METHODS
    from device_agent.training.loop import DEFAULT_LR, TrainConfig

    assert set(METHODS) == set(jobspec.METHODS)
    assert DEFAULT_LR == {n: m.default_lr for n, m in jobspec.METHODS.items()}
    config = TrainConfig.from_params(TrainParams.from_mapping({}), "cpu")
    default = TrainConfig()
    assert config == default
    for name in set(TrainConfig._fields) & set(jobspec.PARAM_BY_NAME):
        if jobspec.PARAM_BY_NAME[name].default is not None:
            assert getattr(default, name) == jobspec.PARAM_BY_NAME[name].default, name


@pytest.mark.parametrize("extra, message", [({}, "does not exist"),
                                            ({"rm": 1}, "unknown training parameters: rm")])
def test_the_worker_accepts_exactly_the_contracts_parameters(extra, message):
    pytest.importorskip("torch")
    from device_agent.cpu_budget import plan_threads, read_budget
    from device_agent.worker.main import Worker

    worker = Worker(None, plan_threads({}, read_budget()), "cpu", "random")
    params = dict({p.name: _valid_non_default(p) for p in PARAMS}, **extra)
    header = {"job_id": "j", "dataset_dir": "/nonexistent", "out_dir": "/tmp/o",
              "params": params}
    with pytest.raises(InvalidInput, match=message):
        worker.train(header, b"")


# --- states and reports ---------------------------------------------------------------------

def test_the_store_keeps_the_contracts_job_states():
    from device_agent.store import db

    assert tuple(db.JOB_STATES) == jobspec.JOB_STATES
    assert {k: tuple(v) for k, v in db.TRANSITIONS.items()} == jobspec.TRANSITIONS
    assert set(jobspec.TERMINAL_STATES) == set(jobspec.JOB_STATES) - set(jobspec.TRANSITIONS)
    assert jobspec.can_move("running", "cancelled") and not jobspec.can_move("failed", "queued")


def test_a_report_round_trips_and_refuses_unknown_fields():
    report = JobReport(method="da2", epochs=2, peak_rss_bytes=3 << 20, history=[{"epoch": 0}])
    again = JobReport.from_dict(report.to_dict())
    assert again.to_dict() == report.to_dict() and again.mib("peak_rss_bytes") == 3.0
    assert "history" not in report.metrics() and "classes" not in report.metrics()
    with pytest.raises(ValueError, match="peak_rss_mb"):
        JobReport(peak_rss_mb=1.0)


def test_a_report_stored_before_the_contract_reads_in_bytes():
    """Older releases stored memory as *_mb in 10^6 bytes."""
    old = {"peak_rss_mb": 300.0, "saved_activation_mb": 1.5, "step_ms_p50": 12.0,
           "val_top1": 0.5, "a_field_of_the_past": 1}
    report = JobReport.from_dict(old)
    assert report.peak_rss_bytes == 300000000 and report.saved_activation_bytes == 1500000
    assert report.step_ms_p50 == 12.0 and report.val_top1 == 0.5
