"""Configuration of the embedded QQ gateway simulator."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SessionStartLimit", "SimulatorConfig"]


@dataclass(slots=True)
class SessionStartLimit:
    """The ``session_start_limit`` object of ``GET /gateway/bot`` (reported, not enforced)."""

    total: int = 1000
    remaining: int = 1000
    reset_after: int = 86_400_000  # milliseconds, as QQ reports it
    max_concurrency: int = 1  # sessions per 5 s


@dataclass(slots=True)
class SimulatorConfig:
    """Everything that shapes the simulator's behaviour; faults are switched at run time."""

    app_id: str = "1024"
    client_secret: str = field(default="s3cret", repr=False)
    #: Sent in Hello; production sends 41250 (the docs say 45000). Tests use 200-1000.
    heartbeat_interval_ms: int = 41_250
    #: Lifetime of an access token in seconds.
    token_ttl: int = 7200
    #: Within this many seconds of a token's end a fetch returns a new token and the old one
    #: stays valid until its own end (QQ: 60 s).
    token_refresh_window: float = 60.0
    #: QQ sends ``"expires_in": "7200"`` (a string).
    token_expires_as_string: bool = True
    #: Background dispatches per second per session; 0 disables the generator.
    event_rate: float = 0.0
    #: Recommended shard count reported by ``/gateway/bot``.
    shards: int = 1
    #: Largest shard count an Identify may ask for (above: close 4010).
    max_shards: int = 64
    session_start_limit: SessionStartLimit = field(default_factory=SessionStartLimit)
    #: A connection that sent no heartbeat for this many intervals is closed with 4009
    #: (QQ: about 60 s for 41.25 s, i.e. ~1.45).
    heartbeat_grace_factor: float = 1.45
    #: Seconds a disconnected session can still be resumed.
    resume_window: float = 300.0
    #: Dispatches kept per session for replay on resume.
    replay_buffer: int = 10_000
    #: Seed of the random generator (event contents, session ids, generator timing).
    seed: int | None = None
    #: Intent bits the bot is not granted: Identify with any of them gets op 9 false + 4014.
    disallowed_intents: int = 0
    #: How a failed resume is answered: ``"op9"`` (op 9 ``false``, then close with
    #: ``invalid_session_close_code``), ``"4006"`` or ``"4007"`` (a close with that code).
    resume_failure: str = "op9"
    #: Close code sent after an op 9 (None: leave the connection open, the client must close).
    invalid_session_close_code: int | None = 4006
    #: A client close with 1000/1001 ends the session (Discord-like); other codes keep it.
    client_normal_close_invalidates: bool = True
    #: Seconds the server waits for the client's close frame after sending its own.
    close_timeout: float = 2.0
    #: Reject sends without ``msg_id``/``event_id`` (proactive messages ended 2025-04-21).
    allow_proactive: bool = True
    #: Bot identity reported in READY and ``/users/@me``.
    bot_id: str = "11111111111111111111"
    bot_username: str = "simulated-bot"
    #: Serve the ``/_sim/...`` control API.
    control_api: bool = True

    def __post_init__(self) -> None:
        if self.heartbeat_interval_ms <= 0:
            raise ValueError("heartbeat_interval_ms must be positive")
        if self.event_rate < 0:
            raise ValueError("event_rate must not be negative")
        if self.shards < 1 or self.max_shards < self.shards:
            raise ValueError("shards must be >= 1 and <= max_shards")
        if self.replay_buffer < 1:
            raise ValueError("replay_buffer must be >= 1")
        if self.resume_failure not in ("op9", "4006", "4007"):
            raise ValueError("resume_failure must be 'op9', '4006' or '4007'")
        if self.heartbeat_grace_factor <= 1.0:
            raise ValueError("heartbeat_grace_factor must be > 1")
