"""`serve --demo`: the digits domain is uploaded and queued once, from the package's data."""
import pytest

from device_agent.store.db import Store
from device_agent.store.layout import DataPaths

pytest.importorskip("sklearn")


def test_the_demo_domain_is_seeded_once(tmp_path):
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
    assert seed_demo_domain(store, paths) is False  # a restart does not queue it again
    assert len(store.list_jobs(DEMO_DOMAIN)) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("demo-")] == []
