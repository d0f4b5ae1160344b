"""One lock per domain name, for the steps that create, fill or delete a domain's files and
records together (stdlib only). Uploads unpack outside the domain (in a staging directory)
without it and take it only to move the result into place and record it, so a DELETE or a
failing upload never removes a directory that a concurrent good upload is writing into.
Locks of names nobody holds are dropped, so made-up names do not accumulate."""
import threading
from contextlib import contextmanager
from typing import Iterator, List

_guard = threading.Lock()
_locks = {}  # name -> [its lock, how many hold or wait for it]


@contextmanager
def domain_lock(name: str) -> Iterator[None]:
    with _guard:
        entry = _locks.setdefault(name, [threading.Lock(), 0])
        entry[1] += 1
    try:
        with entry[0]:
            yield
    finally:
        with _guard:
            entry[1] -= 1
            if entry[1] == 0:
                del _locks[name]


def held_names() -> List[str]:
    """Names with a holder or a waiter (for tests)."""
    with _guard:
        return sorted(_locks)
