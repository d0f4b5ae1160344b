"""``serve --demo``: a first domain from real data a package ships (the UCI handwritten
digits inside scikit-learn's wheel), uploaded and queued for training at start-up, so a
newcomer sees a trained domain, its status and predictions within minutes."""
import os
import shutil
import tarfile
import tempfile

from device_agent.demo import DEMO_DOMAIN, write_digits_folder
from device_agent.jobspec import DEFAULT_BACKBONE, DEFAULT_METHOD, TrainParams
from device_agent.store import datasets
from device_agent.store.db import Store
from device_agent.store.files import DomainFiles
from device_agent.store.layout import DataPaths

DEMO_JOB = {"method": DEFAULT_METHOD, "backbone": DEFAULT_BACKBONE, "epochs": 4,
            "batch_size": 32, "resolution": 64, "hflip": False, "seed": 0}
TrainParams.from_mapping(DEMO_JOB)  # at import: a job the worker would refuse cannot ship


def seed_demo_domain(store: Store, paths: DataPaths) -> bool:
    """Upload the digits and queue a job, unless the domain exists. True when seeded."""
    if any(d["name"] == DEMO_DOMAIN for d in store.list_domains()):
        return False
    scratch = tempfile.mkdtemp(prefix="demo-", dir=paths.root)
    try:
        folder = os.path.join(scratch, "digits")
        write_digits_folder(folder)
        archive = os.path.join(scratch, "digits.tar")
        with tarfile.open(archive, "w") as tar:
            tar.add(folder, arcname="digits")
        with open(archive, "rb") as upload:  # as an upload: into the working set too
            DomainFiles(store, paths).add_dataset(DEMO_DOMAIN, upload,
                                                  os.path.getsize(archive), datasets.Limits())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    store.enqueue_job(DEMO_DOMAIN, None, dict(DEMO_JOB))  # trains the working set
    return True
