"""The worker's thread policy follows the CPUs it may use: affinity and the cgroup CPU quota
(v1 and v2, fake trees under a temp root as the telemetry tests fake /proc and /sys), the
overrides, and a real worker process under taskset and under a real cgroup quota."""
import os
import shutil
import subprocess
import sys
import uuid

import pytest

from device_agent import cpu_budget
from device_agent.cpu_budget import CpuBudget, configure_process, plan_threads, read_budget
from device_agent.errors import InvalidInput
from device_agent.protocol import messages
from device_agent.protocol.peer import Peer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THREADS_ENV = cpu_budget.THREADS_ENV
THREAD_VARS = cpu_budget.THREAD_COUNT_VARS + ("OMP_WAIT_POLICY", THREADS_ENV,
                                              cpu_budget.PREDICT_THREADS_ENV, cpu_budget.AUTO_MARK)


def _write(root, path, text):
    full = os.path.join(str(root), path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as handle:
        handle.write(text)


def _v2(root, cgroup, limits):
    """A cgroup v2 tree: the process in ``cgroup``; ``limits``: {path: cpu.max text}."""
    _write(root, "proc/self/cgroup", "0::%s\n" % cgroup)
    _write(root, "sys/fs/cgroup/cgroup.controllers", "cpu memory\n")
    os.makedirs(os.path.join(str(root), "sys/fs/cgroup", cgroup.strip("/")), exist_ok=True)
    for path, text in limits.items():
        _write(root, os.path.join("sys/fs/cgroup", path.strip("/"), "cpu.max"), text)


def test_v2_quota_on_an_ancestor_limits_the_threads(tmp_path):
    _v2(tmp_path, "/kubepods/pod1/ctr", {"/kubepods/pod1/ctr": "max 100000\n",
                                         "/kubepods/pod1": "150000 100000\n",
                                         "/kubepods": "400000 100000\n"})
    budget = read_budget(str(tmp_path), affinity={0, 1, 2, 3})
    assert budget.quota_cpus == 1.5 and budget.quota_file.endswith("pod1/cpu.max")
    assert budget.usable_cpus == 1.5 and budget.limited_by == "cgroup quota"
    policy = plan_threads({}, budget)
    assert (policy.intra_op, policy.inter_op, policy.adaptive) == (1, 1, False)
    assert policy.chosen_by == "cpu budget" and policy.wait_policy == cpu_budget.DEFAULT_WAIT


def test_v2_inside_a_container_namespace_reads_the_mount_root(tmp_path):
    _v2(tmp_path, "/", {"/": "50000 100000\n"})
    assert cpu_budget.cgroup_quota(str(tmp_path))[0] == 0.5
    assert plan_threads({}, read_budget(str(tmp_path), affinity={0, 1})).intra_op == 1


def test_v2_path_missing_under_the_mount_falls_back_to_its_root(tmp_path):
    _v2(tmp_path, "/", {"/": "300000 100000\n"})
    _write(tmp_path, "proc/self/cgroup", "0::/system.slice/other.service\n")
    assert cpu_budget.cgroup_quota(str(tmp_path))[0] == 3.0


def test_v1_quota_and_period(tmp_path):
    _write(tmp_path, "proc/self/cgroup", "5:memory:/x\n4:cpu,cpuacct:/docker/abc\n")
    base = "sys/fs/cgroup/cpu,cpuacct/docker/abc/"
    _write(tmp_path, base + "cpu.cfs_quota_us", "200000\n")
    _write(tmp_path, base + "cpu.cfs_period_us", "100000\n")
    budget = read_budget(str(tmp_path), affinity=set(range(8)))
    policy = plan_threads({}, budget)
    assert budget.quota_cpus == 2.0 and policy.intra_op == 2 and policy.adaptive


def test_v1_without_a_quota_follows_the_affinity_mask(tmp_path):
    _write(tmp_path, "proc/self/cgroup", "1:cpu:/\n")
    _write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n")
    _write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n")
    budget = read_budget(str(tmp_path), affinity={3})
    assert budget.quota_cpus is None and budget.affinity_cpus == 1
    assert plan_threads({}, budget).intra_op == 1
    assert budget.limited_by == ("affinity" if budget.host_cpus > 1 else "host")


@pytest.mark.parametrize("text", ["", "garbage", "0 100000", "100000 0", "max"])
def test_unreadable_or_odd_quota_files_mean_no_quota(tmp_path, text):
    _v2(tmp_path, "/a", {"/a": text})
    assert cpu_budget.cgroup_quota(str(tmp_path)) == (None, None)


def test_no_cgroup_files_at_all(tmp_path):
    budget = read_budget(str(tmp_path), affinity={0, 1})
    assert budget.quota_cpus is None and plan_threads({}, budget).intra_op == 2


def test_overrides_win_in_order_and_bad_values_are_refused():
    budget = CpuBudget(8, 8, 2.0, "cpu.max")
    assert plan_threads({THREADS_ENV: "3", "OMP_NUM_THREADS": "5"}, budget)[:1] == (3,)
    policy = plan_threads({"OMP_NUM_THREADS": "5"}, budget)
    assert (policy.intra_op, policy.chosen_by, policy.adaptive) == (5, "OMP_NUM_THREADS", False)
    assert not plan_threads({THREADS_ENV: "2"}, budget).adaptive  # a fixed count: reproducible
    assert plan_threads({"OMP_WAIT_POLICY": "PASSIVE"}, budget).wait_policy == "PASSIVE"
    for bad in ("0", "-2", "two", "1.5"):
        with pytest.raises(InvalidInput, match=THREADS_ENV):
            plan_threads({THREADS_ENV: bad}, budget)


def test_configure_process_fills_the_environment_and_keeps_the_operators(tmp_path):
    _v2(tmp_path, "/", {"/": "100000 100000\n"})
    environ = {"MKL_NUM_THREADS": "7"}
    policy = configure_process(environ, str(tmp_path))
    assert policy.intra_op == 1
    assert environ["OMP_NUM_THREADS"] == "1" and environ["OPENBLAS_NUM_THREADS"] == "1"
    assert environ["MKL_NUM_THREADS"] == "7"  # the operator's word
    assert "OMP_WAIT_POLICY" not in environ  # passive waiting is not imposed (module doc)
    # A child under a larger quota recomputes what we chose, rather than inheriting it.
    _v2(tmp_path, "/", {"/": "200000 100000\n"})
    child = dict(environ)
    policy = configure_process(child, str(tmp_path))
    assert policy.chosen_by == "cpu budget" and child["OMP_NUM_THREADS"] == str(
        min(2, policy.budget.affinity_cpus))


# --- a real worker process ------------------------------------------------------------------


def _worker_threads(prefix=(), env=None):
    """The thread figures a real worker reports in its hello and its status reply."""
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    clean.update(env or {}, PYTHONPATH=ROOT)
    proc = subprocess.Popen(list(prefix) + [sys.executable, "-m", "device_agent.worker",
                                            "--device", "cpu", "--weights", "random"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env=clean)
    try:
        peer = Peer(proc.stdout, proc.stdin)
        hello, _ = peer.receive()
        peer.send_header(messages.make("status", 1))
        reply, _ = peer.receive()
        return hello["threads"], reply["data"]["threads"]
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(shutil.which("taskset") is None or (os.cpu_count() or 1) < 2,
                    reason="needs taskset and 2+ CPUs")
def test_a_worker_pinned_to_one_cpu_runs_one_thread():
    hello, status = _worker_threads(["taskset", "-c", "0"])
    assert hello["affinity_cpus"] == 1 and hello["intra_op"] == 1 and not hello["adaptive"]
    assert status["torch_intra_op"] == 1 and status["omp_wait_policy"] is None
    _, overridden = _worker_threads(["taskset", "-c", "0"], {THREADS_ENV: "2"})
    assert overridden["torch_intra_op"] == 2 and overridden["chosen_by"] == THREADS_ENV


def _cpu_cgroup_v1():
    base = "/sys/fs/cgroup/cpu"
    if not os.access(os.path.join(base, "cgroup.procs"), os.W_OK):
        return None
    return base


@pytest.mark.skipif(_cpu_cgroup_v1() is None or (os.cpu_count() or 1) < 2,
                    reason="needs a writable cgroup v1 cpu hierarchy (root) and 2+ CPUs")
def test_a_worker_under_a_real_one_cpu_quota_runs_one_thread():
    group = os.path.join(_cpu_cgroup_v1(), "device-agent-test-" + uuid.uuid4().hex[:8])
    os.mkdir(group)
    try:
        with open(os.path.join(group, "cpu.cfs_quota_us"), "w") as handle:
            handle.write("100000")  # one CPU per 100 ms period
        # The shell joins the cgroup, then becomes the worker: it starts inside the quota.
        join = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', group]
        hello, status = _worker_threads(join)
    finally:
        os.rmdir(group)
    assert hello["quota_cpus"] == 1.0 and hello["limited_by"] == "cgroup quota"
    assert status["torch_intra_op"] == 1


def test_predictions_beside_a_job_get_a_smaller_team_unless_told():
    budget = CpuBudget(8, 4, None, None)
    assert plan_threads({}, budget).predict_while_training == 2
    assert plan_threads({}, CpuBudget(2, 1, None, None)).predict_while_training == 1
    told = plan_threads({cpu_budget.PREDICT_THREADS_ENV: "3"}, budget)
    assert told.predict_while_training == 3
    with pytest.raises(InvalidInput, match=cpu_budget.PREDICT_THREADS_ENV):
        plan_threads({cpu_budget.PREDICT_THREADS_ENV: "0"}, budget)
