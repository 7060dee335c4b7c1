"""What route functions receive besides the request: :class:`HttpContext`, and the
session check shared by every authenticated route."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from kavach.http.cookies import read_cookie
from kavach.http.csrf import SAFE_METHODS, check_csrf
from kavach.http.messages import HttpError, Request
from kavach.http.ratelimit import FailureLimiter

if TYPE_CHECKING:
    from kavach.core import Kavach
    from kavach.sessions import Session

_UNAUTHORIZED_HEADERS = (("WWW-Authenticate", 'Bearer realm="kavach"'),)


class PolarPort(Protocol):
    """What the HTTP routes need from the Polar plugin (``kavach.plugins.get("polar")``)."""

    max_webhook_body: int

    def create_checkout(
        self, user_id: str, product_id: str, *, success_url: str | None = None
    ) -> Any:
        """A checkout with ``.id`` and ``.url``; raises ``PolarError`` subclasses."""
        ...

    def get_subscription(self, user_id: str) -> Any:
        """A ``PolarSubscription`` or ``None``."""
        ...

    def handle_webhook(self, body: bytes, headers: Mapping[str, str]) -> Any:
        """An outcome with ``.status_code`` and ``.to_json()``."""
        ...

    def status(self, user_id: str) -> Any:
        """``.subscription`` (or ``None``) and ``.access`` (with ``.to_json()``)."""
        ...

    def create_portal_session(self, user_id: str, *, return_url: str | None = None) -> Any:
        """A customer session with ``.customer_portal_url``."""
        ...

    def cancel_subscription(
        self, user_id: str, *, reason: str | None = None, comment: str | None = None
    ) -> Any:
        """The updated ``PolarSubscription``."""
        ...

    def uncancel_subscription(self, user_id: str) -> Any:
        """The updated ``PolarSubscription``."""
        ...

    def get_checkout(self, user_id: str, checkout_id: str) -> Any:
        """``.checkout`` (``.id``, ``.status``); raises ``NotFoundError`` when not the user's."""
        ...


@attrs.define
class HttpContext:
    """Per-app state the routes share: the ``Kavach``, the sign-in limiter, the Polar
    plugin (``None`` when not configured) and the config values read on every request."""

    kavach: Kavach
    limiter: FailureLimiter
    polar: PolarPort | None
    cookie_name: str
    trusted_origins: tuple[str, ...]
    session_max_age: int

    @classmethod
    def build(cls, kavach: Kavach, limiter: FailureLimiter | None = None) -> HttpContext:
        """The context for ``kavach`` (a fresh limiter on its clock unless one is given)."""
        return cls(
            kavach=kavach,
            limiter=limiter if limiter is not None else FailureLimiter(kavach.clock),
            polar=kavach.plugins.get("polar"),
            cookie_name=kavach.config.cookie_name,
            trusted_origins=kavach.config.trusted_origins,
            session_max_age=int(kavach.sessions.ttl.total_seconds()),
        )


@attrs.frozen
class Authenticated:
    """A request's live session: the ``token`` it came with and whether by cookie."""

    session: Session
    token: str = attrs.field(repr=False)
    via_cookie: bool

    @property
    def user_id(self) -> str:
        """The session's user id."""
        return self.session.user_id


def unauthorized(message: str = "a valid session is required") -> HttpError:
    """The 401 error (with ``WWW-Authenticate: Bearer``)."""
    return HttpError(401, "unauthorized", message, headers=_UNAUTHORIZED_HEADERS)


def authenticate(ctx: HttpContext, request: Request) -> Authenticated:
    """The request's session, from ``Authorization: Bearer`` or else the session cookie.

    A cookie-authenticated unsafe request must pass the CSRF origin check (403 ``csrf``);
    bearer requests are exempt. No session, or a dead one: 401 ``unauthorized``.
    """
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("Authorization must be 'Bearer <token>'")
        via_cookie = False
    else:
        cookie = read_cookie(request.headers.get("cookie"), ctx.cookie_name)
        if cookie is None:
            raise unauthorized()
        token = cookie
        via_cookie = True
        if request.method not in SAFE_METHODS:
            check_csrf(request, ctx.trusted_origins, required=True)
    session = ctx.kavach.sessions.resolve(token)
    if session is None:
        raise unauthorized("the session is unknown, expired or revoked")
    return Authenticated(session=session, token=token, via_cookie=via_cookie)
