"""The Redis session store: :class:`~qqbot_gateway.adapter.store.SessionStore` in Redis, fenced.

One key per shard, the same JSON document the file store writes (``StoredSession.to_json``)::

    qqbot:{<app>}:shard:<id>:session

**Fenced writes.** ``save`` and ``clear`` run a Lua script that compares the writer's fencing
token with the shard's counter (``...:fence``, see :mod:`.lease`) and writes only if they are
equal, all in one atomic step on the server. A process that lost its lease (paused, cut off)
and writes late holds an older token: the write is refused (:class:`FencedOut`, a
``StoreError``), the checkpointer logs it, and the new owner's state stays as it was. Equality,
not "greater or equal": if Redis lost its data (no AOF) the counter restarts and every token
held before is refused too.

**Same batching, same watermark.** The store only persists what the adapter's
:class:`~qqbot_gateway.adapter.checkpoint.Checkpointer` hands it: one write per checkpoint
interval, the handled-sequence watermark and the recent event ids, exactly as with files.

**Who wrote it.** Each write also records its fencing token (``...:session:writer``, set in
the same atomic step): a process that takes a shard again compares it with the token of its own
last term, to tell a later owner's state from its own or an older one (:meth:`load_fenced`,
used by ``QQBotClient``; docs/cluster.md, "Taking a shard again").

**Ownership** is the lease's business, not the store's: ``acquire`` only checks that a token is
set (the process owns the lease), ``close`` does nothing (the lease is released by its owner).

The adapter calls ``load``/``save``/``clear`` from a worker thread, so this store uses the
synchronous client (``redis.Redis``) with its own small connection pool.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from qqbot_gateway.adapter.store import StoredSession, StoreError

from .connect import (
    DEFAULT_CONNECT_TIMEOUT,
    RedisTarget,
    _client_options,
    error_text,
    keyspace,
    parse_redis_url,
    sentinel_options,
)
from .lease import lease_keys

if TYPE_CHECKING:
    import redis

__all__ = [
    "FencedOut",
    "RedisSessionStore",
    "close_sync_redis",
    "open_sync_redis",
    "session_key",
    "writer_key",
]

#: Clients made through a Sentinel -> the Sentinel (whose own connections close with them).
_SENTINELS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
#: A stored document larger than this is not one of ours (the file store's bound).
_MAX_SIZE: Final = 4 << 20

# KEYS: fence, session, writer. ARGV: token, document. 1 written, 0 refused (stale token).
_SAVE: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[1])
return 1
"""
# KEYS: fence, session, writer. ARGV: token.
_CLEAR: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
return 1
"""


class FencedOut(StoreError):
    """A write under a token that is no longer the shard's last one: refused by Redis."""

    def __init__(self, message: str, *, token: int | None) -> None:
        super().__init__(message)
        self.token = token


def session_key(app_id: str, shard_id: int) -> str:
    return f"{keyspace(app_id)}shard:{shard_id}:session"


def writer_key(app_id: str, shard_id: int) -> str:
    """The fencing token of the term that wrote the shard's session (absent: unknown)."""
    return f"{session_key(app_id, shard_id)}:writer"


def open_sync_redis(
    target: RedisTarget | str, *, timeout: float = DEFAULT_CONNECT_TIMEOUT
) -> redis.Redis:
    """A synchronous client for ``target`` (no PING: :func:`.connect.open_redis` checked the
    server at start). The caller closes it."""
    import redis as sync_redis

    if isinstance(target, str):
        target = parse_redis_url(target)
    options = _client_options(timeout)
    if target.sentinel:
        from redis.sentinel import Sentinel

        sentinel_kwargs, master = sentinel_options(target, options, timeout)
        assert target.service is not None
        sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs, **master)
        client: redis.Redis = sentinel.master_for(target.service)
        _SENTINELS[client] = sentinel
        return client
    return sync_redis.Redis.from_url(target.url, **options)


def close_sync_redis(client: redis.Redis) -> None:
    """Close a client from :func:`open_sync_redis`, with its sentinels' connections."""
    sentinel = _SENTINELS.pop(client, None)
    try:
        client.close()
    finally:
        for sentinel_client in sentinel.sentinels if sentinel is not None else ():
            with contextlib.suppress(Exception):
                sentinel_client.close()


class RedisSessionStore:
    """One shard's session in Redis, written only under the current fencing token.

    ``token()`` returns the fencing token of this process's lease on the shard, None while it
    owns nothing (then every write is refused without asking Redis).
    """

    def __init__(
        self,
        client: redis.Redis,
        app_id: str,
        shard_id: int,
        *,
        token: Callable[[], int | None],
        shown: str = "redis",
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self.app_id = app_id
        self.shard_id = shard_id
        self._token = token
        self.key = session_key(app_id, shard_id)
        self._writer = writer_key(app_id, shard_id)
        self._fence = lease_keys(app_id, shard_id).fence
        self._shown = shown
        self._save = client.register_script(_SAVE)
        self._clear = client.register_script(_CLEAR)
        #: Writes refused because the token was stale (also reported to ``on_refused``).
        self.refused = 0
        self._on_refused = on_refused

    @property
    def location(self) -> str:
        return f"{self._shown} key {self.key}"

    def acquire(self) -> None:
        if self._token() is None:
            raise StoreError(f"{self.location}: this process does not hold the shard's lease")

    def close(self) -> None:
        """Nothing to release: ownership is the lease's (see the module docstring)."""

    def load(self) -> StoredSession | None:
        return self.load_fenced()[0]

    def load_fenced(self) -> tuple[StoredSession | None, int | None]:
        """The stored state and the fencing token of the term that wrote it (None: no state,
        or written before the token was recorded). Read together, in one command."""
        reply = self._run(lambda: self._client.mget([self.key, self._writer]), "read")
        raw, writer = reply
        if raw is None:
            return None, None
        return self._parse(raw), _token_of(writer)

    def _parse(self, raw: Any) -> StoredSession:
        if not isinstance(raw, bytes | str):
            raise StoreError(f"{self.location}: unexpected reply type {type(raw).__name__}")
        data = raw.encode() if isinstance(raw, str) else raw
        if len(data) > _MAX_SIZE:
            raise StoreError(f"{self.location}: larger than {_MAX_SIZE} bytes, not a state")
        try:
            return StoredSession.from_json(data)
        except ValueError as exc:
            raise StoreError(f"{self.location}: {exc}") from None

    def save(self, state: StoredSession) -> None:
        token = self._checked_token("write")
        document = state.to_json()
        ok = self._run(
            lambda: self._save(keys=[self._fence, self.key, self._writer], args=[token, document]),
            "write",
        )
        if int(ok) != 1:
            self._refused(token, "write")

    def clear(self) -> None:
        token = self._checked_token("delete")
        ok = self._run(
            lambda: self._clear(keys=[self._fence, self.key, self._writer], args=[token]), "delete"
        )
        if int(ok) != 1:
            self._refused(token, "delete")

    def _count_refusal(self) -> None:
        self.refused += 1
        if self._on_refused is not None:
            try:
                self._on_refused()
            except Exception:  # noqa: BLE001, S110 - an observer only watches
                pass

    def _checked_token(self, what: str) -> int:
        token = self._token()
        if token is None:
            self._count_refusal()
            raise FencedOut(
                f"cannot {what} {self.location}: this process no longer owns shard {self.shard_id}",
                token=None,
            )
        return token

    def _refused(self, token: int, what: str) -> None:
        self._count_refusal()
        raise FencedOut(
            f"{what} of {self.location} refused: fencing token {token} is stale (another "
            f"process owns shard {self.shard_id} now)",
            token=token,
        )

    def _run(self, command: Callable[[], Any], what: str) -> Any:
        from redis.exceptions import RedisError

        try:
            return command()
        except (RedisError, OSError) as exc:
            raise StoreError(f"cannot {what} {self.location}: {error_text(exc)}") from None


def _token_of(raw: Any) -> int | None:
    if not isinstance(raw, bytes | str):
        return None
    try:
        return int(raw)
    except ValueError:
        return None
