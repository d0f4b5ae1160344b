"""`serve --demo`: the digits domain is uploaded and queued once, from the package's data;
`device-agent demo`: its hints work as printed from any shell, and a second demo says it
resumes instead of replaying an earlier job as if it were new."""
import os
import shutil
import socket
import subprocess

import pytest

from device_agent.store.db import Store
from device_agent.store.layout import DataPaths


def test_the_demo_domain_is_seeded_once(tmp_path):
    pytest.importorskip("sklearn")
    from device_agent.api.demo import DEMO_DOMAIN, DEMO_JOB, seed_demo_domain

    paths = DataPaths(str(tmp_path))
    store = Store(paths.database)
    assert seed_demo_domain(store, paths) is True
    dataset = store.latest_dataset(DEMO_DOMAIN)
    counts = dataset["summary"]["counts"]
    assert dataset["summary"]["classes"] == [str(d) for d in range(10)]
    assert sum(counts["train"].values()) + sum(counts["val"].values()) == 1797  # UCI digits
    jobs = store.list_jobs(DEMO_DOMAIN)
    assert [j["state"] for j in jobs] == ["queued"] and jobs[0]["params"] == DEMO_JOB
    assert jobs[0]["dataset_id"] is None  # issue 14: it trains the working set
    working = store.working_set(DEMO_DOMAIN)  # the same images, each once, splits kept
    assert {r["source"] for r in working} == {"archive"} and 1700 < len(working) <= 1797
    assert {r["split"] for r in working} == {"train", "val"}
    assert seed_demo_domain(store, paths) is False  # a restart does not queue it again
    assert len(store.list_jobs(DEMO_DOMAIN)) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("demo-")] == []


def test_the_demo_hints_work_as_printed_from_a_bare_shell(tmp_path_factory, small_folder):
    pytest.importorskip("fastapi")
    import live_daemon

    from device_agent.cli.client_commands import demo_hints
    from device_agent.client import Client, archive_folder

    data_dir = str(tmp_path_factory.mktemp("demo"))
    with open(DataPaths(data_dir).token, "w") as handle:
        handle.write("demo-token\n")
    proc, base = live_daemon.start(data_dir, "demo-token")
    try:
        archive = archive_folder(small_folder)
        Client(base, "demo-token").upload_dataset("colours", archive)
        os.unlink(archive)
        status_hint, curl_hint = demo_hints(int(base.rsplit(":", 1)[1]), data_dir, "colours")
        # a user's shell: no virtual environment on PATH, anywhere on the disk
        bare = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/")}
        ran = subprocess.run(["bash", "-c", status_hint], cwd="/", env=bare,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True, timeout=60)
        assert ran.returncode == 0, (status_hint, ran.stderr)
        assert ran.stdout.splitlines()[1].split()[0] == "colours"
        if shutil.which("curl", path=bare["PATH"]):
            ran = subprocess.run(["bash", "-c", curl_hint], cwd="/", env=bare,
                                 stdout=subprocess.PIPE, universal_newlines=True, timeout=60)
            assert ran.returncode == 0 and '"name":"colours"' in ran.stdout, curl_hint
    finally:
        live_daemon.stop(proc)


class _Daemon(object):
    """The client calls demo_job makes, answered from a list of job records."""

    def __init__(self, *records) -> None:
        self.records = list(records)
        self.polls = 0

    def job(self, job_id):
        self.polls += 1
        return self.records.pop(0) if len(self.records) > 1 else self.records[0]


def _job(state, epochs_done, epochs=4):
    return {"id": "j1", "state": state, "progress": {"epochs": epochs, "step": None},
            "latency": {}, "history": [{"epoch": e, "val_top1": 0.5} for e in
                                       range(epochs_done)]}


def test_a_first_demo_follows_its_job_from_the_start(capsys):
    from device_agent.cli.client_commands import demo_job

    daemon = _Daemon(_job("succeeded", 4))
    assert demo_job(daemon, [_job("queued", 0)], resuming=False)["state"] == "succeeded"
    err = capsys.readouterr().err
    assert [line.split()[1] for line in err.splitlines() if "done" in line] == \
        ["1/4", "2/4", "3/4", "4/4"]


def test_a_second_demo_says_it_resumes_and_replays_no_epoch(capsys):
    from device_agent.cli.client_commands import demo_job

    daemon = _Daemon(_job("succeeded", 4))
    assert demo_job(daemon, [_job("succeeded", 4)], resuming=True)["state"] == "succeeded"
    captured = capsys.readouterr()
    assert daemon.polls == 0 and "done" not in captured.err  # an ended job is not replayed
    assert "its training ran in the earlier demo: job j1 succeeded" in captured.out

    daemon = _Daemon(_job("succeeded", 4))
    demo_job(daemon, [_job("running", 2)], resuming=True)
    captured = capsys.readouterr()
    assert "resuming job j1 after epoch 2 of 4" in captured.out
    assert [line.split()[1] for line in captured.err.splitlines() if "done" in line] == \
        ["3/4", "4/4"]  # only the epochs this run trained


def test_the_demo_takes_the_readmes_port_when_it_is_free():
    from device_agent.cli.client_commands import _demo_port

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", 8470))
        except OSError:
            pytest.skip("port 8470 is in use here")
        sock.listen(1)
        assert _demo_port() != 8470  # taken: any free port, which the demo prints
    assert _demo_port() == 8470
