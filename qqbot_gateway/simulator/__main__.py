"""``python -m qqbot_gateway.simulator``: run the simulator until SIGINT/SIGTERM."""

from __future__ import annotations

import sys

from qqbot_gateway.simulator.standalone import main

if __name__ == "__main__":
    sys.exit(main())
