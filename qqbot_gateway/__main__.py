"""``python -m qqbot_gateway``: the same as the ``qqbot-gateway`` command."""

from __future__ import annotations

import sys

from qqbot_gateway.cli import main

if __name__ == "__main__":
    sys.exit(main())
