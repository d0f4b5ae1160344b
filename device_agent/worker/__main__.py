import sys

from device_agent.worker.main import main

sys.exit(main())
