"""Routes under ``/auth``: sign-up, sign-in, sign-out and the current session.

Each function parses the request, calls ``kavach.users`` / ``kavach.sessions`` and
writes JSON; nothing else lives here.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kavach.errors import EmailTakenError, InvalidCredentialsError, InvalidInputError
from kavach.http.context import HttpContext, authenticate
from kavach.http.cookies import clear_cookie, session_cookie
from kavach.http.csrf import check_csrf
from kavach.http.messages import HttpError, Request, Response, read_json_object
from kavach.stores.base import normalize_email

if TYPE_CHECKING:
    from kavach.sessions import IssuedSession
    from kavach.users import User


def iso_z(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z`` and milliseconds, like JavaScript's ``toISOString``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def user_json(user: User) -> dict[str, Any]:
    """The public JSON form of a user."""
    return {
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "createdAt": iso_z(user.created_at),
    }


def _string_field(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise HttpError(400, "invalid_input", f"{name} must be a non-empty string", field=name)
    return value


def _signed_in(ctx: HttpContext, request: Request, user: User, issued: IssuedSession) -> Response:
    body = {
        "user": user_json(user),
        "session": {"token": issued.token, "expiresAt": iso_z(issued.expires_at)},
    }
    cookie = session_cookie(
        ctx.cookie_name,
        issued.token,
        max_age=ctx.session_max_age,
        secure=request.scheme == "https",
    )
    return Response.json(200, body, [("Set-Cookie", cookie)])


def sign_up(ctx: HttpContext, request: Request) -> Response:
    """``POST /auth/sign-up/email`` ``{email, password, name?}``: create the user and a session."""
    check_csrf(request, ctx.trusted_origins, required=False)
    data = read_json_object(request)
    email = _string_field(data, "email")
    password = _string_field(data, "password")
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise HttpError(400, "invalid_input", "name must be a string", field="name")
    try:
        user = ctx.kavach.users.create(email, password=password, name=name)
    except InvalidInputError as exc:
        raise HttpError(400, "invalid_input", str(exc), field=exc.field) from None
    except EmailTakenError:
        raise HttpError(409, "email_taken", "a user with this email already exists") from None
    return _signed_in(ctx, request, user, ctx.kavach.sessions.create(user.id))


def sign_in(ctx: HttpContext, request: Request) -> Response:
    """``POST /auth/sign-in/email`` ``{email, password}``: check them and open a session.

    Unknown email and wrong password get the same 401. Failures are limited per client
    IP and per email (429 with ``Retry-After``).
    """
    check_csrf(request, ctx.trusted_origins, required=False)
    data = read_json_object(request)
    email = _string_field(data, "email")
    password = _string_field(data, "password")
    ip_key = "ip:" + request.client
    email_key = "email:" + _email_digest(email)
    keys = (ip_key, email_key)
    # The attempt counts before the password is checked: a parallel burst on one account
    # gets no more checks than a sequence; one from one address gets a wider allowance
    # (an office's concurrent sign-ins are no failures), but not an unlimited one.
    limiter = ctx.limiter
    hold = {email_key: limiter.max_failures, ip_key: limiter.max_failures * _IP_IN_FLIGHT}
    wait = limiter.begin(keys, hold=hold)
    if wait is not None:
        raise HttpError(
            429,
            "rate_limited",
            "too many failed sign-in attempts; try again later",
            headers=[("Retry-After", str(wait))],
        )
    failed = False
    try:
        user = ctx.kavach.users.authenticate(email, password)
    except InvalidCredentialsError:
        failed = True
        raise HttpError(401, "invalid_credentials", "invalid email or password") from None
    finally:
        limiter.end(keys, hold=hold, failed=failed)
    ctx.limiter.reset(email_key)
    return _signed_in(ctx, request, user, ctx.kavach.sessions.create(user.id))


#: Sign-ins one client address may have in flight at once, in multiples of the limiter's
#: ``max_failures`` (failures still count fully: ``max_failures`` of them block it).
_IP_IN_FLIGHT = 5


def _email_digest(email: str) -> str:
    """The limiter's key for an email: a digest of its normalized form, so a key's size
    does not depend on what the client sent (a megabyte of email is 64 characters)."""
    normalized = normalize_email(email).encode("utf-8", "surrogatepass")
    return hashlib.sha256(normalized).hexdigest()


def sign_out(ctx: HttpContext, request: Request) -> Response:
    """``POST /auth/sign-out``: revoke the session; 204 and the cookie cleared."""
    auth = authenticate(ctx, request)
    ctx.kavach.sessions.revoke(auth.token)
    cookie = clear_cookie(ctx.cookie_name, secure=request.scheme == "https")
    return Response(204, [("Set-Cookie", cookie), ("Cache-Control", "no-store")])


def get_session(ctx: HttpContext, request: Request) -> Response:
    """``GET /auth/session``: the signed-in user and the session's expiry (never the token)."""
    auth = authenticate(ctx, request)
    user = ctx.kavach.users.get(auth.user_id)
    if user is None:
        raise HttpError(401, "unauthorized", "the session's user no longer exists")
    return Response.json(
        200, {"user": user_json(user), "session": {"expiresAt": iso_z(auth.session.expires_at)}}
    )
