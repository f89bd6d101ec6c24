"""``python -m qqbot_gateway.healthcheck``: the container's HEALTHCHECK.

Exit 0 when the side server's ``/healthz`` answers 200, 1 otherwise (a 503, a refused
connection, a timeout), 0 with a note when the side server is off (``QQBOT_HTTP_ADDR=off``:
nothing to probe; the orchestrator's own checks apply). The address comes from
``QQBOT_HTTP_ADDR`` exactly as ``run`` reads it (a wildcard bind is probed on loopback), so a
container started with another port is probed on that port. A TOML file given to ``run
--config`` is not visible here: set ``QQBOT_HTTP_ADDR`` in the environment when it moves the
side server.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Final

from qqbot_gateway.adapter.protocol import url_host
from qqbot_gateway.config import ConfigError, load_settings

__all__ = ["healthz_url", "main"]

#: Below Docker's HEALTHCHECK --timeout (5 s in the Dockerfile), so that a slow answer is our
#: failure with a message, not Docker's kill.
PROBE_TIMEOUT: Final = 4.0
#: A wildcard bind is reached on the loopback address of its family.
_LOOPBACK: Final = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - a lookup key, never bound


def healthz_url(env: Mapping[str, str]) -> str | None:
    """The URL to probe, or None when the side server is off. ConfigError for a bad value."""
    addr = load_settings(None, env=env, warn=lambda line: None).http_addr
    if addr is None:
        return None
    host, port = addr
    return f"http://{url_host(_LOOPBACK.get(host, host))}:{port}/healthz"


def main(env: Mapping[str, str] | None = None) -> int:
    try:
        url = healthz_url(os.environ if env is None else env)
    except ConfigError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1
    if url is None:
        print("healthcheck: the side server is off (QQBOT_HTTP_ADDR=off); nothing to probe")
        return 0
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT) as resp:  # noqa: S310 - http only
            print(f"healthcheck: {url}: {resp.status}")
            return 0
    except urllib.error.HTTPError as exc:
        print(f"healthcheck: {url}: {exc.code}", file=sys.stderr)
    except (OSError, TimeoutError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
