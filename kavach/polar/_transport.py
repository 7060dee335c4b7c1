"""HTTP transport to the Polar API: session, auth header, timeouts and retries.

This layer knows HTTP, not Polar's objects. It sends one logical request, retries it
when that is safe, and returns the final :class:`requests.Response` whatever its status;
:mod:`kavach.polar._protocol` turns that into a value or an exception.

The retry rule (Polar accepts no idempotency keys, so a repeated POST can create a
second checkout):

* ``GET`` and ``HEAD`` are retried on a connection error, a timeout (connect or read),
  a body cut off mid-transfer, a ``429`` and any ``5xx``.
* ``POST`` is retried only when the request provably did nothing: the connection could
  not be opened (refused, DNS failure, connect timeout), or Polar answered ``429`` (its
  rate limiter rejects a request before any route runs). Otherwise, once a connection is
  open, nothing is retried: not a read timeout, not a reset, not a 5xx.
* ``PATCH`` and ``DELETE`` (and anything else) are never retried.
* A failure after the request may have been sent (a read timeout, a reset, a body cut
  off) is reported as such (:class:`PolarTimeoutError` for a timeout): for a method that
  is not retried, the message says the request may have reached Polar.
* At most ``max_retries`` retries (``max_retries + 1`` attempts). The wait before retry
  ``n`` (0-based) is ``min(backoff_cap, backoff_base * 2**n)``, jittered into its upper
  half. A ``retry-after`` header (seconds) replaces that wait; when it asks for more than
  ``max_retry_after`` seconds, kavach does not block that long: it stops retrying and the
  caller gets the error with ``retry_after`` set.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import requests
from urllib3.exceptions import MaxRetryError, NewConnectionError, ReadTimeoutError

from kavach._version import __version__
from kavach.errors import ConfigurationError, PolarConnectionError, PolarTimeoutError

logger = logging.getLogger("kavach.polar")

RETRYABLE_METHODS = frozenset({"GET", "HEAD"})

#: The ``requests`` errors that mean the network or the server failed us. Any other
#: ``RequestException`` (``InvalidHeader``, ``InvalidURL``, ``InvalidJSONError``...) is
#: raised while the request is built and may quote what was sent, headers included.
NETWORK_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


def validate_access_token(value: object) -> str:
    """``value`` if it can be sent as a bearer token; else :class:`ConfigurationError`.

    A Polar token is visible ASCII (``polar_oat_...``): no space, control character
    (a pasted newline) or non-ASCII character (a typographic quote), which ``requests``
    would refuse later with an error quoting the header, token included. The error
    raised here never holds the token.
    """
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError("access_token must not be empty", field="access_token")
    if not all("!" <= char <= "~" for char in value):
        raise ConfigurationError(
            "access_token must be visible ASCII characters only (no spaces, line breaks, "
            "quotes or other non-ASCII characters: check how it was pasted)",
            field="access_token",
        )
    return value


@attrs.frozen
class Timeout:
    """Seconds to wait for Polar: to open the connection, then between bytes of the answer."""

    connect: float = 5.0
    read: float = 15.0

    @classmethod
    def coerce(cls, value: Timeout | float | tuple[float, float]) -> Timeout:
        """A :class:`Timeout` from one number (both phases) or a ``(connect, read)`` pair."""
        if isinstance(value, Timeout):
            timeout = value
        elif isinstance(value, tuple):
            timeout = cls(float(value[0]), float(value[1]))
        else:
            timeout = cls(float(value), float(value))
        if not (timeout.connect > 0 and timeout.read > 0):
            raise ConfigurationError("timeout must be positive seconds", field="timeout")
        return timeout

    def as_requests(self) -> tuple[float, float]:
        """The ``(connect, read)`` tuple ``requests`` takes."""
        return (self.connect, self.read)


@attrs.frozen
class RetryPolicy:
    """How many times, and how long apart, idempotent calls are retried."""

    max_retries: int = 3
    backoff_base: float = 0.5
    backoff_cap: float = 8.0
    max_retry_after: float = 30.0

    def __attrs_post_init__(self) -> None:
        if self.max_retries < 0:
            raise ConfigurationError("max_retries must be >= 0", field="max_retries")

    def backoff(self, retry_number: int, rand: float) -> float:
        """Seconds before retry ``retry_number`` (0-based); ``rand`` in [0, 1] jitters it."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2.0**retry_number)
        return ceiling * (0.5 + 0.5 * rand)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Polar's ``retry-after`` header as seconds, or ``None`` when absent or not a number."""
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw.strip())
    except ValueError:
        return None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN, inf
        return None
    return max(seconds, 0.0)


def never_sent(exc: requests.RequestException) -> bool:
    """Whether the request failed before a connection to the server was open.

    True for a connect timeout and for a refused connection or DNS failure (urllib3's
    ``NewConnectionError``); false for anything that may have delivered bytes.
    """
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if not isinstance(exc, requests.exceptions.ConnectionError) or isinstance(
        exc, requests.exceptions.SSLError | requests.exceptions.ProxyError
    ):
        return False
    reason: object = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return isinstance(reason, NewConnectionError)


def may_retry_error(method: str, exc: requests.RequestException) -> bool:
    """The retry rule for a request that raised instead of answering."""
    if method in RETRYABLE_METHODS:
        return isinstance(
            exc,
            requests.exceptions.ConnectionError
            | requests.exceptions.Timeout
            | requests.exceptions.ChunkedEncodingError,
        )
    if method == "POST":
        return never_sent(exc)
    return False


#: The Polar API version kavach speaks; sent as ``Polar-Version`` on every request.
POLAR_API_VERSION = "2026-04"


def may_retry_status(method: str, status_code: int) -> bool:
    """The retry rule for a request that answered: 429 and 5xx for idempotent methods;
    429 also for POST, which Polar's rate limiter refuses before anything is created."""
    if status_code == 429:
        return method in RETRYABLE_METHODS or method == "POST"
    return method in RETRYABLE_METHODS and status_code >= 500


def _root_cause(exc: BaseException) -> str:
    """A short, secret-free description of what went wrong underneath ``requests``."""
    reason: object = exc.args[0] if exc.args else exc
    if isinstance(reason, MaxRetryError) and reason.reason is not None:
        reason = reason.reason
    if isinstance(reason, NewConnectionError):
        # "<HTTPSConnection object at 0x..>: Failed to establish a new connection: [Errno..]"
        return str(reason).split(": ", 1)[-1]
    if not isinstance(reason, BaseException):  # a plain message: name the error itself
        return type(exc).__name__
    return type(reason).__name__


class Transport:
    """Sends requests to one Polar API host with a bearer token.

    ``session`` is used as given (kavach never changes its settings; headers go on each
    request), or created here and closed by :meth:`close`. ``sleep`` and ``rand`` are
    injectable so tests neither wait nor guess.
    """

    __slots__ = (
        "_access_token",
        "_owns_session",
        "_session",
        "base_url",
        "rand",
        "retry",
        "sleep",
        "timeout",
    )

    def __init__(
        self,
        base_url: str,
        access_token: str,
        *,
        session: requests.Session | None = None,
        timeout: Timeout | float | tuple[float, float] | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], object] = time.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigurationError("base_url must be an http(s) URL", field="base_url")
        validate_access_token(access_token)
        self.base_url = base_url.rstrip("/")
        self._access_token = access_token
        self.timeout = Timeout() if timeout is None else Timeout.coerce(timeout)
        self.retry = retry if retry is not None else RetryPolicy()
        self.sleep = sleep
        self.rand = rand
        self._owns_session = session is None
        self._session = session if session is not None else requests.Session()

    def __repr__(self) -> str:
        return f"Transport(base_url={self.base_url!r}, token_set={bool(self._access_token)})"

    def close(self) -> None:
        """Close the session if this transport created it; an injected one is left open."""
        if self._owns_session:
            self._session.close()

    def headers(self, *, has_body: bool) -> dict[str, str]:
        """The headers every Polar request carries."""
        headers = {
            "Authorization": f"Bearer {self._access_token}",
            "Accept": "application/json",
            "User-Agent": f"kavach/{__version__}",
            # Pin the API version kavach is built and tested against (polar-api.md §1).
            "Polar-Version": POLAR_API_VERSION,
        }
        if has_body:
            headers["Content-Type"] = "application/json"
        return headers

    def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> requests.Response:
        """Send ``method path`` (retrying as the module docs say); return the last response.

        Raises :class:`PolarTimeoutError` or :class:`PolarConnectionError` when no answer
        came back (or the request could not be built: then without the ``requests`` error
        chained, as its text may quote the headers); an answer of any status is returned,
        not raised.
        """
        method = method.upper()
        url = self.base_url + path
        query = _query_params(params)
        headers = self.headers(has_body=json is not None)
        attempts = self.retry.max_retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            unsendable: str | None = None
            try:
                response = self._session.request(
                    method,
                    url,
                    params=query,
                    json=json,
                    headers=headers,
                    timeout=self.timeout.as_requests(),
                    allow_redirects=False,
                )
            except NETWORK_ERRORS as exc:
                if last or not may_retry_error(method, exc):
                    raise _connection_error(exc, method, path) from exc
                delay = self.retry.backoff(attempt, self.rand())
                logger.warning(
                    "Polar %s %s: %s; retry %d/%d in %.2f s",
                    method,
                    path,
                    _root_cause(exc),
                    attempt + 1,
                    self.retry.max_retries,
                    delay,
                )
                self.sleep(delay)
                continue
            except requests.RequestException as exc:
                # Raised while building the request; its text may quote a header (the
                # token): keep only its type, and raise outside this block so that
                # neither __cause__ nor __context__ holds it.
                unsendable = type(exc).__name__
            if unsendable is not None:
                raise PolarConnectionError(
                    f"Polar {method} {path} failed: the request could not be sent ({unsendable})",
                    method=method,
                    path=path,
                )
            if last or not may_retry_status(method, response.status_code):
                return response
            delay_or_none = self._delay_for(response, attempt)
            if delay_or_none is None:
                return response
            response.close()
            logger.warning(
                "Polar %s %s answered %d; retry %d/%d in %.2f s",
                method,
                path,
                response.status_code,
                attempt + 1,
                self.retry.max_retries,
                delay_or_none,
            )
            self.sleep(delay_or_none)
        raise AssertionError("unreachable: the last attempt always returns or raises")

    def _delay_for(self, response: requests.Response, attempt: int) -> float | None:
        """Seconds to wait before retrying ``response``, or ``None`` to give up now."""
        asked = retry_after_seconds(response.headers)
        if asked is None:
            return self.retry.backoff(attempt, self.rand())
        if asked > self.retry.max_retry_after:
            return None
        return asked


def _query_params(params: Mapping[str, Any] | None) -> list[tuple[str, str]] | None:
    """Query pairs as Polar reads them: lists repeat the key, booleans are lower-case."""
    if params is None:
        return None
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            if item is None:
                continue
            text = ("true" if item else "false") if isinstance(item, bool) else str(item)
            pairs.append((key, text))
    return pairs


def _is_read_timeout(exc: requests.RequestException) -> bool:
    """A timeout waiting for the answer: ``ReadTimeout``, or the ``ConnectionError``
    ``requests`` raises when the body stalls after the headers came."""
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return True
    reason: object = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return isinstance(reason, ReadTimeoutError)


def _connection_error(
    exc: requests.RequestException, method: str, path: str
) -> PolarConnectionError:
    """The error for a request that got no (complete) answer.

    A request that provably never left is "could not reach Polar". Any other failure
    may have happened after Polar received the request: the message says so, and for a
    method kavach does not retry (a POST may have created a checkout) that it was not
    retried.
    """
    where = f"Polar {method} {path} failed"
    if never_sent(exc):
        if isinstance(exc, requests.exceptions.Timeout):
            return PolarTimeoutError(
                f"{where}: could not reach Polar in time ({type(exc).__name__})",
                method=method,
                path=path,
            )
        return PolarConnectionError(
            f"{where}: could not reach Polar ({_root_cause(exc)})", method=method, path=path
        )
    after = (
        "; the request may have reached Polar, so it was not retried"
        if method not in RETRYABLE_METHODS
        else ""
    )
    if isinstance(exc, requests.exceptions.Timeout) or _is_read_timeout(exc):
        return PolarTimeoutError(
            f"{where}: no answer in time ({_root_cause(exc)}){after}", method=method, path=path
        )
    return PolarConnectionError(
        f"{where}: the connection to Polar failed ({_root_cause(exc)}){after}",
        method=method,
        path=path,
    )
