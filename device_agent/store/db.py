"""The agent's durable state: SQLite (WAL) in the data directory; stdlib only.

:class:`Store` is the one object the daemon, the API and the tools hold. Its records are
kept by one mixin per seam, each over the same connections (:mod:`.database`: connections,
schema, migrations): domains and datasets (:mod:`.domains`), the job queue and each job's
events and telemetry summary (:mod:`.jobs`), adapter versions (:mod:`.versions`) and the
telemetry history (:mod:`.history`).

Mixins rather than a facade that forwards to parts: every method is written once, where its
table is, and callers keep one object with the same methods (forwarding would list all 32
again, one more list to drift). A mixin depends only on :class:`.database.Database`; what
one seam needs of another it takes from that module's functions, which act inside the
caller's transaction (``promote_adapter`` adds a version and moves its job to succeeded in
one commit).
"""
from device_agent.store.database import MIGRATIONS
from device_agent.store.domains import DOMAIN_NAME, DomainRecords, check_domain_name
from device_agent.store.history import TelemetryHistory
from device_agent.store.jobs import JOB_STATES, MAX_ATTEMPTS, TRANSITIONS, JobQueue
from device_agent.store.samples import SampleRecords  # the data loop (issue 14)
from device_agent.store.versions import AdapterVersions

__all__ = ["DOMAIN_NAME", "JOB_STATES", "MAX_ATTEMPTS", "MIGRATIONS", "TRANSITIONS", "Store",
           "check_domain_name"]


class Store(DomainRecords, JobQueue, AdapterVersions, TelemetryHistory,
            SampleRecords):
    """One SQLite database; safe to share between threads (see :class:`.database.Database`
    for how reads and writes are kept apart)."""
