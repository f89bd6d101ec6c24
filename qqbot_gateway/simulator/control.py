"""The simulator's control API (``/_sim/...``) and its fault registry.

Every fault another process can switch is one :class:`Fault` row in :data:`FAULTS`: its name,
the parameters it reads, one line of help, and the :class:`~qqbot_gateway.simulator.Simulator`
call it makes. ``POST /_sim/faults``, :meth:`Simulator.apply_fault` and the ``--help`` text of
the simulator's entry point (:func:`control_help`) all read this table, so a new fault is one
row, never a new ``match`` arm and a hand-written help line.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from qqbot_gateway.simulator.core import json_response
from qqbot_gateway.simulator.faults import MISSING

if TYPE_CHECKING:
    from qqbot_gateway.simulator.server import Simulator

__all__ = ["FAULTS", "Fault", "Params", "add_control_routes", "apply_fault", "control_help"]

#: The default size of a ``raw`` "huge" frame: above the 1 MiB a client should accept.
_HUGE_FRAME: Final = 2 << 20


class Params:
    """A fault's JSON parameters, read with a type and a default (TypeError/ValueError on a
    value that does not convert: the control API answers 400)."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw

    def __contains__(self, key: str) -> bool:
        return key in self.raw

    def flag(self, key: str, default: bool) -> bool:
        return bool(self.raw.get(key, default))

    def number(self, key: str, default: float) -> float:
        return float(self.raw.get(key, default))

    def integer(self, key: str, default: int) -> int:
        return int(self.raw.get(key, default))

    def optional_float(self, key: str, default: float | None) -> float | None:
        value = self.raw.get(key, default)
        return None if value is None else float(value)

    def optional_int(self, key: str) -> int | None:
        value = self.raw.get(key)
        return None if value is None else int(value)

    def text(self, key: str, default: str) -> str:
        return str(self.raw.get(key, default))

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    @property
    def shard(self) -> int | None:
        """The ``shard`` a fault is limited to (None: every connection)."""
        return self.optional_int("shard")


Apply = Callable[["Simulator", Params], Awaitable[Any] | Any]


@dataclass(frozen=True, slots=True)
class Fault:
    name: str
    #: The parameters it reads, as shown in ``--help`` ("" for none).
    params: str
    help: str
    apply: Apply
    #: Other names accepted for it.
    aliases: tuple[str, ...] = ()


def _invalid_session(sim: Simulator, p: Params) -> Awaitable[int]:
    kwargs: dict[str, Any] = {}
    if "close_code" in p:
        kwargs["close_code"] = p.get("close_code")
    return sim.send_invalid_session(p.flag("resumable", False), shard=p.shard, **kwargs)


def _latency(sim: Simulator, p: Params) -> None:
    seed = p.optional_int("seed")
    sim.set_reply_latency(
        p.optional_float("median", 0.05),
        jitter=p.number("jitter", 10.0),
        spike_rate=p.number("spike_rate", 0.0),
        spike=p.number("spike", 0.0),
        seed=seed,
    )


#: Every fault, in the order ``--help`` lists them.
_ROWS: Final[tuple[Fault, ...]] = (
    Fault("stop_acks", "", "heartbeats recorded, no op 11 sent", lambda s, p: s.stop_acks()),
    Fault("resume_acks", "", "op 11 again", lambda s, p: s.resume_acks()),
    Fault(
        "ignore_pings",
        "{on}",
        "WebSocket pings dropped, no pong",
        lambda s, p: s.ignore_pings(p.flag("on", True)),
    ),
    Fault(
        "latency",
        "{median, jitter, spike_rate, spike, seed}",
        "op 11 and pong delays (median null: off)",
        _latency,
    ),
    Fault(
        "blackhole",
        "{current, new}",
        "silence connections: no byte written or read, no close",
        lambda s, p: s.blackhole(current=p.flag("current", True), new=p.flag("new", False)),
    ),
    Fault(
        "heal",
        "",
        "new connections work again; blackholed sockets are aborted",
        lambda s, p: s.unblackhole(),
        aliases=("unblackhole",),
    ),
    Fault(
        "close",
        "{code, reason, shard}",
        "close current connections (default 4009)",
        lambda s, p: s.close_connections(
            p.integer("code", 4009), p.text("reason", ""), shard=p.shard
        ),
    ),
    Fault(
        "reconnect",
        "{shard}",
        "send op 7 (the session stays resumable)",
        lambda s, p: s.send_reconnect(shard=p.shard),
    ),
    Fault(
        "invalid_session",
        "{resumable, close_code, shard}",
        "send op 9, then close",
        _invalid_session,
    ),
    Fault(
        "delay",
        "{seconds}",
        "delay every frame written from now on",
        lambda s, p: s.set_outgoing_delay(p.number("seconds", 0.0)),
    ),
    Fault(
        "refuse",
        '{mode: "503"|"reset"}',
        "refuse new WebSocket connections",
        lambda s, p: s.refuse_connections(p.text("mode", "503")),
    ),
    Fault("accept", "", "accept new connections again", lambda s, p: s.accept_connections()),
    Fault(
        "expire_tokens",
        "",
        "every token issued so far stops working",
        lambda s, p: s.expire_tokens(),
    ),
    Fault(
        "token",
        '{mode: "500"|"error_200"|"malformed", delay, expires_in}',
        "token endpoint faults (no mode: healthy)",
        lambda s, p: s.set_token_fault(
            p.get("mode"), delay=p.number("delay", 0.0), expires_in=p.get("expires_in")
        ),
    ),
    Fault(
        "gateway",
        '{mode: "500"|"503"|"malformed", delay}',
        "/gateway and /gateway/bot faults",
        lambda s, p: s.set_gateway_fault(p.get("mode"), delay=p.number("delay", 0.0)),
    ),
    Fault(
        "reject_resumes",
        "{count}",
        "the next resumes fail",
        lambda s, p: s.reject_next_resumes(p.integer("count", 1)),
    ),
    Fault(
        "withhold_hello",
        "{on}",
        "new connections get no Hello",
        lambda s, p: s.withhold_hello(p.flag("on", True)),
    ),
    Fault(
        "withhold_ready",
        "{on}",
        "Identify and Resume are ignored",
        lambda s, p: s.withhold_ready(p.flag("on", True)),
    ),
    Fault(
        "hello_interval",
        "{value}",
        "Hello's heartbeat_interval for new connections (no value: the key left out)",
        lambda s, p: s.set_hello_interval(p.get("value") if "value" in p else MISSING),
    ),
    Fault(
        "clear_hello_interval",
        "",
        "Hello's heartbeat_interval as configured",
        lambda s, p: s.clear_hello_interval(),
    ),
    Fault(
        "raw",
        "{kind, size, shard}",
        "send a bad frame: invalid_json, binary, unknown_op, missing_fields, wrong_types, huge",
        lambda s, p: s.send_raw(
            p.text("kind", ""), size=p.integer("size", _HUGE_FRAME), shard=p.shard
        ),
    ),
    Fault(
        "event_rate",
        "{rate}",
        "background events per second per session",
        lambda s, p: s.set_event_rate(p.number("rate", 0.0)),
    ),
    Fault("pause_events", "", "stop the event generator", lambda s, p: s.pause_events()),
    Fault("resume_events", "", "restart the event generator", lambda s, p: s.resume_events()),
    Fault(
        "reset",
        "",
        "every switch back to healthy (blackholed sockets stay so: heal)",
        lambda s, p: s.reset_faults(),
    ),
)

#: By name, aliases included.
FAULTS: Final[Mapping[str, Fault]] = {
    name: row for row in _ROWS for name in (row.name, *row.aliases)
}


async def apply_fault(sim: Simulator, name: str, params: Mapping[str, Any]) -> Any:
    """Apply the fault ``name`` with ``params`` (the ``POST /_sim/faults`` body); its result
    (a count of connections for some), or None. ValueError for an unknown fault."""
    fault = FAULTS.get(name)
    if fault is None:
        raise ValueError(f"unknown fault {name!r} (known: {', '.join(sorted(FAULTS))})")
    result = fault.apply(sim, Params(params))
    if inspect.isawaitable(result):
        result = await result
    return result


def control_help(width: int = 96) -> str:
    """The control API's part of ``--help``: the endpoints, then every fault of the table."""
    lines = [
        "control API (on the simulator's port; bind it to 127.0.0.1, the default):",
        "  GET  /_sim/state            sessions, connections, counters, active faults",
        "  GET  /_sim/messages         messages the bot sent on the send endpoints",
        '  POST /_sim/events           {"count": N, "type": T, "data": {...}, "shard": S}: emit',
        "                              (T also GROUP_MESSAGE_CREATE, GROUP_MEMBER_ADD/_REMOVE,",
        "                              or any name: unknown types pass through unchanged)",
        "  POST /_sim/events/pause     stop the background event generator (and /resume)",
        "  POST /_sim/reset            every fault off",
        '  POST /_sim/faults           {"fault": NAME, ...params}; NAME is one of:',
    ]
    for row in _ROWS:
        name = " | ".join((row.name, *row.aliases))
        head = f"{name} {row.params}".rstrip()
        lines += textwrap.wrap(
            f"{head}: {row.help}",
            width=width,
            initial_indent="      ",
            subsequent_indent="          ",
        )
    lines.append('  example: curl -X POST localhost:8765/_sim/faults -d \'{"fault": "blackhole"}\'')
    return "\n".join(lines) + "\n"


# --- the HTTP side ---------------------------------------------------------------------------


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def add_control_routes(router: web.UrlDispatcher, sim: Simulator) -> None:
    """Serve ``/_sim/...`` for ``sim`` (public Simulator calls only)."""

    async def state(request: web.Request) -> web.Response:
        return json_response(sim.state())

    def action(call: Callable[[], None]) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            call()
            return json_response({"ok": True})

        return handler

    async def messages(request: web.Request) -> web.Response:
        return json_response(
            [
                {
                    "kind": m.kind,
                    "target": m.target,
                    "body": m.body,
                    "msg_id": m.msg_id,
                    "msg_seq": m.msg_seq,
                    "id": m.id,
                }
                for m in sim.messages
            ]
        )

    async def events(request: web.Request) -> web.Response:
        body = await _json_object(request)
        if body is None:
            return json_response({"ok": False, "error": "expected a JSON object"}, status=400)
        try:
            p = Params(body)
            records = await sim.emit_events(
                p.integer("count", 1),
                body.get("type"),
                body.get("data"),
                shard=p.shard,
                session_id=body.get("session_id"),
            )
        except (TypeError, ValueError) as exc:
            return json_response({"ok": False, "error": str(exc)}, status=400)
        return json_response(
            {"ok": True, "emitted": [[r.shard, r.session_id, r.seq, r.type] for r in records]}
        )

    async def faults(request: web.Request) -> web.Response:
        body = await _json_object(request)
        if body is None or not isinstance(body.get("fault"), str):
            return json_response({"ok": False, "error": 'expected {"fault": name}'}, status=400)
        try:
            result = await apply_fault(sim, body["fault"], body)
        except (KeyError, TypeError, ValueError) as exc:
            return json_response({"ok": False, "error": str(exc)}, status=400)
        return json_response({"ok": True, "fault": body["fault"], "result": result})

    router.add_get("/_sim/state", state)
    router.add_post("/_sim/faults", faults)
    router.add_post("/_sim/reset", action(sim.reset_faults))
    router.add_post("/_sim/events", events)
    router.add_post("/_sim/events/pause", action(sim.pause_events))
    router.add_post("/_sim/events/resume", action(sim.resume_events))
    router.add_get("/_sim/messages", messages)
