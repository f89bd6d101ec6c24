"""Access tokens: fetch, proactive refresh before expiry, single flight, retry with backoff.

QQ's token endpoint (``POST {token_url}`` with ``{"appId", "clientSecret"}``) answers
``{"access_token": "...", "expires_in": "7200"}``. Facts this module is built on (PROTOCOL.md):

* ``expires_in`` is a string in practice; numbers are accepted too.
* Within the last 60 s of a token's life a fetch returns a *new* token while the old one stays
  valid, so ``expires_in`` can be as small as 60: the refresh margin scales with the lifetime.
* Errors can come with HTTP 200 and a body ``{"code", "message"}``; code 100016 (invalid app id
  or secret) cannot be fixed by retrying and raises :class:`InvalidCredentialsError`.

One :class:`TokenManager` serves every shard and the OpenAPI client of a process. Concurrent
callers share one in-flight fetch (single flight). A background task refreshes ahead of expiry
and, on failure, retries with capped, jittered exponential backoff (:mod:`.backoff`) while the
current token is still valid; every failure is logged and emitted as
:class:`~.events.TokenRefreshFailed`, so a refresh problem is never silent. Neither the secret
nor a token ever appears in a log line, an event or an exception message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp

from . import events as ev
from .backoff import Backoff, Rng, Sleep
from .errors import AuthError, InvalidCredentialsError, TokenFetchError, error_fields
from .waiting import sleep_or_wake

__all__ = ["TokenManager", "TokenSource", "parse_expires_in", "refresh_margin"]

_log = logging.getLogger("qqbot_gateway.auth")

#: Token endpoint codes that mean "these credentials are wrong": retrying cannot help.
INVALID_CREDENTIAL_CODES = frozenset({100016})

#: Below this many seconds of remaining life, ``get()`` fetches before answering.
_EXPIRY_SKEW = 5.0


class TokenSource(Protocol):
    """What the supervisor and the OpenAPI client need of a token manager."""

    async def get(self) -> str: ...

    async def force_refresh(self, reason: str, rejected: str | None = None) -> str: ...


def parse_expires_in(value: object) -> float:
    """``expires_in`` as seconds: QQ sends a string ("7200"); numbers are fine too."""
    if isinstance(value, bool):
        raise ValueError("expires_in is a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value.strip())
        except ValueError:
            raise ValueError(f"expires_in {value[:20]!r} is not a number") from None
    else:
        raise ValueError(f"expires_in has type {type(value).__name__}")
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"expires_in {seconds!r} is not a positive number")
    return seconds


def refresh_margin(lifetime: float) -> float:
    """How long before expiry to refresh a token that lived ``lifetime`` seconds.

    A third of the lifetime, at most 5 minutes, but at least half of it up to 30 s: 300 s for
    QQ's 7200 s tokens, 30 s for a 60 s token handed out in the old token's last minute.
    """
    return max(min(300.0, lifetime / 3.0), min(30.0, lifetime / 2.0))


class TokenManager:
    """Owns the process's access token. ``start()``, ``get()``, ``force_refresh()``, ``close()``."""

    def __init__(
        self,
        app_id: str,
        client_secret: str,
        *,
        token_url: str,
        http: aiohttp.ClientSession,
        bus: ev.EventBus | None = None,
        timeout: float = 10.0,
        retry_base: float = 1.0,
        retry_cap: float = 60.0,
        startup_attempts: int = 3,
        clock: Callable[[], float] | None = None,
        rng: Rng = random.uniform,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not app_id:
            raise ValueError("app_id is empty")
        if not client_secret:
            raise ValueError("client_secret is empty")
        if not token_url.startswith(("http://", "https://")):
            raise ValueError("token_url must be an http(s) URL")
        if timeout <= 0 or retry_base <= 0 or retry_cap < retry_base or startup_attempts < 1:
            raise ValueError("need timeout > 0, 0 < retry_base <= retry_cap, startup_attempts >= 1")
        self._app_id = app_id
        self._secret = client_secret
        self._url = token_url
        self._http = http
        self._bus = bus
        self._timeout = timeout
        self._retry_cap = retry_cap
        #: Refresh retries: equal jitter (the upper half of the ceiling), so a failed refresh
        #: is never retried almost at once.
        self._backoff = Backoff(retry_base, retry_cap, floor=0.5)
        self._sleep = sleep
        self._startup_attempts = startup_attempts
        self._clock = clock
        self._rng = rng
        self._token: str | None = None
        self._expires_at = 0.0
        self._lifetime = 0.0
        self._fetched_at: float | None = None
        self._inflight: asyncio.Future[str] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closed = False
        self.fetches = 0
        self.failures = 0

    # --- public ----------------------------------------------------------------------------
    @property
    def expires_in(self) -> float | None:
        """Seconds of life left in the current token, None before the first fetch."""
        if self._token is None:
            return None
        return self._expires_at - self._now()

    @property
    def token_url(self) -> str:
        return self._url

    async def start(self) -> None:
        """Fetch the first token (a few quick attempts), then keep it fresh in the background.

        Raises :class:`InvalidCredentialsError` for refused credentials and
        :class:`TokenFetchError` when the endpoint cannot be reached at all, so a service fails
        at startup with a clear reason instead of looping in the dark.
        """
        if self._refresher is not None:
            raise RuntimeError("TokenManager already started")
        last: AuthError | None = None
        for attempt in range(self._startup_attempts):
            try:
                # Quiet: a failure here is raised to the caller, who reports it once.
                await self._fetch_shared(forced=False, quiet=True)
                break
            except InvalidCredentialsError:
                raise
            except AuthError as exc:
                last = exc
                if attempt + 1 < self._startup_attempts:
                    await self._sleep(self._backoff.ceiling(attempt) / 2)
        else:
            assert last is not None
            raise last
        self._refresher = asyncio.create_task(self._refresh_loop(), name="qqbot token refresher")

    async def get(self) -> str:
        """A valid token; fetches first when there is none or it is about to expire."""
        if self._closed:
            raise RuntimeError("TokenManager is closed")
        token = self._token
        if token is not None and self._expires_at - self._now() > _EXPIRY_SKEW:
            return token
        return await self._fetch_shared(forced=False)

    async def force_refresh(self, reason: str, rejected: str | None = None) -> str:
        """Fetch a new token now (the gateway closed with 4004, or REST answered 401).

        ``rejected`` is the token that was refused: when the current token is already a
        different one (another shard or request refreshed first), that one is returned and no
        fetch is made, so N callers refused at once cause one fetch.
        """
        if self._closed:
            raise RuntimeError("TokenManager is closed")
        if rejected is not None and self._token is not None and self._token != rejected:
            return self._token
        if rejected is not None and self._token == rejected:
            # The server refused it: never hand it out again, even if this refresh fails
            # (get() then fetches instead of identifying with a dead token).
            self._expires_at = 0.0
        _log.info("refreshing the access token: %s", reason)
        return await self._fetch_shared(forced=True)

    async def close(self) -> None:
        self._closed = True
        task, self._refresher = self._refresher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        inflight, self._inflight = self._inflight, None
        if inflight is not None and not inflight.done():
            inflight.cancel()

    def __repr__(self) -> str:
        state = "no token" if self._token is None else f"expires in {self.expires_in:.0f}s"
        return f"<TokenManager app_id={self._app_id} {state}>"

    # --- internals -------------------------------------------------------------------------
    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time()

    async def _fetch_shared(
        self, *, forced: bool, retry_in: float | None = None, quiet: bool = False
    ) -> str:
        """Single flight: concurrent callers await the same fetch.

        ``retry_in`` is what a failure report says about the next attempt (the refresher's
        backoff); callers that just propagate the error leave it None.
        """
        inflight = self._inflight
        if inflight is None or inflight.done():
            inflight = asyncio.ensure_future(
                self._fetch(forced=forced, retry_in=retry_in, quiet=quiet)
            )
            self._inflight = inflight
        # shield: one caller being cancelled must not cancel the fetch the others wait on.
        return await asyncio.shield(inflight)

    async def _fetch(self, *, forced: bool, retry_in: float | None, quiet: bool) -> str:
        self.fetches += 1
        try:
            token, lifetime = await self._request()
        except AuthError as exc:
            self.failures += 1
            self._emit_failure(exc, retry_in=retry_in, quiet=quiet)
            raise
        now = self._now()
        self._token = token
        self._lifetime = lifetime
        self._expires_at = now + lifetime
        self._fetched_at = now
        self._wake.set()  # the refresher recomputes its schedule
        if self._bus is not None:
            self._bus.emit(
                ev.TokenRefreshed(shard=None, monotonic=now, expires_in=lifetime, forced=forced)
            )
        _log.debug("access token fetched, expires in %.0fs", lifetime)
        return token

    async def _request(self) -> tuple[str, float]:
        body = {"appId": self._app_id, "clientSecret": self._secret}
        try:
            async with asyncio.timeout(self._timeout):
                async with self._http.post(self._url, json=body) as resp:
                    status = resp.status
                    raw = await resp.read()
        except TimeoutError:
            raise TokenFetchError(f"token endpoint timed out after {self._timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise TokenFetchError(f"token endpoint unreachable: {type(exc).__name__}") from None
        try:
            data: Any = json.loads(raw)
        except ValueError:
            data = None
        # The token endpoint says "message" or "msg".
        code, message, _ = error_fields(data, message_keys=("message", "msg"), limit=200)
        if code in INVALID_CREDENTIAL_CODES:
            raise InvalidCredentialsError(
                f"token endpoint refused the app id or secret (code {code}: {message})",
                code=code,
                status=status,
            )
        if status >= 400:
            detail = f" code {code}: {message}" if code is not None else ""
            raise TokenFetchError(f"token endpoint HTTP {status}{detail}", code=code, status=status)
        if not isinstance(data, dict):
            raise TokenFetchError("token endpoint answered with a body that is not JSON object")
        token = data.get("access_token")
        if not isinstance(token, str) or not token:
            if code is not None:
                raise TokenFetchError(f"token endpoint error code {code}: {message}", code=code)
            raise TokenFetchError("token endpoint answer has no access_token")
        try:
            lifetime = parse_expires_in(data.get("expires_in"))
        except ValueError as exc:
            raise TokenFetchError(f"token endpoint answer has a bad expires_in: {exc}") from None
        return token, lifetime

    def _emit_failure(self, exc: AuthError, retry_in: float | None, quiet: bool) -> None:
        text = str(exc)
        if quiet:
            _log.debug("access token fetch failed: %s", text)
        elif retry_in is None:
            _log.warning("access token fetch failed: %s", text, extra={"code": exc.code})
        else:
            _log.warning(
                "access token refresh failed: %s; retrying in %.1fs",
                text,
                retry_in,
                extra={"code": exc.code, "retry_in": retry_in},
            )
        if self._bus is not None:
            self._bus.emit(
                ev.TokenRefreshFailed(
                    shard=None, monotonic=self._now(), error=text, code=exc.code, retry_in=retry_in
                )
            )

    def _next_retry(self, failures: int) -> float:
        """Backoff after ``failures`` failed refreshes: full jitter in the upper half, and never
        later than halfway to the current token's expiry."""
        delay = self._backoff.delay(failures, self._rng)
        left = self._expires_at - self._now()
        if left > 0:
            delay = min(delay, max(left / 2, 0.5))
        return delay

    async def _refresh_loop(self) -> None:
        failures = 0
        while not self._closed:
            self._wake.clear()
            delay = (self._expires_at - refresh_margin(self._lifetime)) - self._now()
            if delay > 0:
                await self._sleep_or_wake(delay)
                if self._wake.is_set():
                    continue  # a fetch happened meanwhile: reschedule from its expiry
            retry_in = self._next_retry(failures)
            try:
                await self._fetch_shared(forced=False, retry_in=retry_in)
            except InvalidCredentialsError as exc:
                # Credentials revoked mid-run: say so loudly, keep trying slowly in case they
                # come back (rotation); shards that cannot identify are stopped by the supervisor.
                _log.error("access token refused: %s", exc)
                await self._sleep_or_wake(self._retry_cap)
            except AuthError:
                failures += 1
                await self._sleep_or_wake(retry_in)
            else:
                failures = 0

    async def _sleep_or_wake(self, seconds: float) -> None:
        self._wake.clear()
        await sleep_or_wake(self._sleep, self._wake, seconds, name="qqbot token refresher")
