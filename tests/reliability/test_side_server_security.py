"""The telemetry side server from an attacker's point of view, over real sockets.

``tests/test_telemetry_http.py`` covers the routes, HEAD/POST/DELETE, one oversized header and
query, and the slow-client watchdog. This file adds:

* it listens exactly where it is configured (127.0.0.1 only: nothing on the other loopback
  addresses, the IPv6 loopback or the host's own addresses);
* it serves nothing but ``/healthz``, ``/livez``, ``/readyz``, ``/metrics`` and the status
  page (``/``, ``/status``, ``/status.json``, ``/static/status.{js,css}``): a list of paths
  scanners and operators try (debug pages, admin pages, the simulator's control API, dotfiles,
  path traversal) are all 404, other methods on the real routes 405, none echoing the request;
* oversized and malformed HTTP sent over a raw socket (too many headers, a huge header name,
  method or request line, bad framing, smuggling attempts, binary junk, a TLS or HTTP/2
  preface) is answered 4xx or cut off, never 2xx/5xx and never amplified, and afterwards the
  server still answers ``/healthz`` normally.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from qqbot_gateway.telemetry import Telemetry, TelemetryConfig

ROUTES = (
    "/healthz",
    "/livez",
    "/readyz",
    "/metrics",
    "/",
    "/status",
    "/status.json",
    "/static/status.js",
    "/static/status.css",
)
#: Per raw exchange; every case here is answered (or cut off) at once in practice.
READ_TIMEOUT = 5.0


async def start(host: str = "127.0.0.1") -> Telemetry:
    tel = Telemetry(
        TelemetryConfig(http_host=host, http_port=0, tracing=False), registry=CollectorRegistry()
    )
    await tel.start()
    return tel


@pytest.fixture
async def tel() -> AsyncIterator[Telemetry]:
    t = await start()
    try:
        yield t
    finally:
        await t.stop()


def port_of(tel: Telemetry) -> int:
    assert tel.server is not None and tel.server.port is not None
    return tel.server.port


async def exchange(port: int, data: bytes, *, host: str = "127.0.0.1") -> bytes:
    """Send raw bytes, read until the server closes (or the timeout); never half-close first
    (aiohttp drops a connection whose peer sent EOF without answering)."""
    reader, writer = await asyncio.open_connection(host, port)
    chunks: list[bytes] = []
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(READ_TIMEOUT):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return b"".join(chunks)


def status_of(reply: bytes) -> int | None:
    if not reply.startswith(b"HTTP/"):
        return None
    return int(reply.split(b" ", 2)[1])


async def assert_healthy(port: int) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/healthz") as resp,
    ):
        assert resp.status == 200
        doc = json.loads(await resp.text())
        assert doc["status"] == "ok"


# --- where it listens -------------------------------------------------------------------
def _listening_addresses(port: int) -> set[str]:
    """Local addresses of LISTEN sockets on ``port``, from /proc/net/tcp{,6}."""
    found: set[str] = set()
    for name, family in (("tcp", 4), ("tcp6", 6)):
        try:
            with open(f"/proc/net/{name}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(addr_hex)
            # /proc prints each 32-bit word in host (little-endian) order.
            words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
            packed = b"".join(words)
            found.add(str(ipaddress.ip_address(packed if family == 6 else packed[:4])))
    return found


def _other_local_addresses() -> list[str]:
    """The host's own addresses other than 127.0.0.1 (each a local connect, no traffic out)."""
    out = ["127.0.0.2", "127.1.2.3"]
    if socket.has_ipv6:
        out.append("::1")
    ip = shutil.which("ip")
    if ip is not None:
        result = subprocess.run(
            [ip, "-j", "addr", "show"], capture_output=True, text=True, timeout=10, check=False
        )
        with contextlib.suppress(ValueError):
            for link in json.loads(result.stdout or "[]"):
                for info in link.get("addr_info", []):
                    local = info.get("local")
                    if not local or local == "127.0.0.1":
                        continue
                    addr = ipaddress.ip_address(local)
                    if addr.version == 6 and addr.is_link_local:
                        continue  # needs a scope id; not an address a scanner would use
                    out.append(local)
    return list(dict.fromkeys(out))


async def _refused(host: str, port: int) -> bool:
    try:
        async with asyncio.timeout(3):
            _reader, writer = await asyncio.open_connection(host, port)
    except (ConnectionRefusedError, TimeoutError):
        return True
    except OSError:
        return True  # e.g. no IPv6 on this host: nothing listens there either
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return False


async def test_listens_on_the_configured_address_only(tel: Telemetry) -> None:
    port = port_of(tel)
    assert tel.http_url == f"http://127.0.0.1:{port}"
    assert _listening_addresses(port) == {"127.0.0.1"}
    await assert_healthy(port)
    reachable = [h for h in _other_local_addresses() if not await _refused(h, port)]
    assert reachable == [], f"the side server also answers on {reachable}"


async def test_another_configured_address_is_honoured_too() -> None:
    t = await start("127.0.0.2")
    try:
        port = port_of(t)
        assert _listening_addresses(port) == {"127.0.0.2"}
        assert await _refused("127.0.0.1", port)
        reply = await exchange(
            port, b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", host="127.0.0.2"
        )
        assert status_of(reply) == 200
    finally:
        await t.stop()


# --- what it serves ---------------------------------------------------------------------
PROBED_PATHS = (
    "/index.html",
    "/debug",
    "/debug/pprof/",
    "/debug/vars",
    "/admin",
    "/admin/",
    "/_sim/state",
    "/_sim/faults",
    "/_sim/messages",
    "/websocket",
    "/gateway/bot",
    "/app/getAppAccessToken",
    "/.env",
    "/.git/config",
    "/config",
    "/env",
    "/server-status",
    "/status/",
    "/status.html",
    "/status.js",
    "/status.json/",
    "/static",
    "/static/",
    "/static/status.html",
    "/static/status.js/",
    "/static/status.json",
    "/static/%2e%2e/status.json",
    "/static/..%2fstatus.json",
    "/health",
    "/ready",
    "/live",
    "/healthz/",
    "/healthz/x",
    "/HEALTHZ",
    "/Metrics",
    "/metrics/",
    "/metrics.json",
    "/metrics/../etc/passwd",
    "/metrics/..%2f..%2fetc%2fpasswd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/static/../../etc/passwd",
    "//etc/passwd",
    "/api",
    "/openapi.json",
    "/docs",
    "/favicon.ico",
    "/robots.txt",
)


@pytest.mark.parametrize("path", PROBED_PATHS)
async def test_nothing_but_the_routes_is_served(tel: Telemetry, path: str) -> None:
    # Raw, so that the path reaches the server exactly as written (clients normalize "..").
    reply = await exchange(
        port_of(tel), f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode()
    )
    assert status_of(reply) == 404, reply[:200]
    assert reply.endswith(b"\r\n\r\n404 Not Found\n"), reply[-200:]


async def test_the_routes_answer(tel: Telemetry) -> None:
    port = port_of(tel)
    for path in ROUTES:
        reply = await exchange(
            port, f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode()
        )
        assert status_of(reply) in (200, 503), (path, reply[:200])


@pytest.mark.parametrize("method", ["PUT", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "FOO"])
async def test_other_methods_are_405_and_never_echo(tel: Telemetry, method: str) -> None:
    port = port_of(tel)
    marker = b"echo-me-8c1f"
    for path in ROUTES:
        reply = await exchange(
            port,
            f"{method} {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n".encode()
            + b"X-Marker: "
            + marker
            + b"\r\nContent-Length: 12\r\n\r\n"
            + marker,
        )
        status = status_of(reply)
        # aiohttp's parser refuses methods it does not know (FOO) with 400 before routing.
        assert status == 405 or (status == 400 and method == "FOO"), (method, path, reply[:200])
        assert marker not in reply, (method, path)
        if status == 405:
            assert b"GET" in reply.split(b"\r\n\r\n", 1)[0]  # the Allow header names GET


# --- malformed and oversized requests ---------------------------------------------------
MANY_HEADERS = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
MALFORMED = {
    "too-many-headers": b"GET /healthz HTTP/1.1\r\nHost: a\r\n" + MANY_HEADERS + b"\r\n",
    "huge-header-name": b"GET /healthz HTTP/1.1\r\nHost: a\r\n" + b"X" * 20_000 + b": v\r\n\r\n",
    "huge-method": b"G" * 20_000 + b" /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
    "1MiB-binary-method": bytes([0x80]) * (1 << 20) + b" /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
    "1MiB-request-line": b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\nHost: a\r\n\r\n",
    "1MiB-of-headers": b"GET /healthz HTTP/1.1\r\nHost: a\r\n" + b"X-A: b\r\n" * 150_000,
    "nul-in-path": b"GET /heal\x00thz HTTP/1.1\r\nHost: a\r\n\r\n",
    "bad-version": b"GET /healthz HTTP/9.9\r\nHost: a\r\n\r\n",
    "bad-method-chars": b"G(T /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
    "obs-fold": b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  folded\r\n\r\n",
    "space-in-header-name": b"GET /healthz HTTP/1.1\r\nHost: a\r\nBad Header: v\r\n\r\n",
    "bare-cr": b"GET /healthz HTTP/1.1\rHost: a\r\n\r\n",
    "lf-only": b"GET /healthz HTTP/1.1\nHost: a\n\n",
    "negative-content-length": b"GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    "overflowing-content-length": (
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n"
    ),
    "duplicate-content-length": (
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
    ),
    "cl-and-te-smuggling": (
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /_sim/state HTTP/1.1\r\nHost: a\r\n\r\n"
    ),
    "bad-chunk-size": (
        b"POST /healthz HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n"
    ),
    "binary-junk": bytes(range(256)) * 4,
    "tls-client-hello": bytes.fromhex("16030100a5010000a10303") + bytes(200),
    "http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_malformed_requests_are_rejected_and_the_server_survives(
    tel: Telemetry, name: str
) -> None:
    port = port_of(tel)
    data = MALFORMED[name]
    reply = await exchange(port, data)
    status = status_of(reply)
    assert status is None or 400 <= status < 500, (name, reply[:300])
    if status is None:
        assert reply == b"", (name, reply[:300])  # cut off without an answer is fine too
    # Bounded whatever was sent. aiohttp's 400 body quotes the offending bytes, escaped (up to
    # 4 characters per byte), and the method token is not capped by max_line_size: a 1 MiB
    # method is answered with ~128 KiB. Small and bounded, but not "a short body".
    assert len(reply) <= min(4 * len(data) + 1024, 256 * 1024), (name, len(reply))
    assert b"Traceback" not in reply
    await assert_healthy(port)


async def test_a_storm_of_bad_connections_leaves_the_server_answering(tel: Telemetry) -> None:
    port = port_of(tel)
    cases = list(MALFORMED.values()) * 3
    await asyncio.gather(*(exchange(port, data) for data in cases))
    await assert_healthy(port)
    reply = await exchange(port, b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert status_of(reply) == 200
