"""Polar's wire protocol: JSON bodies, error shapes, status → exception, values.

Polar answers errors in three shapes, plus one without a body (``polar-api.md`` §7):

* ``{"error": "ResourceNotFound", "detail": "Not found"}`` — Polar's own errors;
* ``{"error": "RequestValidationError", "detail": [{"loc": [...], "msg": ...}, ...]}`` — 422;
* ``{"error": "invalid_token", "error_description": "..."}`` — OAuth2 token errors, no ``detail``;
* ``429`` with an empty body and a ``retry-after`` header.

:func:`error_class_for_status` is the one place a status picks an exception class.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeVar

import cattrs
import requests

from kavach.errors import (
    PolarAPIError,
    PolarAuthenticationError,
    PolarConflictError,
    PolarNotFoundError,
    PolarPermissionError,
    PolarRateLimitError,
    PolarResponseError,
    PolarServerError,
    PolarValidationError,
)
from kavach.polar._transport import retry_after_seconds

T = TypeVar("T")

_ERROR_CLASSES: Mapping[int, type[PolarAPIError]] = MappingProxyType(
    {
        401: PolarAuthenticationError,
        403: PolarPermissionError,
        404: PolarNotFoundError,
        409: PolarConflictError,
        422: PolarValidationError,
        429: PolarRateLimitError,
    }
)
_MAX_TEXT = 300


def error_class_for_status(status_code: int) -> type[PolarAPIError]:
    """The exception class for a non-2xx status (any 5xx is a :class:`PolarServerError`)."""
    if status_code >= 500:
        return PolarServerError
    return _ERROR_CLASSES.get(status_code, PolarAPIError)


def _short(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_TEXT else flat[: _MAX_TEXT - 1] + "…"


def _error_fields(response: requests.Response) -> tuple[str | None, Any]:
    """``(error, detail)`` from any of Polar's error bodies; never assumes JSON."""
    if not response.content:
        return None, None
    try:
        body = response.json()
    except ValueError:
        return None, _short(response.text)
    if not isinstance(body, dict):
        return None, body
    error = body.get("error")
    detail = body["detail"] if "detail" in body else body.get("error_description")
    return (error if isinstance(error, str) else None), detail


def _describe_detail(detail: Any) -> str:
    """Readable text for ``detail``: a validation list becomes ``loc: msg; loc: msg``."""
    if isinstance(detail, list):
        problems = []
        for item in detail:
            if isinstance(item, dict):
                loc = item.get("loc")
                where = ".".join(str(p) for p in loc) if isinstance(loc, list) else ""
                msg = str(item.get("msg", ""))
                problems.append(f"{where}: {msg}" if where else msg)
            else:
                problems.append(str(item))
        return _short("; ".join(problems))
    if detail is None:
        return ""
    return _short(detail if isinstance(detail, str) else json.dumps(detail, default=str))


def api_error(response: requests.Response, *, method: str, path: str) -> PolarAPIError:
    """The exception for a non-2xx answer, with Polar's error code, detail and retry-after.

    The message reads like ``Polar POST /v1/checkouts/ failed: 422 RequestValidationError:
    body.products.0: Product does not exist.``; it holds nothing kavach sent.
    """
    status = response.status_code
    error, detail = _error_fields(response)
    retry_after = retry_after_seconds(response.headers)
    parts = [f"{status} {error or response.reason or 'error'}"]
    described = _describe_detail(detail)
    if described:
        parts.append(described)
    if retry_after is not None:
        parts.append(f"retry after {retry_after:g} s")
    cls = error_class_for_status(status)
    return cls(
        f"Polar {method} {path} failed: " + ": ".join(parts),
        status_code=status,
        error=error,
        detail=detail,
        retry_after=retry_after,
        method=method,
        path=path,
    )


def read_json(response: requests.Response, *, method: str, path: str) -> Any:
    """The decoded JSON of a 2xx answer (``None`` when it has no body); raises otherwise."""
    if not 200 <= response.status_code < 300:
        raise api_error(response, method=method, path=path)
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        content_type = response.headers.get("content-type", "unknown")
        raise PolarResponseError(
            f"Polar {method} {path} answered {response.status_code} with a body that is "
            f"not JSON (content-type {content_type})"
        ) from None


def structure(converter: cattrs.Converter, data: Any, cls: type[T], *, method: str, path: str) -> T:
    """``data`` as a ``cls`` value; a body that does not fit raises :class:`PolarResponseError`."""
    if not isinstance(data, dict):
        raise PolarResponseError(
            f"Polar {method} {path}: expected a JSON object for {cls.__name__}, "
            f"got {type(data).__name__}"
        )
    try:
        return converter.structure(data, cls)
    except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
        problems = (
            "; ".join(cattrs.transform_error(exc))
            if isinstance(exc, cattrs.BaseValidationError)
            else type(exc).__name__
        )
        raise PolarResponseError(
            f"Polar {method} {path}: the answer does not fit {cls.__name__} ({_short(problems)})"
        ) from exc


def read_page(data: Any, *, method: str, path: str) -> tuple[list[Any], int]:
    """``(items, max_page)`` from one page of a Polar list endpoint."""
    if not isinstance(data, dict):
        raise PolarResponseError(f"Polar {method} {path}: expected a list page object")
    items = data.get("items")
    pagination = data.get("pagination")
    max_page = pagination.get("max_page") if isinstance(pagination, dict) else None
    if not isinstance(items, list) or not isinstance(max_page, int):
        raise PolarResponseError(
            f"Polar {method} {path}: a list page needs 'items' and 'pagination.max_page'"
        )
    return items, max_page
