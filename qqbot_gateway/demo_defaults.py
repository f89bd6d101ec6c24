"""The demo's defaults, apart from the demo itself: the command line shows them in ``--help``
without importing the demo (and rich, the simulator, telemetry) for every command."""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_DURATION", "DEFAULT_EVENT_RATE", "DEFAULT_INTERVAL"]

#: Seconds: room for every scripted fault at the default interval (see ``minimum_duration``).
DEFAULT_DURATION: Final = 40.0
#: Heartbeat interval in seconds: short, so that detection is watchable (QQ sends 41.25).
DEFAULT_INTERVAL: Final = 1.0
#: Events per second: enough to see the gap and the replay after each fault.
DEFAULT_EVENT_RATE: Final = 5.0
