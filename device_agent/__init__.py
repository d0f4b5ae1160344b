"""device-agent: on-device DA2 adapter training for NVIDIA Jetson boards.

Importing the package loads nothing heavy; the torch side lives in
``device_agent.model`` and ``device_agent.training`` (Python 3.6 / torch 1.10 safe).
"""

__version__ = "0.1.0"
