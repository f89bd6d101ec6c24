"""The adapter's exceptions: one tree, typed by what a caller can do about them.

::

    QQBotError
    ├── AuthError                    access token could not be obtained
    │   ├── InvalidCredentialsError  app id / secret refused: retrying cannot help
    │   └── TokenFetchError          transient: network, 5xx, malformed body, "too many requests"
    ├── APIConnectionError           the OpenAPI request never got an answer (network, timeout)
    ├── ConnectError                 the gateway WebSocket could not be opened (DNS, refused,
    │                                TLS, upgrade refused, timeout); ``status`` if HTTP answered
    ├── StoreError                   the session state could not be read or written (names
    │   │                            the file)
    │   └── StoreLockedError         another process owns this shard's state
    └── APIError                     QQ answered with an error; carries ``status``, ``code``,
        │                            ``trace_id`` (quote it to QQ support)
        ├── UnauthorizedError        401 / token codes
        ├── ForbiddenError           403
        ├── NotFoundError            404
        ├── RateLimitedError         429 / rate-limit codes, after the retries ran out
        ├── ReplyRejectedError       a passive reply QQ refused (window passed, limit reached,
        │                            duplicate msg_seq, proactive messages not allowed)
        ├── ServerError              5xx
        └── MalformedResponseError   a 2xx whose body is not what the endpoint promises

Each boundary maps the lower layer's exceptions once (``raise ... from exc``): the OpenAPI client
(:mod:`.api`) aiohttp's, the WebSocket driver (:mod:`.connection`) aiohttp's and the socket's,
the store (:mod:`.store`) the file system's.

No exception message ever contains an access token, the client secret or an
``Authorization`` header: they carry QQ's code, message and trace id only.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIConnectionError",
    "APIError",
    "AuthError",
    "ConnectError",
    "ForbiddenError",
    "InvalidCredentialsError",
    "MalformedResponseError",
    "NotFoundError",
    "QQBotError",
    "RateLimitedError",
    "ReplyRejectedError",
    "ServerError",
    "StoreError",
    "StoreLockedError",
    "TokenFetchError",
    "UnauthorizedError",
    "error_fields",
]


class QQBotError(Exception):
    """Base class of every error the adapter raises on purpose."""


class AuthError(QQBotError):
    """The access token could not be obtained."""

    def __init__(self, message: str, *, code: int | None = None, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.status = status


class InvalidCredentialsError(AuthError):
    """The token endpoint refused the app id or the client secret (e.g. code 100016).

    Retrying cannot help; the supervisor stops the shard with a clear error.
    """


class TokenFetchError(AuthError):
    """A transient failure to fetch a token; retried with backoff."""


class APIConnectionError(QQBotError):
    """An OpenAPI request got no HTTP answer: connection refused, reset, DNS, timeout."""

    def __init__(self, method: str, path: str, cause: str) -> None:
        super().__init__(f"{method} {path}: {cause}")
        self.method = method
        self.path = path


class ConnectError(QQBotError):
    """The gateway WebSocket could not be opened. ``detail`` never contains a token."""

    def __init__(self, detail: str, *, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


class StoreError(QQBotError):
    """The session state could not be read or written. The message names the file."""


class StoreLockedError(StoreError):
    """Another process holds this shard's state. ``holder_pid`` is None if it is unknown."""

    def __init__(self, message: str, *, holder_pid: int | None, path: str) -> None:
        super().__init__(message)
        self.holder_pid = holder_pid
        self.path = path


class APIError(QQBotError):
    """QQ answered an OpenAPI request with an error."""

    def __init__(
        self,
        *,
        method: str,
        path: str,
        status: int,
        code: int | None,
        message: str,
        trace_id: str | None,
    ) -> None:
        detail = f"{method} {path} -> HTTP {status}"
        if code is not None:
            detail += f" code {code}"
        if message:
            detail += f": {message}"
        if trace_id:
            detail += f" (trace_id {trace_id})"
        super().__init__(detail)
        self.method = method
        self.path = path
        self.status = status
        self.code = code
        self.message = message
        self.trace_id = trace_id


class UnauthorizedError(APIError):
    """401, or a token code (11244 expired) that survived one forced token refresh."""


class ForbiddenError(APIError):
    """403: the bot lacks the permission or the scope."""


class NotFoundError(APIError):
    """404: unknown target (openid, channel, guild) or endpoint."""


class RateLimitedError(APIError):
    """Rate limited, and still so after the configured retries."""

    def __init__(
        self,
        *,
        method: str,
        path: str,
        status: int,
        code: int | None,
        message: str,
        trace_id: str | None,
        retry_after: float | None,
    ) -> None:
        super().__init__(
            method=method, path=path, status=status, code=code, message=message, trace_id=trace_id
        )
        self.retry_after = retry_after


class ReplyRejectedError(APIError):
    """QQ refused a message for a rule of passive replies (window, count, msg_seq, proactive)."""


class ServerError(APIError):
    """5xx from QQ."""


class MalformedResponseError(APIError):
    """A success status whose body is not what the endpoint promises."""


def error_fields(
    data: Any, *, message_keys: tuple[str, ...] = ("message",), limit: int = 300
) -> tuple[int | None, str, str | None]:
    """``(code, message, trace_id)`` from a platform error body (the OpenAPI's and the token
    endpoint's): ``code`` (or ``err_code``) as an int, the first of ``message_keys`` present cut
    to ``limit`` characters, ``trace_id``; ``(None, "", None)`` for a body that is no object."""
    if not isinstance(data, dict):
        return None, "", None
    raw_code = data.get("code", data.get("err_code"))
    code: int | None = None
    if raw_code is not None and not isinstance(raw_code, bool):
        try:
            code = int(raw_code)
        except (TypeError, ValueError):
            code = None
    message = next((data[k] for k in message_keys if data.get(k) is not None), None)
    trace = data.get("trace_id")
    return (
        code,
        str(message)[:limit] if message is not None else "",
        trace if isinstance(trace, str) and trace else None,
    )
