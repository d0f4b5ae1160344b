"""The thread tuner: it keeps the count that measures fastest, probes again on a schedule
or when the rate drops, and a training run with it probes for real; the CPU meter."""
import threading
import time

import torch

from device_agent.model.builder import build_net
from device_agent.training import data
from device_agent.training.loop import TrainConfig, Trainer
from device_agent.training.threads import CpuMeter, ThreadTuner, candidates, set_threads


class _Clock(object):
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _drive(tuner, speed, units=8):
    """One unit of work at ``speed[count]`` images/s for whatever count the tuner asks."""
    count = tuner.threads()
    tuner.record(units / speed[count], units)
    return count


def test_candidates_halve_down_to_one():
    assert candidates(8) == [8, 4, 2, 1] and candidates(6) == [6, 3, 1] and candidates(1) == [1]


def test_it_moves_to_the_faster_count_and_back_when_the_load_goes():
    clock = _Clock()
    tuner = ThreadTuner(2, period_s=30, window=3, clock=clock)
    contended = {2: 14.0, 1: 32.0}  # two threads beside a busy process (measured: 14 vs 32)
    counts = [_drive(tuner, contended) for _ in range(8)]
    # one unit not counted, a window at 2, then at once the probe of 1 (one not counted)
    assert counts == [2, 2, 2, 2, 1, 1, 1, 1] and tuner.current == 1 and tuner.switches == 1
    idle = {2: 46.0, 1: 30.0}  # the busy process has gone; nothing drops for count 1 ...
    for _ in range(9):
        _drive(tuner, idle)
    assert tuner.current == 1
    clock.now = 31.0  # ... until the next period's probe finds 2 faster again
    for _ in range(10):
        _drive(tuner, idle)
    assert tuner.current == 2 and tuner.rates == {1: 30.0, 2: 46.0} and tuner.switches == 2


def test_a_drop_probes_at_once_and_a_small_gain_is_not_a_switch():
    clock = _Clock()
    tuner = ThreadTuner(2, period_s=1e9, window=3, clock=clock)
    for _ in range(8):  # measured, explored (1 is slower), back on 2
        _drive(tuner, {2: 40.0, 1: 20.0})
    assert tuner.threads() == 2 and tuner.reference == 40.0
    loaded = {2: 20.0, 1: 21.0}  # half the rate: probe now; 1 is only 5 % faster: stay
    seen = [_drive(tuner, loaded) for _ in range(12)]
    assert 1 in seen and tuner.current == 2 and tuner.switches == 0


def test_one_candidate_never_probes():
    tuner = ThreadTuner(1, period_s=0)
    for _ in range(10):
        tuner.record(0.1, 8)
    assert tuner.threads() == 1 and tuner.rates == {}


def test_a_training_run_with_a_tuner_measures_every_count(small_folder, tmp_path):
    torch.manual_seed(0)
    set_threads(2)
    split = data.discover(small_folder, val_fraction=0.34, seed=0)
    net = build_net("resnet18", "da2", len(split.classes), weights="random")
    tuner = ThreadTuner(2, period_s=0, window=1)
    seen = []

    def watch(event):
        if event["event"] == "step":
            seen.append(torch.get_num_threads())

    config = TrainConfig(epochs=2, batch_size=2, resolution=32)
    result = Trainer(net, split, config, str(tmp_path), watch, tuner).run()
    assert result.epochs == 2 and set(tuner.rates) == {1, 2} and set(seen) == {1, 2}


def _spin(seconds):
    end = time.time() + seconds
    while time.time() < end:
        pass


def test_the_cpu_meter_counts_the_job_threads_not_the_main_thread():
    meter = CpuMeter(1)
    worker = threading.Thread(target=_spin, args=(0.6,))
    worker.start()
    worker.join()
    beside = meter.recent()
    _spin(0.6)  # the main thread answers requests (predictions): not the job's CPU
    main_only = meter.recent()
    assert beside["cpu_used"] > 0.2 and beside["cpu_share"] == beside["cpu_used"]
    assert main_only["cpu_used"] < 0.1


def test_a_probe_that_changes_nothing_waits_twice_as_long_next_time():
    clock = _Clock()
    tuner = ThreadTuner(2, period_s=30, window=3, max_period_s=100, clock=clock)
    steady = {2: 40.0, 1: 20.0}
    probes_at = []
    for second in range(400):
        clock.now = float(second)
        if _drive(tuner, steady) == 1 and (not probes_at or probes_at[-1] < second - 5):
            probes_at.append(second)
    # explored at once, then after 60, 100 (the cap), 100 seconds (plus the probe itself and
    # the rest of a window)
    gaps = [later - earlier for earlier, later in zip(probes_at, probes_at[1:4])]
    assert probes_at[0] == 4 and 60 <= gaps[0] < 70 and all(100 <= g < 110 for g in gaps[1:])
    assert tuner.current == 2 and tuner.switches == 0
