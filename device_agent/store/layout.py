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

    def make_private(self) -> None:
        """The data dir 0700 and the database files 0600: the adapters, datasets and job
        records are the owner's alone (the token file is written 0600 already)."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.database + suffix):
                os.chmod(self.database + suffix, 0o600)

    @property
    def spool(self) -> str:
        """Where multipart uploads spool while the form is parsed (not the system temp)."""
        return os.path.join(self.root, "spool")

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

    # --- the data loop (issue 14): the working set's images and its snapshots ---------------

    def samples(self, domain: str) -> str:
        """The domain's images, content-addressed: ``<sha256[:2]>/<sha256><ext>``."""
        return os.path.join(self.domain(domain), "samples")

    def snapshots(self, domain: str) -> str:
        """The domain's immutable training snapshots, one ImageFolder per id."""
        return os.path.join(self.domain(domain), "snapshots")

    # capture (issue 14)
    @property
    def videos(self) -> str:
        """Video files a capture may read (a source names one relative to this folder)."""
        return os.path.join(self.root, "videos")
