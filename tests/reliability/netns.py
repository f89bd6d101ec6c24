"""Network namespaces for fault tests: two namespaces joined by a veth pair, a firewall switch
that turns the link into a black hole, and the two processes that live on either side.

Nothing here touches the host's own network: every link, address and rule is created inside
namespaces that the test owns (unique names per process) and removes, and the addresses are
private (``10.213.x.1/30`` and ``10.213.x.2/30``) and reachable only over the veth pair.

::

    with NetnsPair.create("ho") as pair:           # skips if namespaces are unavailable
        sim = await JsonLines.start(pair.sim.cmd(python, "-c", SIM_SCRIPT, ...))
        ...
        pair.client.block("both")                  # the kernel sees a half-open connection
        ...
        pair.client.unblock()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

__all__ = [
    "CLIENT_SCRIPT",
    "SIM_SCRIPT",
    "JsonLines",
    "Namespace",
    "NetnsPair",
    "netns_unavailable",
]

_IP = shutil.which("ip")
_NFT = shutil.which("nft")
_IPTABLES = shutil.which("iptables")
_TABLE = "qqbot_blackhole"


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=15, check=check)


_OURS = re.compile(r"^qq[a-z0-9]*-(?:sim|cli)-(\d+)$")


def sweep_stale_namespaces() -> None:
    """Delete namespaces a killed earlier run left behind (their pid is gone)."""
    if _IP is None:
        return
    listing = _run(_IP, "netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split(" ", 1)[0]
        match = _OURS.match(name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            _run(_IP, "netns", "del", name, check=False)


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None if they can."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root (ip netns add)"
    if _IP is None:
        return "the `ip` tool (iproute2) is not installed"
    if _NFT is None and _IPTABLES is None:
        return "neither nft nor iptables is installed"
    probe = f"qqprobe{os.getpid()}"
    result = _run(_IP, "netns", "add", probe, check=False)
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip() or f"exit {result.returncode}"
        return f"`ip netns add` failed (no CAP_SYS_ADMIN in this container?): {reason}"
    _run(_IP, "netns", "del", probe, check=False)
    return None


@dataclass
class Namespace:
    name: str
    ifname: str
    address: str  # without the prefix length
    blocked: str | None = None

    def cmd(self, *argv: str) -> list[str]:
        """``argv`` run inside this namespace (``ip netns exec`` execs it: same pid)."""
        assert _IP is not None
        return [_IP, "netns", "exec", self.name, *argv]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(*self.cmd(*argv), check=check)

    def _nft(self, rules: list[str]) -> bool:
        """Load ``rules`` (one nft table) in this namespace: True when nft took them; False when
        the caller should fall back to iptables (nft missing or failing, iptables there)."""
        if _NFT is not None:
            proc = subprocess.run(
                self.cmd(_NFT, "-f", "-"),
                input="\n".join(rules) + "\n",
                capture_output=True,
                text=True,
                timeout=15,
                check=False,
            )
            if proc.returncode == 0:
                self.blocked = "nft"
                return True
            if _IPTABLES is None:
                raise RuntimeError(f"nft failed: {proc.stderr.strip()}")
        return False

    def block(self, direction: str = "both") -> None:
        """Drop packets on the veth in ``direction`` (``both``, ``inbound``, ``outbound``):
        no RST, no FIN, no ICMP, so both kernels keep the TCP connection as it was."""
        if direction not in ("both", "inbound", "outbound"):
            raise ValueError(direction)
        hooks = {"both": ("input", "output"), "inbound": ("input",), "outbound": ("output",)}
        rules = [f"table inet {_TABLE} {{"]
        for hook in hooks[direction]:
            match = "iifname" if hook == "input" else "oifname"
            rules.append(
                f"  chain {hook} {{ type filter hook {hook} priority -300; policy accept; "
                f'{match} "{self.ifname}" drop; }}'
            )
        rules.append("}")
        if self._nft(rules):
            return
        assert _IPTABLES is not None
        for hook in hooks[direction]:
            chain, flag = ("INPUT", "-i") if hook == "input" else ("OUTPUT", "-o")
            self.run(_IPTABLES, "-w", "-I", chain, flag, self.ifname, "-j", "DROP")
        self.blocked = f"iptables:{direction}"

    def block_flows(self, ports: list[int]) -> None:
        """Drop every packet of these TCP flows (our local ``ports``), both ways: a NAT or load
        balancer that forgot the connections. New connections pass."""
        if not ports:
            raise ValueError("no flow to block")
        listed = "{ " + ", ".join(str(port) for port in ports) + " }"
        rules = [f"table inet {_TABLE} {{"]
        for hook, match in (("input", "dport"), ("output", "sport")):
            rules.append(
                f"  chain {hook} {{ type filter hook {hook} priority -300; policy accept; "
                f"tcp {match} {listed} drop; }}"
            )
        rules.append("}")
        if self._nft(rules):
            return
        assert _IPTABLES is not None
        for port in ports:
            self.run(
                _IPTABLES, "-w", "-I", "INPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP"
            )
            self.run(
                _IPTABLES, "-w", "-I", "OUTPUT", "-p", "tcp", "--sport", str(port), "-j", "DROP"
            )
        self.blocked = "iptables-flow:" + ",".join(str(port) for port in ports)

    def established_ports(self, peer_port: int) -> list[int]:
        """Local ports of this namespace's ESTABLISHED TCP connections to ``peer_port``."""
        out = self.run("ss", "-tnH", "state", "established").stdout
        ports = []
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 4 and fields[3].rsplit(":", 1)[-1] == str(peer_port):
                ports.append(int(fields[2].rsplit(":", 1)[-1]))
        return ports

    def unblock(self) -> None:
        kind, self.blocked = self.blocked, None
        if kind is None:
            return
        if kind == "nft":
            assert _NFT is not None
            self.run(_NFT, "delete", "table", "inet", _TABLE)
            return
        assert _IPTABLES is not None
        if kind.startswith("iptables-flow:"):
            for port in kind.split(":", 1)[1].split(","):
                self.run(_IPTABLES, "-w", "-D", "INPUT", "-p", "tcp", "--dport", port, "-j", "DROP")
                self.run(
                    _IPTABLES, "-w", "-D", "OUTPUT", "-p", "tcp", "--sport", port, "-j", "DROP"
                )
            return
        direction = kind.split(":", 1)[1]
        chains = {
            "both": ("INPUT", "OUTPUT"),
            "inbound": ("INPUT",),
            "outbound": ("OUTPUT",),
        }[direction]
        for chain in chains:
            flag = "-i" if chain == "INPUT" else "-o"
            self.run(_IPTABLES, "-w", "-D", chain, flag, self.ifname, "-j", "DROP")


@dataclass
class NetnsPair:
    """Two namespaces, ``sim`` and ``client``, joined by one veth pair (a /30)."""

    sim: Namespace
    client: Namespace
    _created: list[str] = field(default_factory=list)

    @classmethod
    @contextlib.contextmanager
    def create(cls, tag: str) -> Iterator[NetnsPair]:
        """Build the pair, or ``pytest.skip`` with the reason namespaces are unavailable."""
        reason = netns_unavailable()
        if reason is not None:
            pytest.skip(reason)
        assert _IP is not None
        sweep_stale_namespaces()
        pid = os.getpid()
        subnet = 1 + pid % 250
        pair = cls(
            sim=Namespace(f"qq{tag}-sim-{pid}", "veth-sim", f"10.213.{subnet}.1"),
            client=Namespace(f"qq{tag}-cli-{pid}", "veth-cli", f"10.213.{subnet}.2"),
        )
        try:
            try:
                pair._build()
            except subprocess.CalledProcessError as exc:
                detail = (exc.stderr or exc.stdout or "").strip()
                pytest.skip(f"cannot build the namespaces and veth pair: {exc.cmd}: {detail}")
            yield pair
        finally:
            with contextlib.suppress(Exception):
                pair.client.unblock()
            for name in reversed(pair._created):
                _run(_IP, "netns", "del", name, check=False)

    def _build(self) -> None:
        assert _IP is not None
        for ns in (self.sim, self.client):
            _run(_IP, "netns", "add", ns.name)
            self._created.append(ns.name)
        # Create the pair inside the sim namespace with its peer in the client one, so the
        # interface names never exist in (or clash with) the host's namespace.
        self.sim.run(
            *(_IP, "link", "add", self.sim.ifname, "type", "veth"),
            *("peer", "name", self.client.ifname, "netns", self.client.name),
        )
        for ns in (self.sim, self.client):
            ns.run(_IP, "addr", "add", f"{ns.address}/30", "dev", ns.ifname)
            ns.run(_IP, "link", "set", ns.ifname, "up")
            ns.run(_IP, "link", "set", "lo", "up")


class JsonLines:
    """A child process that prints one JSON object per line on stdout."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.lines: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._changed = asyncio.Event()
        self._readers = [
            asyncio.create_task(self._read_stdout(), name=f"{name} stdout"),
            asyncio.create_task(self._read_stderr(), name=f"{name} stderr"),
        ]

    @classmethod
    async def start(cls, argv: list[str], name: str) -> JsonLines:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=1 << 24,
        )
        return cls(proc, name)

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            text = line.decode(errors="replace").strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except ValueError:
                obj = {"k": "text", "text": text}
            self.lines.append(obj if isinstance(obj, dict) else {"k": "json", "value": obj})
            self._changed.set()
        self._changed.set()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.stderr.append(line.decode(errors="replace").rstrip())
            del self.stderr[:-200]  # keep the tail for failure messages

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("k") == kind]

    async def wait_for(
        self,
        predicate: Callable[[], Any],
        timeout: float,
        what: str,
    ) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if self.proc.returncode is not None and not self._changed.is_set():
                raise AssertionError(
                    f"{self.name} exited ({self.proc.returncode}) while waiting for {what}\n"
                    + "\n".join(self.stderr[-30:])
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out after {timeout:.1f}s waiting for {what} from {self.name}\n"
                    + "\n".join(self.stderr[-30:])
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.1)):
                    await self._changed.wait()

    async def wait_line(
        self,
        kind: str,
        timeout: float,
        *,
        after: int = 0,
        where: Callable[[dict[str, Any]], bool] = lambda line: True,
    ) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for line in self.lines[after:]:
                if line.get("k") == kind and where(line):
                    return line
            return None

        found: dict[str, Any] = await self.wait_for(find, timeout, kind)
        return found

    async def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; always reaps the process."""
        proc = self.proc
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in self._readers:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(2.0):
                    await task
            task.cancel()
        if proc.stdin is not None:
            proc.stdin.close()


# --- the two sides ------------------------------------------------------------------------
#: The simulator, standalone, bound to the namespace's address. argv: host port interval_ms
#: event_rate. Prints {"k": "listening", ...}; then answers commands on stdin, one per line:
#: ``pause`` / ``resume`` (the event generator), ``dump`` (every event emitted so far, and the
#: session/resume records), ``quit``.
SIM_SCRIPT = r"""
import asyncio, json, sys
from qqbot_gateway.simulator import Simulator, SimulatorConfig

def out(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()

async def main():
    host, port = sys.argv[1], int(sys.argv[2])
    interval_ms, rate = int(sys.argv[3]), float(sys.argv[4])
    sim = Simulator(SimulatorConfig(
        app_id="102030405", client_secret="netns-secret", heartbeat_interval_ms=interval_ms,
        event_rate=rate, seed=11,
    ))
    await sim.start(host=host, port=port)
    loop = asyncio.get_running_loop()
    out(k="listening", base=sim.base_url, ws=sim.ws_url, token_url=sim.token_url, t=loop.time())
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            cmd = line.decode().strip()
            if cmd == "pause":
                sim.pause_events()
                out(k="paused", t=loop.time())
            elif cmd == "resume":
                sim.resume_events()
                out(k="resumed_events", t=loop.time())
            elif cmd == "dump":
                out(
                    k="dump",
                    t=loop.time(),
                    emitted=[
                        [r.session_id, r.seq, r.event_id, r.type] for r in sim.emitted_events()
                    ],
                    sessions=sim.sessions_created,
                    resumes=[[r.session_id, r.seq, r.outcome, r.replayed] for r in sim.resumes],
                    identifies=[[r.outcome, r.session_id] for r in sim.identifies],
                    connections=[
                        [c.conn_id, c.closed_by, c.close_code] for c in sim.connections
                    ],
                )
            elif cmd == "quit":
                break
    finally:
        await sim.stop()

try:
    asyncio.run(main())
except KeyboardInterrupt:
    pass
"""

#: The adapter: ``QQBotClient`` against the simulator. argv: base_url token_url ws_url
#: interval_s [ws_ping on|off] (default on). Prints one JSON line per
#: lifecycle event that matters here and one per delivered dispatch; runs until SIGTERM.
CLIENT_SCRIPT = r"""
import asyncio, json, signal, sys
from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.client import ClientConfig, QQBotClient, Secret
from qqbot_gateway.adapter.connection import TransportConfig
from qqbot_gateway.adapter.session import LivenessConfig
from qqbot_gateway.adapter.supervisor import ReconnectPolicy

def out(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()

KINDS = {
    ev.Connected: "connected", ev.HelloReceived: "hello", ev.IdentifySent: "identify",
    ev.ResumeSent: "resume_sent", ev.SessionReady: "ready", ev.SessionResumed: "resumed",
    ev.ZombieDetected: "zombie", ev.Disconnected: "disconnected",
    ev.ReconnectScheduled: "reconnect_scheduled", ev.DuplicateDropped: "duplicate",
    ev.HeartbeatSent: "heartbeat", ev.HeartbeatAcked: "ack", ev.ShardFatal: "fatal",
    ev.SupervisorStopped: "supervisor_stopped", ev.PingLayerChanged: "ping_layer",
}
FIELDS = ("reason", "close_code", "detail", "resumable", "session_id", "replayed", "unacked",
          "idle_for", "heartbeat_interval", "seq", "rtt", "delay", "mode", "message", "error",
          "state")

def on_event(event):
    kind = KINDS.get(type(event))
    if kind is None:
        return
    out(k=kind, t=event.monotonic, **{f: getattr(event, f) for f in FIELDS if hasattr(event, f)})

async def main():
    base, token_url, ws_url, interval = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    ws_ping = len(sys.argv) <= 5 or sys.argv[5] == "on"
    config = ClientConfig(
        app_id="102030405",
        client_secret=Secret("netns-secret"),
        api_base=base,
        token_url=token_url,
        gateway_url=ws_url,
        # Without ws_ping the session's other layers (ACK deadline, receive idle) must do it.
        liveness=LivenessConfig(hello_timeout=3 * interval, handshake_timeout_min=3 * interval,
                                ws_ping=ws_ping),
        transport=TransportConfig(connect_timeout=1.5, close_timeout=0.5, send_timeout=2.0),
        reconnect=ReconnectPolicy(backoff_base=0.1, backoff_cap=0.5, healthy_after=2 * interval,
                                  quick_lifetime=0.2 * interval),
    )
    client = QQBotClient(config)
    client.events.subscribe(on_event)
    loop = asyncio.get_running_loop()

    async def handler(event):
        out(k="event", t=loop.time(), type=event.type, seq=event.seq, id=event.event_id,
            session_id=event.session_id, replayed=event.replayed)

    client.add_handler(handler)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await client.start()
    out(k="started", t=loop.time())
    await stop.wait()
    await client.close(drain_timeout=2.0)
    out(k="closed", t=loop.time())

asyncio.run(main())
"""
