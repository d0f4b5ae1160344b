"""Memory caps: batch planning by the estimator, the per-step watch, OOM retries."""
import pytest
import torch

from device_agent.errors import MemoryBudgetExceeded
from device_agent.model.builder import build_net
from device_agent.model.memory import MB, estimate_job_bytes, estimate_step_bytes
from device_agent.training import data, memory_guard
from device_agent.training import loop as training_loop
from device_agent.training.loop import TrainConfig, Trainer
from device_agent.training.memory_guard import MemoryPlan, MemoryWatch, plan_batch
from device_agent.training.profile import measure_peak_step

SHAPE = (3, 64, 64)


def _net(method="da2"):
    return build_net("mobilenet_v2", method, num_classes=3, weights="random")


def _job_mb(net, batch):
    return estimate_job_bytes(net, SHAPE, batch, net.domain.backbone is None).total / MB


def test_auto_picks_the_largest_batch_that_fits():
    net = _net()
    budget = (_job_mb(net, 16) + _job_mb(net, 24)) / 2  # 16 fits, 24 does not
    plan = plan_batch(net, SHAPE, 0, 0, 500 + budget, True, 1000, resident_mb=500,
                      available_mb=4000)
    assert (plan.batch_size, plan.micro_batch) == (16, 0)
    assert plan.as_dict()["estimated_peak_mb"] <= 500 + budget
    roomy = plan_batch(net, SHAPE, 0, 0, 0, True, 20, resident_mb=500, available_mb=1e6)
    assert roomy.batch_size == 16  # the largest candidate not above the 20 training images


def test_a_fixed_batch_over_the_limit_is_micro_batched():
    net = _net()
    limit = 500 + (_job_mb(net, 4) + _job_mb(net, 8)) / 2
    plan = plan_batch(net, SHAPE, 32, 0, limit, True, 1000, resident_mb=500, available_mb=4000)
    assert (plan.batch_size, plan.micro_batch) == (32, 4)  # same gradient, smaller peak


def test_nothing_fits_is_a_clear_error():
    with pytest.raises(MemoryBudgetExceeded, match="memory_limit_mb"):
        plan_batch(_net(), SHAPE, 8, 0, 501, True, 1000, resident_mb=500, available_mb=4000)
    finetune = _net("finetune")
    limit = 500 + _job_mb(finetune, 4)
    with pytest.raises(MemoryBudgetExceeded, match="finetune cannot micro-batch"):
        plan_batch(finetune, SHAPE, 8, 0, limit, False, 1000, resident_mb=500,
                   available_mb=4000)


def test_without_a_limit_mem_available_less_a_reserve_is_the_limit():
    limit = memory_guard.effective_limit_mb(0, 300.0, 1000.0)
    assert limit == 300.0 + 1000.0 - memory_guard.MIN_AVAILABLE_MB
    assert memory_guard.effective_limit_mb(700, 300.0, 1000.0) == 700


@pytest.mark.parametrize("method", ["da2", "finetune"])
def test_the_step_estimate_brackets_the_measured_peak(method):
    """The planner's estimate is an upper bound within 2x of a measured step's peak."""
    net = build_net("efficientnet_lite0", method, num_classes=10, weights="random")
    estimate = estimate_step_bytes(net, SHAPE, 8, lean=method == "da2") / MB
    measured = measure_peak_step("efficientnet_lite0", method, 64, 8)["peak_step_mb"]
    assert 0.8 * measured <= estimate <= 2.0 * measured, (estimate, measured)


def test_meminfo_and_rss_are_read(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  4000000 kB\nMemAvailable:  1500000 kB\n")
    assert memory_guard.mem_available_mb(str(meminfo)) == pytest.approx(1536.0)
    assert memory_guard.mem_available_mb(str(tmp_path / "absent")) is None
    assert memory_guard.rss_mb() > 10


def test_the_watch_halves_the_micro_batch_over_the_limit_and_fails_at_one():
    watch = MemoryWatch(MemoryPlan(8, 0, 1.0, 0.0, 0.0), torch.device("cpu"))
    assert watch.micro_batch == 8
    watch.before_step()
    assert "over the 1 MB limit" in watch.after_step()  # this process holds far more
    assert watch.micro_batch == 4 and watch.adjustments[0]["micro_batch"] == 4
    watch.shrink("test")
    watch.shrink("test")
    with pytest.raises(MemoryBudgetExceeded, match="micro-batch of 1"):
        watch.shrink("test")
    unsplittable = MemoryWatch(MemoryPlan(8, 0, 1e9, 0.0, 0.0), torch.device("cpu"),
                               can_split=False)
    with pytest.raises(MemoryBudgetExceeded, match="batch of 8"):
        unsplittable.shrink("out of memory")


def _fake_oom_step(smallest_that_fits):
    real = training_loop.train_step

    def step(net, optimizer, images, labels, micro_batch=0, **kwargs):
        chunk = micro_batch if 0 < micro_batch < images.shape[0] else images.shape[0]
        if chunk > smallest_that_fits:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return real(net, optimizer, images, labels, micro_batch=micro_batch, **kwargs)

    return step


def _run(folder, out, monkeypatch=None, oom_above=None, micro_batch=0):
    if monkeypatch is not None:
        monkeypatch.setattr(training_loop, "train_step", _fake_oom_step(oom_above))
    torch.manual_seed(0)
    split = data.discover(folder, val_fraction=0.34, seed=0)
    net = build_net("resnet18", "da2", len(split.classes), weights="random")
    events = []
    config = TrainConfig(epochs=1, batch_size=4, resolution=32, micro_batch=micro_batch,
                         memory_limit_mb=1e6)
    trainer = Trainer(net, split, config, out, events.append)
    return trainer, trainer.run(), events


def test_out_of_memory_retries_at_half_the_micro_batch(small_folder, tmp_path, monkeypatch):
    _, planned, _ = _run(small_folder, str(tmp_path / "a"), micro_batch=1)
    trainer, result, events = _run(small_folder, str(tmp_path / "b"), monkeypatch, oom_above=1)
    assert result.micro_batch == 1
    assert [a["micro_batch"] for a in result.memory_adjustments] == [2, 1]
    assert "out of memory" in result.memory_adjustments[0]["reason"]
    assert [e["micro_batch"] for e in events if e["event"] == "memory_adjusted"] == [2, 1]
    # The retried steps took the same updates as a run planned at micro-batch 1.
    assert result.val_top1 == planned.val_top1
    start = next(e for e in events if e["event"] == "start")
    assert start["batch_size"] == 4 and start["estimated_step_mb"] > 0


def test_out_of_memory_at_one_image_fails_the_job(small_folder, tmp_path, monkeypatch):
    with pytest.raises(MemoryBudgetExceeded):
        _run(small_folder, str(tmp_path), monkeypatch, oom_above=0)


def test_other_runtime_errors_are_not_retried(small_folder, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(training_loop, "train_step", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        _run(small_folder, str(tmp_path))


def test_the_cuda_allocator_is_capped_at_the_limit(monkeypatch):
    calls = []

    class Properties(object):
        total_memory = 4000 * MB

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Properties())
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, device: calls.append(fraction))
    assert memory_guard.cap_cuda_allocator(1000, torch.device("cuda")) == pytest.approx(0.25)
    assert memory_guard.cap_cuda_allocator(0, torch.device("cuda")) is None
    assert calls == [pytest.approx(0.25)]
