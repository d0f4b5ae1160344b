"""The SQLite store: schema migrations, domain names, the job queue, adapter versions."""
import threading

import pytest

from device_agent.errors import Conflict, InvalidInput, UnknownName
from device_agent.store.db import MIGRATIONS, Store


@pytest.fixture
def store(tmp_path):
    db = Store(str(tmp_path / "agent.db"))
    yield db
    db.close()


def test_schema_is_migrated_once_and_survives_reopening(tmp_path):
    path = str(tmp_path / "data" / "agent.db")
    first = Store(path)
    assert first.schema_version() == len(MIGRATIONS)
    first.ensure_domain("cats")
    first.close()
    again = Store(path)
    assert again.schema_version() == len(MIGRATIONS)
    assert [d["name"] for d in again.list_domains()] == ["cats"]
    assert again.integrity_check() == "ok"


@pytest.mark.parametrize("name", ["", "../etc", "a/b", "Cats", "-x", "x" * 64, "caf\u00e9",
                                  "a b", ".hidden", None, 7, "cats\n", "cats\n\n", "\ncats"])
def test_hostile_domain_names_are_refused(store, name):
    with pytest.raises(InvalidInput):
        store.ensure_domain(name)
    assert store.list_domains() == []


def test_job_lifecycle_and_fifo_queue(store):
    store.ensure_domain("cats")
    dataset = store.add_dataset("cats", "/data/cats", {"classes": ["a", "b"]})
    first = store.enqueue_job("cats", dataset, {"epochs": 2})
    second = store.enqueue_job("cats", dataset, {"epochs": 3})
    assert first["state"] == "queued" and first["params"] == {"epochs": 2}
    claimed = store.claim_next_job()
    assert claimed["id"] == first["id"] and claimed["state"] == "running"
    assert claimed["attempts"] == 1
    store.update_progress(first["id"], {"epoch": 1})
    assert store.get_job(first["id"])["progress"] == {"epoch": 1}
    store.set_job_state(first["id"], "failed", error="out of memory")
    with pytest.raises(Conflict):
        store.set_job_state(first["id"], "running")
    assert store.claim_next_job()["id"] == second["id"]
    assert store.claim_next_job() is None
    kinds = [e["kind"] for e in store.events(first["id"])]
    assert kinds == ["queued", "running", "failed"]
    assert store.get_job(first["id"])["error"] == "out of memory"


def test_a_crashed_running_job_is_requeued_on_restart(tmp_path):
    path = str(tmp_path / "agent.db")
    store = Store(path)
    store.ensure_domain("cats")
    job = store.enqueue_job("cats", store.add_dataset("cats", "/d", {}), {})
    store.claim_next_job()
    store.close()  # the daemon dies here
    restarted = Store(path)
    assert restarted.requeue_interrupted() == [job["id"]]
    again = restarted.claim_next_job()
    assert again["id"] == job["id"] and again["attempts"] == 2
    kinds = [e["kind"] for e in restarted.events(job["id"])]
    assert kinds == ["queued", "running", "interrupted", "queued", "running"]


def test_adapter_versions_are_promoted_atomically_and_can_be_rolled_back(store):
    store.ensure_domain("cats")
    dataset = store.add_dataset("cats", "/d", {})
    versions = []
    for i in range(2):
        job = store.enqueue_job("cats", dataset, {})
        store.claim_next_job()
        versions.append(store.promote_adapter(job["id"], "/adapters/%d" % i, {"top1": i}))
        assert store.get_job(job["id"])["state"] == "succeeded"
    assert versions == [1, 2] and store.get_domain("cats")["active_version"] == 2
    store.activate_version("cats", 1)
    assert store.active_adapter("cats")["path"] == "/adapters/0"
    with pytest.raises(UnknownName):
        store.activate_version("cats", 9)
    queued = store.enqueue_job("cats", dataset, {})
    with pytest.raises(Conflict):  # only a running job can succeed
        store.promote_adapter(queued["id"], "/adapters/x", {})
    assert [v["version"] for v in store.versions("cats")] == [1, 2]
    assert store.get_domain("cats")["active_version"] == 1


def test_deleting_a_domain_removes_its_records_but_not_during_a_run(store):
    store.ensure_domain("cats")
    store.ensure_domain("dogs")
    job = store.enqueue_job("cats", store.add_dataset("cats", "/d", {}), {})
    store.claim_next_job()
    with pytest.raises(Conflict):
        store.delete_domain("cats")
    store.set_job_state(job["id"], "cancelled")
    store.delete_domain("cats")
    assert [d["name"] for d in store.list_domains()] == ["dogs"]
    with pytest.raises(UnknownName):
        store.get_job(job["id"])
    with pytest.raises(UnknownName):
        store.delete_domain("cats")


def test_concurrent_claims_never_hand_out_a_job_twice(store):
    store.ensure_domain("cats")
    dataset = store.add_dataset("cats", "/d", {})
    for _ in range(40):
        store.enqueue_job("cats", dataset, {})
    claimed, lock = [], threading.Lock()

    def worker():
        while True:
            job = store.claim_next_job()
            if job is None:
                return
            with lock:
                claimed.append(job["id"])

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == 40 and len(set(claimed)) == 40


def test_requeue_only_moves_a_running_job(store):
    store.ensure_domain("cats")
    job = store.enqueue_job("cats", store.add_dataset("cats", "/d", {}), {})
    assert not store.requeue(job["id"], "died")  # still queued: nothing to do
    store.claim_next_job()
    assert store.requeue(job["id"], "died")
    assert not store.requeue(job["id"], "died")  # a second notification is a no-op
    assert store.get_job(job["id"])["state"] == "queued"


def test_a_job_that_keeps_killing_its_worker_fails_and_the_queue_moves_on(store):
    from device_agent.store.db import MAX_ATTEMPTS

    store.ensure_domain("cats")
    dataset = store.add_dataset("cats", "/d", {})
    poison = store.enqueue_job("cats", dataset, {})
    behind = store.enqueue_job("cats", dataset, {})
    for attempt in range(1, MAX_ATTEMPTS):
        assert store.claim_next_job()["id"] == poison["id"]
        assert store.requeue(poison["id"], "the worker process died (signal 9)")
        record = store.get_job(poison["id"])
        assert record["state"] == "queued" and "signal 9" in record["error"]  # kept meanwhile
        assert record["attempts"] == attempt
    assert store.claim_next_job()["id"] == poison["id"]
    store.requeue(poison["id"], "the worker process died (signal 9)")
    record = store.get_job(poison["id"])
    assert record["state"] == "failed" and record["attempts"] == MAX_ATTEMPTS
    assert "gave up after 3 attempts" in record["error"] and "signal 9" in record["error"]
    assert store.claim_next_job()["id"] == behind["id"]  # no longer blocked


def test_a_crash_loop_at_start_up_is_capped_too(tmp_path):
    path = str(tmp_path / "agent.db")
    store = Store(path)
    store.ensure_domain("cats")
    job = store.enqueue_job("cats", store.add_dataset("cats", "/d", {}), {})
    for _ in range(3):  # the whole agent dies mid-job three times
        store.claim_next_job()
        store.close()
        store = Store(path)
        store.requeue_interrupted()
    assert store.get_job(job["id"])["state"] == "failed"
    store.close()


def test_a_domain_is_created_with_its_first_dataset_or_import_or_not_at_all(store):
    with pytest.raises(InvalidInput):
        store.add_dataset("bad\n", "/d", {}, create_domain=True)
    with pytest.raises(ValueError):  # NaN cannot be stored: nothing is, not even the domain
        store.import_adapter("imported", "/a", {"val_top1": float("nan")})
    assert store.list_domains() == []
    store.add_dataset("cats", "/d", {}, create_domain=True)
    assert store.import_adapter("cats", "/a", {"val_top1": 0.5}) == 1
    assert [d["name"] for d in store.list_domains()] == ["cats"]
