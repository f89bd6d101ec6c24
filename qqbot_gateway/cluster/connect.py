"""The Redis connection of cluster mode (``QQBOT_REDIS_URL``).

One setting turns cluster mode on. Unset, nothing in the project imports ``redis``; set, the
optional extra must be installed (``pip install 'qqbot-gateway[redis]'``), which brings the
maintained client, ``redis`` on PyPI (its asyncio API, ``redis.asyncio``; no hand-written RESP).

Supported URLs::

    redis://[[user]:password@]host[:port][/db]            plain TCP
    rediss://[[user]:password@]host[:port][/db]           TLS (query: ssl_cert_reqs, ...)
    unix:///path/to/redis.sock[?db=N]                     a local socket
    redis+sentinel://[[user]:password@]h1[:26379][,h2[:26379]...]/service[/db]
    rediss+sentinel://...                                 the same, TLS to sentinels and master

The credentials of a ``+sentinel`` URL are used for the master and its replicas; sentinels
that need their own password take it from ``?sentinel_password=``. Servers: Redis 6.2 or newer
(``XAUTOCLAIM``, ``GETEX``, ``SET ... GET``), Valkey 7.2 or newer; client: ``redis`` 5.0 or
newer (tested with the version the ``redis`` extra pins).

Keys: every key of one app lives under :func:`keyspace` (``qqbot:{<app id>}:``). The braces are
a Redis Cluster hash tag, so an app's keys share one slot and its Lua scripts may touch several
of them; and two apps on one Redis never touch each other's keys.

Errors::

    ClusterError                  (a QQBotError)
     +-- RedisUnavailable         the server did not answer, refused the credentials, or failed
                                  a command; the message never holds the password
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import re
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlsplit

from qqbot_gateway.adapter.errors import QQBotError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "SCHEMES",
    "ClusterError",
    "RedisTarget",
    "RedisUnavailable",
    "close_redis",
    "keyspace",
    "missing_redis",
    "open_redis",
    "parse_redis_url",
    "redact_url",
    "sentinel_options",
    "stop_task",
]

SCHEMES: Final = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
#: Sentinel's default port, as in its documentation.
_SENTINEL_PORT: Final = 26379
#: How long the first PING at start may take. Long enough for a TLS handshake to a remote
#: server, short enough that a wrong address is one line within seconds, not a hang.
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
#: The install hint, one line.
NEEDS_REDIS: Final = "QQBOT_REDIS_URL needs the redis extra: pip install 'qqbot-gateway[redis]'"
#: How often :func:`stop_task` repeats a cancellation that did not end the task.
_RECANCEL_EVERY: Final = 0.05
#: Clients made through a Sentinel -> the Sentinel (whose own connections close with them).
_SENTINELS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


class ClusterError(QQBotError):
    """Base class of cluster mode's errors."""


class RedisUnavailable(ClusterError):
    """Redis did not answer, refused the credentials, or failed a command."""


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed ``QQBOT_REDIS_URL``. ``url`` keeps the password; never log it (see ``shown``)."""

    url: str = field(repr=False)
    scheme: str
    #: Sentinel mode: the sentinels' (host, port) and the master's service name.
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    query: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def __repr__(self) -> str:
        return f"RedisTarget({self.shown!r})"

    @property
    def shown(self) -> str:
        """The URL with the password replaced: safe for logs, errors and endpoints."""
        return redact_url(self.url)

    @property
    def sentinel(self) -> bool:
        return self.service is not None

    @property
    def tls(self) -> bool:
        return self.scheme.startswith("rediss")


_SPLIT: Final = re.compile(r"([^/?#]*)([^?#]*)(?:\?([^#]*))?(?:#.*)?", re.S)


def _split(url: str) -> SplitResult:
    """``urlsplit``, but a ``+sentinel`` URL's netloc (several hosts, bracketed IPv6 ones among
    them) is split by hand: Python 3.11.2, Debian 12's, refuses ``s1,[::1]:26380`` as an
    "Invalid IPv6 URL" where 3.11.7 takes it."""
    head, sep, rest = url.partition("://")
    if sep and head.lower().endswith("+sentinel"):
        match = _SPLIT.fullmatch(rest)
        assert match is not None  # every part of the pattern is optional
        netloc, path, query = match.groups()
        return SplitResult(head, netloc, path, query or "", "")
    return urlsplit(url)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (user names are kept)."""
    try:
        parts = _split(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        creds, _, hosts = netloc.rpartition("@")
        user = creds.split(":", 1)[0] if ":" in creds else ""
        netloc = f"{user}:***@{hosts}" if ":" in creds else f"***@{hosts}"
    query = "&".join(
        f"{k}=***" if "password" in k.lower() else f"{k}={v}"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    out = f"{parts.scheme}://{netloc}{parts.path}"
    return f"{out}?{query}" if query else out


def parse_redis_url(raw: str) -> RedisTarget:
    """Validate a ``QQBOT_REDIS_URL``; ``ValueError`` with a short reason (no password in it)."""
    url = raw.strip()
    if not url:
        raise ValueError("empty")
    try:
        parts = _split(url)
    except ValueError:
        raise ValueError("not a URL") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(
            f"unsupported scheme {parts.scheme + '://' if parts.scheme else '(none)'} in "
            f"{redact_url(url)}; use one of {', '.join(s + '://' for s in SCHEMES)}"
        )
    query = tuple(parse_qsl(parts.query, keep_blank_values=True))
    creds, _, hosts = parts.netloc.rpartition("@")
    username = password = None
    if creds:
        user, sep, pw = creds.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if sep else None
    if scheme == "unix":
        if not parts.path:
            raise ValueError(f"{redact_url(url)}: a unix:// URL needs a socket path")
        db = _db(dict(query).get("db", "0"), url)
        return RedisTarget(url, scheme, db=db, username=username, password=password, query=query)
    if not hosts:
        raise ValueError(f"{redact_url(url)}: no host")
    if scheme.endswith("+sentinel"):
        sentinels = tuple(_host_port(h, _SENTINEL_PORT, url) for h in hosts.split(","))
        segments = [s for s in parts.path.split("/") if s]
        if not segments:
            raise ValueError(
                f"{redact_url(url)}: a sentinel URL names the master's service, "
                "e.g. redis+sentinel://sentinel-1:26379,sentinel-2:26379/mymaster/0"
            )
        if len(segments) > 2:
            raise ValueError(f"{redact_url(url)}: expected /service[/db] after the hosts")
        db = _db(segments[1], url) if len(segments) == 2 else 0
        return RedisTarget(
            url,
            scheme,
            sentinels=sentinels,
            service=unquote(segments[0]),
            db=db,
            username=username,
            password=password,
            query=query,
        )
    if "," in hosts:
        raise ValueError(
            f"{redact_url(url)}: several hosts need redis+sentinel:// (a Sentinel-managed Redis)"
        )
    _host_port(hosts, 6379, url)
    path = parts.path.strip("/")
    db = _db(path, url) if path else _db(dict(query).get("db", "0"), url)
    return RedisTarget(url, scheme, db=db, username=username, password=password, query=query)


def _db(text: str, url: str) -> int:
    try:
        db = int(text)
    except ValueError:
        raise ValueError(f"{redact_url(url)}: database {text!r} is not a number") from None
    if db < 0:
        raise ValueError(f"{redact_url(url)}: database {db} is negative")
    return db


def _host_port(text: str, default: int, url: str) -> tuple[str, int]:
    host, port_text = text, ""
    if text.startswith("["):  # [IPv6]:port
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{redact_url(url)}: unclosed [ in {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"{redact_url(url)}: empty host in {text!r}")
    if not port_text:
        return host, default
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{redact_url(url)}: port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"{redact_url(url)}: port {port} is out of range")
    return host, port


def keyspace(app_id: str) -> str:
    """The prefix of every key of this app: ``qqbot:{<app id>}:`` (a Cluster hash tag)."""
    return f"qqbot:{{{quote(app_id, safe='')}}}:"


def missing_redis() -> str | None:
    """None when the ``redis`` client is importable, else the one-line install hint."""
    return None if importlib.util.find_spec("redis") is not None else NEEDS_REDIS


def _client_options(timeout: float) -> dict[str, Any]:
    # health_check_interval: a pooled connection idle this long is PINGed before use, so a
    # connection a NAT or failover silently dropped is noticed before a lease renewal needs it.
    return {
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        "health_check_interval": 10,
        "retry_on_timeout": False,
        "client_name": "qqbot-gateway",
    }


def sentinel_options(
    target: RedisTarget, options: dict[str, Any], timeout: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """For a ``+sentinel`` target: the options of the connections to the sentinels, and those of
    the master's (``options`` plus the database, the credentials and TLS). One place for the
    async client of :func:`open_redis` and the synchronous one of the session store."""
    query = dict(target.query)
    sentinel_kwargs: dict[str, Any] = {
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
    }
    if "sentinel_password" in query:
        sentinel_kwargs["password"] = query["sentinel_password"]
    if target.tls:
        sentinel_kwargs["ssl"] = True
    master: dict[str, Any] = dict(options, db=target.db)
    if target.username:
        master["username"] = target.username
    if target.password:
        master["password"] = target.password
    if target.tls:
        master["ssl"] = True
    return sentinel_kwargs, master


async def open_redis(
    target: RedisTarget | str, *, timeout: float = DEFAULT_CONNECT_TIMEOUT
) -> Redis:
    """A connected ``redis.asyncio.Redis`` for ``target``, after one PING within ``timeout``.

    Raises :class:`RedisUnavailable` with one line naming the (redacted) URL and the cause.
    The caller closes the client with :func:`close_redis`.
    """
    if isinstance(target, str):
        target = parse_redis_url(target)
    hint = missing_redis()
    if hint is not None:
        raise ClusterError(hint)
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    options = _client_options(timeout)
    client: Redis
    if target.sentinel:
        from redis.asyncio.sentinel import Sentinel

        sentinel_kwargs, master_options = sentinel_options(target, options, timeout)
        sentinel = Sentinel(
            list(target.sentinels), sentinel_kwargs=sentinel_kwargs, **master_options
        )
        assert target.service is not None
        client = sentinel.master_for(target.service)
        # The Sentinel keeps its own connections to the sentinels: closed with the client.
        _SENTINELS[client] = sentinel
    else:
        client = aioredis.Redis.from_url(target.url, **options)
    try:
        async with asyncio.timeout(timeout):
            await client.ping()
    except TimeoutError:
        await _close_quietly(client)
        raise RedisUnavailable(f"{target.shown}: no answer within {timeout:g}s") from None
    except (RedisError, OSError) as exc:
        await _close_quietly(client)
        raise RedisUnavailable(f"{target.shown}: {error_text(exc)}") from None
    return client


def error_text(exc: BaseException) -> str:
    """An error's message on one line (its type's name when it has none)."""
    text = str(exc).strip() or type(exc).__name__
    # redis-py puts "Error N connecting to host:port. <strerror>." in its messages: keep one line.
    return " ".join(text.split())


def as_text(value: Any) -> str:
    """A Redis reply's bytes (or anything) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


async def close_redis(client: Redis) -> None:
    """Close a client from :func:`open_redis`, with its sentinels' connections if it has them."""
    sentinel = _SENTINELS.pop(client, None)
    try:
        await client.aclose()
    finally:
        for sentinel_client in sentinel.sentinels if sentinel is not None else ():
            with contextlib.suppress(Exception):
                await sentinel_client.aclose()


async def _close_quietly(client: Redis) -> None:
    try:
        await close_redis(client)
    except Exception:  # noqa: BLE001, S110 - closing a client that never connected
        pass


async def stop_task(task: asyncio.Task[Any]) -> None:
    """Cancel a background loop and wait until it has ended; the caller's own cancellation
    propagates (it is never mistaken for the task's).

    One ``cancel()`` is not enough for a task that talks to Redis: on Python 3.11 redis-py
    writes every command under ``asyncio.wait_for``, which returns normally, dropping the
    cancellation, when the write completes in the same loop iteration as the cancel
    (CPython gh-86296, fixed in 3.12). The command then runs to its end and the loop goes
    round again as if never cancelled; awaiting it waited forever. So the cancellation is
    repeated until the task is done. Only for loops without cleanup on cancellation.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=_RECANCEL_EVERY)
    if not task.cancelled():
        task.exception()  # retrieved (not logged again at collection): loops log their own
