"""A small synchronous client for the Polar API endpoints kavach uses.

Built on two private layers: :mod:`kavach.polar._transport` (session, auth, timeouts,
retries of idempotent calls) and :mod:`kavach.polar._protocol` (JSON, error shapes,
status → exception). No Polar SDK is used at run time.

Every method raises a :class:`~kavach.errors.PolarAPIError` subclass when Polar answers
non-2xx, :class:`~kavach.errors.PolarConnectionError` (or its ``PolarTimeoutError``)
when no answer came (its message says when the request may have reached Polar),
:class:`~kavach.errors.InvalidInputError` for an id that cannot be a path segment, and
:class:`~kavach.errors.PolarResponseError` when a 2xx body cannot be read. No message or
``repr`` ever holds the access token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import requests

from kavach.errors import InvalidInputError, PolarResponseError
from kavach.polar import _protocol
from kavach.polar._transport import RetryPolicy, Timeout, Transport
from kavach.polar.hosts import PRODUCTION_API_URL, SANDBOX_API_URL
from kavach.polar.models import Checkout, CustomerSession, make_converter

__all__ = ["PRODUCTION_API_URL", "SANDBOX_API_URL", "PolarClient", "Timeout"]

DEFAULT_PAGE_SIZE = 100


def _segment(value: str, field: str) -> str:
    """``value`` as one percent-encoded URL path segment.

    ``/`` and every other reserved character are encoded, so ``value`` cannot add a
    segment. The dot segments ``.`` and ``..`` are refused (:class:`InvalidInputError`):
    no encoding keeps them in place, since URL normalization (urllib3's, the server's)
    removes them, which would turn ``GET /v1/checkouts/.`` into the list route.
    """
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{field} must be a non-empty string", field=field)
    if value in (".", ".."):
        raise InvalidInputError(f"{field} must not be {value!r} (a dot segment)", field=field)
    return quote(value, safe="")


class PolarClient:
    """Calls the Polar API with an organization access token (``polar_oat_...``).

    ``session`` may be an injected :class:`requests.Session` (left open by
    :meth:`close`); ``timeout`` is seconds for both phases or ``(connect, read)``
    (default 5 s / 15 s); ``max_retries`` bounds retries of GETs (see
    :mod:`kavach.polar._transport` for the exact rule); ``sleep`` is how retries wait.
    """

    __slots__ = ("_converter", "_transport")

    def __init__(
        self,
        access_token: str,
        *,
        base_url: str = PRODUCTION_API_URL,
        session: requests.Session | None = None,
        timeout: Timeout | float | tuple[float, float] | None = None,
        max_retries: int = 3,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self._transport = Transport(
            base_url,
            access_token,
            session=session,
            timeout=timeout,
            retry=RetryPolicy(max_retries=max_retries),
            sleep=sleep,
        )
        self._converter = make_converter()

    def __repr__(self) -> str:
        return f"PolarClient(base_url={self.base_url!r}, token_set=True)"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        """The API host this client talks to, without a trailing slash."""
        return self._transport.base_url

    @property
    def timeout(self) -> Timeout:
        """The connect/read timeout every request carries."""
        return self._transport.timeout

    def close(self) -> None:
        """Close the HTTP session if this client created it."""
        self._transport.close()

    # -- generic ---------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        """Call any Polar endpoint; return its decoded JSON (``None`` for an empty answer).

        ``path`` starts with ``/v1/`` (mind Polar's trailing slashes on collection routes).
        List values in ``params`` repeat the key; booleans are sent as ``true``/``false``.
        """
        method = method.upper()
        response = self._transport.send(method, path, json=json, params=params)
        return _protocol.read_json(response, method=method, path=path)

    def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        data = self.request(method, path, **kwargs)
        if not isinstance(data, dict):
            raise PolarResponseError(f"Polar {method} {path}: expected a JSON object")
        return data

    # -- checkouts -------------------------------------------------------------------
    def create_checkout(self, body: Mapping[str, Any]) -> Checkout:
        """``POST /v1/checkouts/`` (never retried once sent: Polar has no idempotency keys)."""
        path = "/v1/checkouts/"
        data = self.request("POST", path, json=dict(body))
        return _protocol.structure(self._converter, data, Checkout, method="POST", path=path)

    def get_checkout(self, checkout_id: str) -> Checkout:
        """``GET /v1/checkouts/{id}``."""
        path = f"/v1/checkouts/{_segment(checkout_id, 'checkout_id')}"
        data = self.request("GET", path)
        return _protocol.structure(self._converter, data, Checkout, method="GET", path=path)

    # -- subscriptions ---------------------------------------------------------------
    def list_subscriptions(
        self, *, metadata: Mapping[str, str] | None = None, **filters: Any
    ) -> Iterator[dict[str, Any]]:
        """Every subscription matching ``filters``, page after page, as raw JSON objects.

        ``filters`` are Polar's query parameters (``external_customer_id``,
        ``customer_id``, ``organization_id``, ``status``, ``limit``...; a list repeats
        the key). ``metadata={"key": "value"}`` is Polar's ``metadata[key]=value``
        filter. Pages are fetched lazily, ``limit`` (default 100) per page, until
        ``page >= pagination.max_page``.
        """
        path = "/v1/subscriptions/"
        params: dict[str, Any] = {"limit": DEFAULT_PAGE_SIZE, **filters}
        for key, value in (metadata or {}).items():
            params[f"metadata[{key}]"] = value
        page = int(params.pop("page", 1))
        while True:
            data = self.request("GET", path, params={**params, "page": page})
            items, max_page = _protocol.read_page(data, method="GET", path=path)
            for item in items:
                if not isinstance(item, dict):
                    raise PolarResponseError(f"Polar GET {path}: a page item is not an object")
                yield item
            if page >= max_page:
                return
            page += 1

    def get_subscription(self, subscription_id: str) -> dict[str, Any]:
        """``GET /v1/subscriptions/{id}``: the raw Subscription object."""
        path = f"/v1/subscriptions/{_segment(subscription_id, 'subscription_id')}"
        return self._object("GET", path)

    def update_subscription(self, subscription_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``PATCH /v1/subscriptions/{id}`` with one kind of change; never retried."""
        path = f"/v1/subscriptions/{_segment(subscription_id, 'subscription_id')}"
        return self._object("PATCH", path, json=dict(body))

    def revoke_subscription(self, subscription_id: str) -> dict[str, Any]:
        """``DELETE /v1/subscriptions/{id}``: end it now; returns it (status ``canceled``)."""
        path = f"/v1/subscriptions/{_segment(subscription_id, 'subscription_id')}"
        return self._object("DELETE", path)

    # -- customers -------------------------------------------------------------------
    def get_customer_by_external_id(self, external_id: str) -> dict[str, Any]:
        """``GET /v1/customers/external/{external_id}``: the raw Customer object."""
        path = f"/v1/customers/external/{_segment(external_id, 'external_id')}"
        return self._object("GET", path)

    def create_customer_session(
        self,
        *,
        external_customer_id: str | None = None,
        customer_id: str | None = None,
        return_url: str | None = None,
    ) -> CustomerSession:
        """``POST /v1/customer-sessions/`` for exactly one of the two customer ids.

        Send the customer to the result's ``customer_portal_url``.
        """
        if (external_customer_id is None) == (customer_id is None):
            raise InvalidInputError(
                "pass exactly one of external_customer_id and customer_id",
                field="customer_id",
            )
        body: dict[str, Any] = (
            {"external_customer_id": external_customer_id}
            if external_customer_id is not None
            else {"customer_id": customer_id}
        )
        if return_url is not None:
            body["return_url"] = return_url
        path = "/v1/customer-sessions/"
        data = self.request("POST", path, json=body)
        return _protocol.structure(self._converter, data, CustomerSession, method="POST", path=path)
