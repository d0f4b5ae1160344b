"""Where everything lives under the data directory (stdlib only; the API, the daemon and
the command-line client share it)."""
import os


def default_data_dir() -> str:
    """``$DEVICE_AGENT_DATA_DIR``, else ``$XDG_DATA_HOME/device-agent`` (~/.local/share)."""
    if os.environ.get("DEVICE_AGENT_DATA_DIR"):
        return os.environ["DEVICE_AGENT_DATA_DIR"]
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "share")
    return os.path.join(base, "device-agent")


class DataPaths(object):
    """Every on-disk location under the data directory, in one place."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)

    @property
    def database(self) -> str:
        return os.path.join(self.root, "agent.db")

    @property
    def token(self) -> str:
        return os.path.join(self.root, "token")

    @property
    def uploads(self) -> str:
        return os.path.join(self.root, "uploads")

    def datasets(self, domain: str) -> str:
        return os.path.join(self.root, "datasets", domain)

    def domain(self, domain: str) -> str:
        return os.path.join(self.root, "domains", domain)

    def job(self, job_id: str) -> str:
        return os.path.join(self.root, "jobs", job_id)

    def adapter(self, domain: str, job_id: str) -> str:
        return os.path.join(self.domain(domain), "adapters", job_id)
