import sys

from device_agent.cpu_budget import configure_process

# Before torch is imported: OpenMP, MKL and OpenBLAS read their thread variables once, when
# they are loaded (device_agent.cpu_budget says why this matters on a shared CPU).
POLICY = configure_process()

from device_agent.worker.main import main  # noqa: E402  (after the thread policy, on purpose)

sys.exit(main(thread_policy=POLICY))
