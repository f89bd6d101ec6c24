"""Free loopback ports for the servers the tests start (side servers, webhooks, Redis,
Prometheus, Alertmanager), chosen **outside the kernel's ephemeral range**.

A port the kernel handed out for ``bind(("127.0.0.1", 0))`` and that the test then closed is
free only until the kernel hands it out again: to any outgoing connection of any process (the
ephemeral range serves both). With the suite in two processes (pytest-xdist), the other one
opens connections all the time, and a server started a moment later found its port taken
("address already in use"). Ports below (or above) that range are never handed out by the
kernel, only by this function: each xdist worker takes its own slice and walks it from a random
start, and a port is returned only if it can be bound right now (a port of a server still
running, or one in TIME_WAIT, is skipped).
"""

from __future__ import annotations

import itertools
import os
import random
import socket
import threading
from collections.abc import Iterator

__all__ = ["free_port"]

#: The lowest port used: above the well-known and the crowded registered ones.
_FLOOR = 10_000
#: A slice smaller than this is not worth it: the kernel's bind(0) is used instead.
_MIN_SLICE = 500

_lock = threading.Lock()
_walk: Iterator[int] | None = None


def _ephemeral() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _slice() -> range | None:
    """This process's ports: below the ephemeral range (or above it), one slice per worker."""
    low, high = _ephemeral()
    if low - _FLOOR >= _MIN_SLICE:
        start, end = _FLOOR, low
    elif 65536 - (high + 1) >= _MIN_SLICE:
        start, end = high + 1, 65536
    else:
        return None
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1))
    index = int(name[2:]) if name[2:].isdigit() else 0
    size = (end - start) // count
    if size < _MIN_SLICE:
        return None
    first = start + (index % count) * size
    return range(first, first + size)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _kernel_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port() -> int:
    """A loopback TCP port nothing listens on; see the module docstring."""
    global _walk
    with _lock:
        if _walk is None:
            ports = _slice()
            if ports is None:
                return _kernel_port()
            offset = random.randrange(len(ports))
            _walk = itertools.cycle([*ports[offset:], *ports[:offset]])
        for _ in range(2000):
            port = next(_walk)
            if _bindable(port):
                return port
    return _kernel_port()
