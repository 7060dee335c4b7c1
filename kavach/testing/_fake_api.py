"""The fake Polar's ``/v1`` routes (private).

Paths, status codes and bodies follow Polar's server: collections carry a trailing slash
(a path that only differs by its trailing slash answers 307 to the other form, query kept,
as Starlette's ``redirect_slashes`` does), an unknown path is ``404 {"detail": "Not
Found"}``, a known path with another method ``405``. Handlers do not deliver the events
they cause: they return them on the :class:`Response`, for the caller to send once the
response is written (an API request) or before returning (a ``FakePolar`` helper).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any
from urllib.parse import unquote

from attrs import field, frozen

from kavach.testing._fake_objects import (
    JSON,
    CustomerRecord,
    customer_json,
    dumps,
    product_json,
)
from kavach.testing._fake_state import (
    ApiError,
    Event,
    FakeState,
    not_found,
    validation_error,
    value_error,
)
from kavach.testing._fake_validate import BodyReader, QueryReader, entry, parse_uuid

CANCELLATION_REASONS = (
    "customer_service", "low_quality", "missing_features", "switched_service",
    "too_complex", "too_expensive", "unused", "other",
)
SUBSCRIPTION_STATUSES = (
    "incomplete", "incomplete_expired", "trialing", "active", "past_due", "canceled",
    "unpaid", "paused",
)
CHECKOUT_STATUSES = ("open", "expired", "confirmed", "succeeded", "failed")
TRIAL_INTERVALS = ("day", "week", "month", "year")
#: Polar's ``TrialConfigurationInputMixin`` (server/polar/kit/trial.py): ``ge=1, le=1000``.
MAX_TRIAL_INTERVAL_COUNT = 1000
MAX_SEATS = 10000
SEAT_FIELDS = ("seats", "min_seats", "max_seats")
UNIT_FIELDS = ("units", "min_units", "max_units")
_CANCEL_KEYS = ("cancel_at_period_end", "customer_cancellation_reason",
                "customer_cancellation_comment")
_REVOKE_KEYS = ("revoke", "customer_cancellation_reason", "customer_cancellation_comment")
_UNSUPPORTED_UPDATE_KEYS = frozenset({
    "product_id", "proration_behavior", "discount_id", "trial_end", "seats", "units",
    "current_billing_period_end", "pause_at_period_end", "resumes_at", "resume",
    "pending_update", "metadata",
})


@frozen
class Request:
    """A parsed HTTP request; header names are lower-case; ``query_string`` is the raw query."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    query_string: str = ""


@frozen
class Response:
    """An HTTP response to write, and the webhook ``events`` the request caused."""

    status: int
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(factory=dict)
    events: tuple[Event, ...] = ()


def json_response(
    status: int,
    obj: Any,
    headers: dict[str, str] | None = None,
    events: Sequence[Event] = (),
) -> Response:
    """A compact JSON response (with the webhook ``events`` the request caused)."""
    return Response(status, dumps(obj), headers=headers or {}, events=tuple(events))


def error_response(error: ApiError) -> Response:
    """The response for an :class:`ApiError` (an empty body when ``body`` is ``None``)."""
    if error.body is None:
        return Response(error.status, b"", None, dict(error.headers))
    return json_response(error.status, error.body, dict(error.headers))


def paginate(items: list[JSON], page: int, limit: int) -> JSON:
    """Polar's list page: ``{"items": [...], "pagination": {total_count, max_page}}``."""
    start = (page - 1) * limit
    return {
        "items": items[start:start + limit],
        "pagination": {"total_count": len(items), "max_page": math.ceil(len(items) / limit)},
    }


def _sort(items: list[JSON], criteria: list[tuple[str, bool]]) -> list[JSON]:
    """Sort by each ``(field, descending)`` criterion; ``None`` values go last either way."""
    for name, descending in reversed(criteria):
        items.sort(key=partial(_sort_key, name, descending), reverse=descending)
    return items


def _sort_key(name: str, descending: bool, item: JSON) -> tuple[bool, Any]:
    value = item.get(name)
    # ``reverse=True`` flips the flag too, so a missing value is last in both directions;
    # two ``None``s compare equal on the flag, so ``None`` is never ordered against a value.
    return (value is None) != descending, value


Handler = Callable[[Request, dict[str, str]], Response]


class Api:
    """Routes ``/v1`` requests to the state; responses carry the events to deliver."""

    def __init__(self, state: FakeState, *, check_email_domains: bool = True) -> None:
        self.state = state
        self.check_email_domains = check_email_domains
        routes: list[tuple[str, str, Handler]] = [
            ("POST", "/v1/checkouts/", self.create_checkout),
            ("POST", "/v1/checkouts/custom/", self.create_checkout),
            ("GET", "/v1/checkouts/", self.list_checkouts),
            ("GET", "/v1/checkouts/{id}", self.get_checkout),
            ("GET", "/v1/subscriptions/", self.list_subscriptions),
            ("GET", "/v1/subscriptions/{id}", self.get_subscription),
            ("PATCH", "/v1/subscriptions/{id}", self.update_subscription),
            ("DELETE", "/v1/subscriptions/{id}", self.revoke_subscription),
            ("GET", "/v1/customers/", self.list_customers),
            ("POST", "/v1/customers/", self.create_customer),
            ("GET", "/v1/customers/external/{external_id}", self.get_customer),
            ("PATCH", "/v1/customers/external/{external_id}", self.update_customer),
            ("GET", "/v1/customers/external/{external_id}/state", self.get_customer_state),
            ("GET", "/v1/customers/{id}", self.get_customer),
            ("PATCH", "/v1/customers/{id}", self.update_customer),
            ("GET", "/v1/customers/{id}/state", self.get_customer_state),
            ("POST", "/v1/customer-sessions/", self.create_customer_session),
            ("GET", "/v1/products/", self.list_products),
            ("GET", "/v1/products/{id}", self.get_product),
        ]
        self._routes = [
            (method, re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "$"), fn)
            for method, path, fn in routes
        ]

    # --- routing -------------------------------------------------------------------

    def has_route(self, method: str, path: str) -> bool:
        """Whether ``method path`` reaches a handler (else 404/405/307 need no auth)."""
        return any(m == method and p.match(path) for m, p, _ in self._routes)

    def handle(self, request: Request) -> Response:
        """Answer one ``/v1`` request (auth and version were checked by the server)."""
        allowed: list[str] = []
        for method, pattern, handler in self._routes:
            match = pattern.match(request.path)
            if match is None:
                continue
            if method != request.method:
                allowed.append(method)
                continue
            params = {k: unquote(v) for k, v in match.groupdict().items()}
            try:
                return handler(request, params)
            except ApiError as error:
                return error_response(error)
        if allowed:
            return json_response(405, {"detail": "Method Not Allowed"},
                                 {"allow": ", ".join(sorted(set(allowed)))})
        return self._slash_redirect(request) or json_response(404, {"detail": "Not Found"})

    def _slash_redirect(self, request: Request) -> Response | None:
        """Starlette's ``redirect_slashes``: a 307 to the path with its trailing slash added
        (or removed) when that form is a route; the query string is kept."""
        path = request.path
        other = path.rstrip("/") if path.endswith("/") else path + "/"
        if not other or not any(p.match(other) for _, p, _ in self._routes):
            return None
        location = f"{other}?{request.query_string}" if request.query_string else other
        return Response(307, b"", None, {"location": location})

    def _json_object(self, request: Request) -> JSON:
        try:
            body = json.loads(request.body or b"null")
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise validation_error(
                [entry("json_invalid", ["body", 0], "JSON decode error", {},
                       {"error": str(exc)})]
            ) from None
        if body is None:
            raise validation_error([entry("missing", ["body"], "Field required", None)])
        if not isinstance(body, dict):
            raise validation_error(
                [entry("model_attributes_type", ["body"],
                       "Input should be a valid dictionary or object to extract fields from",
                       body)]
            )
        return body

    def _path_uuid(self, params: dict[str, str], name: str = "id") -> str:
        errors: list[JSON] = []
        parsed = parse_uuid(params[name], ["path", name], errors)
        if parsed is None:
            raise validation_error(errors)
        return parsed

    # --- checkouts ------------------------------------------------------------------

    def create_checkout(self, request: Request, _params: dict[str, str]) -> Response:
        """``POST /v1/checkouts/``."""
        body = self._json_object(request)
        reader = BodyReader(body, check_email_domains=self.check_email_domains)
        products: list[str] = []
        raw = body.get("products")
        if "products" not in body:
            reader.errors.append(entry("missing", ["body", "products"], "Field required", body))
        elif not isinstance(raw, list):
            reader.errors.append(entry("list_type", ["body", "products"],
                                       "Input should be a valid list", raw))
        elif not raw:
            reader.errors.append(
                entry("too_short", ["body", "products"],
                      "List should have at least 1 item after validation, not 0", raw,
                      {"field_type": "List", "min_length": 1, "actual_length": 0})
            )
        else:
            for index, item in enumerate(raw):
                parsed = parse_uuid(item, ["body", "products", index], reader.errors)
                if parsed is not None:
                    products.append(parsed)
            if len(set(products)) != len(products):
                reader.errors.append(entry("value_error", ["body", "products"],
                                           "Value error, products must be unique", raw))
        fields: JSON = {
            "products": products,
            "success_url": reader.url("success_url"),
            "return_url": reader.url("return_url"),
            "embed_origin": reader.string("embed_origin"),
            "external_customer_id": reader.string("external_customer_id", "customer_external_id"),
            "customer_id": reader.uuid("customer_id"),
            "customer_email": reader.email("customer_email"),
            "customer_name": reader.string("customer_name"),
            "customer_billing_name": reader.string("customer_billing_name"),
            "customer_tax_id": reader.string("customer_tax_id"),
            "customer_ip_address": reader.string("customer_ip_address"),
            "customer_billing_address": _billing_address(body, reader),
            "is_business_customer": reader.boolean("is_business_customer", False),
            "metadata": reader.metadata("metadata"),
            "customer_metadata": reader.metadata("customer_metadata"),
            "custom_field_data": reader.mapping("custom_field_data"),
            "allow_discount_codes": reader.boolean("allow_discount_codes", True),
            "require_billing_address": reader.boolean("require_billing_address", False),
            "allow_trial": reader.boolean("allow_trial", True),
            "trial_interval": reader.choice("trial_interval", TRIAL_INTERVALS),
            "trial_interval_count": reader.integer("trial_interval_count", minimum=1,
                                                   maximum=MAX_TRIAL_INTERVAL_COUNT),
            "currency": reader.string("currency"),
            "locale": reader.string("locale"),
            "quantities": _quantities(reader),
        }
        discount_id = reader.uuid("discount_id")
        if reader.errors:
            raise validation_error(reader.errors)
        if discount_id is not None:
            raise value_error(["body", "discount_id"], "Discount does not exist.", discount_id)
        data, events = self.state.create_checkout(fields)
        return json_response(201, data, events=events)

    def get_checkout(self, _request: Request, params: dict[str, str]) -> Response:
        """``GET /v1/checkouts/{id}``."""
        checkout_id = self._path_uuid(params)
        with self.state.lock:
            return json_response(200, self.state.render_checkout(
                self.state.checkout(checkout_id)))

    def list_checkouts(self, request: Request, _params: dict[str, str]) -> Response:
        """``GET /v1/checkouts/`` with Polar's filters."""
        q = QueryReader(request.query)
        page, limit = q.page_and_limit()
        orgs, product_ids = q.uuids("organization_id"), q.uuids("product_id")
        customer_ids, externals = q.uuids("customer_id"), q.strings("external_customer_id")
        statuses = q.choices("status", CHECKOUT_STATUSES)
        text = q.last("query")
        criteria = q.sorting(("created_at", "expires_at", "status"), "-created_at")
        if q.errors:
            raise validation_error(q.errors)
        with self.state.lock:
            items = []
            for record in self.state.checkouts.values():
                item = self.state.render_checkout(self.state.checkout(record.id))
                if (
                    (orgs is None or item["organization_id"] in orgs)
                    and (product_ids is None or item["product_id"] in product_ids)
                    and (customer_ids is None or item["customer_id"] in customer_ids)
                    and (externals is None or item["external_customer_id"] in externals)
                    and (statuses is None or item["status"] in statuses)
                    and (text is None or text.lower() in (item["customer_email"] or "").lower())
                ):
                    items.append(item)
        return json_response(200, paginate(_sort(items, criteria), page, limit))

    # --- subscriptions --------------------------------------------------------------

    def get_subscription(self, _request: Request, params: dict[str, str]) -> Response:
        """``GET /v1/subscriptions/{id}``."""
        sub_id = self._path_uuid(params)
        with self.state.lock:
            return json_response(200, self.state.render_subscription(
                self.state.subscription(sub_id)))

    def list_subscriptions(self, request: Request, _params: dict[str, str]) -> Response:
        """``GET /v1/subscriptions/`` with Polar's filters (repeatable) and sorting."""
        q = QueryReader(request.query)
        page, limit = q.page_and_limit()
        orgs, product_ids = q.uuids("organization_id"), q.uuids("product_id")
        customer_ids, externals = q.uuids("customer_id"), q.strings("external_customer_id")
        statuses = q.choices("status", SUBSCRIPTION_STATUSES)
        active, cancel_at_end = q.boolean("active"), q.boolean("cancel_at_period_end")
        metadata = q.metadata()
        criteria = q.sorting(
            ("started_at", "current_period_end", "amount", "status", "created_at"),
            "-started_at",
        )
        if q.errors:
            raise validation_error(q.errors)
        if active is not None:
            wanted = {"active", "trialing"} if active else {"canceled", "unpaid"}
            statuses = [s for s in (statuses or SUBSCRIPTION_STATUSES) if s in wanted]
        with self.state.lock:
            items = [
                self.state.render_subscription(s)
                for s in self.state.subscriptions.values()
                if (orgs is None or self.state.products[s.product_id].organization_id in orgs)
                and (product_ids is None or s.product_id in product_ids)
                and (customer_ids is None or s.customer_id in customer_ids)
                and (externals is None
                     or self.state.customers[s.customer_id].external_id in externals)
                and (statuses is None or s.status in statuses)
                and (cancel_at_end is None or s.cancel_at_period_end == cancel_at_end)
                and all(_metadata_text(s.metadata.get(k)) in v for k, v in metadata.items())
            ]
        return json_response(200, paginate(_sort(items, criteria), page, limit))

    def update_subscription(self, request: Request, params: dict[str, str]) -> Response:
        """``PATCH /v1/subscriptions/{id}``: cancel at period end, uncancel or revoke."""
        sub_id = self._path_uuid(params)
        body = self._json_object(request)
        reader = BodyReader(body)
        reason = reader.choice("customer_cancellation_reason", CANCELLATION_REASONS)
        comment = reader.string("customer_cancellation_comment")
        if "revoke" in body:
            reader.forbid_extra(_REVOKE_KEYS)
            if body["revoke"] is not True:
                reader.errors.append(entry("literal_error", ["body", "revoke"],
                                           "Input should be True", body["revoke"],
                                           {"expected": "True"}))
        elif "cancel_at_period_end" in body:
            reader.forbid_extra(_CANCEL_KEYS)
            if not isinstance(body["cancel_at_period_end"], bool):
                reader.errors.append(entry("bool_type", ["body", "cancel_at_period_end"],
                                           "Input should be a valid boolean",
                                           body["cancel_at_period_end"]))
        elif _UNSUPPORTED_UPDATE_KEYS & body.keys():
            raise value_error(["body"], "FakePolar does not implement this kind of subscription "
                              "update (only cancel_at_period_end and revoke).", body)
        else:
            reader.forbid_extra(())
            reader.errors.append(entry("missing", ["body", "cancel_at_period_end"],
                                       "Field required", body))
        if reader.errors:
            raise validation_error(reader.errors)
        if "revoke" in body:
            data, events = self.state.revoke(sub_id, reason=reason, comment=comment)
        elif body["cancel_at_period_end"]:
            data, events = self.state.cancel(sub_id, reason=reason, comment=comment)
        else:
            data, events = self.state.uncancel(sub_id)
        return json_response(200, data, events=events)

    def revoke_subscription(self, _request: Request, params: dict[str, str]) -> Response:
        """``DELETE /v1/subscriptions/{id}``: revoke now, answer the canceled Subscription."""
        data, events = self.state.revoke(self._path_uuid(params))
        return json_response(200, data, events=events)

    # --- customers --------------------------------------------------------------------

    def _customer(self, params: dict[str, str]) -> CustomerRecord:
        if "external_id" in params:
            found = self.state.customer_by_external_id(params["external_id"])
            if found is None:
                raise not_found()
            return found
        return self.state.customer(self._path_uuid(params))

    def get_customer(self, _request: Request, params: dict[str, str]) -> Response:
        """``GET /v1/customers/{id}`` and ``/v1/customers/external/{external_id}``."""
        with self.state.lock:
            return json_response(200, customer_json(self._customer(params)))

    def get_customer_state(self, _request: Request, params: dict[str, str]) -> Response:
        """``GET /v1/customers/.../state``: the customer with its active subscriptions."""
        with self.state.lock:
            return json_response(200, self.state.render_customer_state(self._customer(params)))

    def list_customers(self, request: Request, _params: dict[str, str]) -> Response:
        """``GET /v1/customers/`` filtered by ``email`` / ``query``."""
        q = QueryReader(request.query)
        page, limit = q.page_and_limit()
        email = q.last("email")
        text = q.last("query")
        criteria = q.sorting(("created_at", "email", "name"), "-created_at")
        if q.errors:
            raise validation_error(q.errors)
        with self.state.lock:
            items = [
                customer_json(c) for c in self.state.customers.values()
                if (email is None or c.email.lower() == email.lower())
                and (text is None or text.lower() in f"{c.email} {c.name or ''} {c.external_id}"
                     .lower())
            ]
        return json_response(200, paginate(_sort(items, criteria), page, limit))

    def create_customer(self, request: Request, _params: dict[str, str]) -> Response:
        """``POST /v1/customers/``."""
        body = self._json_object(request)
        reader = BodyReader(body, check_email_domains=self.check_email_domains)
        if "email" not in body:
            reader.errors.append(entry("missing", ["body", "email"], "Field required", body))
        email = reader.email("email")
        name = reader.string("name")
        external_id = reader.string("external_id")
        metadata = reader.metadata("metadata")
        if reader.errors or email is None:
            raise validation_error(reader.errors)
        data, events = self.state.create_customer(
            email=email, name=name, external_id=external_id, metadata=metadata
        )
        return json_response(201, data, events=events)

    def update_customer(self, request: Request, params: dict[str, str]) -> Response:
        """``PATCH /v1/customers/{id}``: ``external_id`` (set once), ``name``, ``metadata``."""
        body = self._json_object(request)
        reader = BodyReader(body)
        changes: JSON = {
            "external_id": reader.string("external_id"),
            "name": reader.string("name"),
            "metadata": reader.metadata("metadata") if "metadata" in body else None,
        }
        if reader.errors:
            raise validation_error(reader.errors)
        with self.state.lock:
            data, events = self.state.update_customer(self._customer(params), changes)
        return json_response(200, data, events=events)

    def create_customer_session(self, request: Request, _params: dict[str, str]) -> Response:
        """``POST /v1/customer-sessions/`` by ``customer_id`` or ``external_customer_id``."""
        body = self._json_object(request)
        reader = BodyReader(body)
        customer_id = reader.uuid("customer_id")
        external = reader.string("external_customer_id", "customer_external_id")
        return_url = reader.url("return_url")
        if customer_id is None and external is None and not reader.errors:
            reader.errors.append(entry("missing", ["body", "customer_id"], "Field required", body))
        if reader.errors:
            raise validation_error(reader.errors)
        with self.state.lock:
            loc: str
            value: str | None
            if customer_id is not None:
                customer = self.state.customers.get(customer_id)
                loc, value = "customer_id", customer_id
            else:
                customer = self.state.customer_by_external_id(external or "")
                loc, value = "external_customer_id", external
            if customer is None:
                raise value_error(["body", loc], "Customer does not exist.", value)
            return json_response(201, self.state.create_session(customer, return_url))

    # --- products ----------------------------------------------------------------------

    def get_product(self, _request: Request, params: dict[str, str]) -> Response:
        """``GET /v1/products/{id}``."""
        product_id = self._path_uuid(params)
        with self.state.lock:
            return json_response(200, product_json(self.state.product(product_id)))

    def list_products(self, request: Request, _params: dict[str, str]) -> Response:
        """``GET /v1/products/`` (filters ``is_recurring``, ``is_archived``)."""
        q = QueryReader(request.query)
        page, limit = q.page_and_limit()
        recurring, archived = q.boolean("is_recurring"), q.boolean("is_archived")
        if q.errors:
            raise validation_error(q.errors)
        with self.state.lock:
            items = [
                product_json(p) for p in self.state.products.values()
                if (recurring is None or (p.recurring_interval is not None) == recurring)
                and (archived is None or p.is_archived == archived)
            ]
        return json_response(200, paginate(items, page, limit))


def _quantities(reader: BodyReader) -> dict[str, int]:
    """The seat and unit fields the body sets (schema-checked: seats 1..10000, units >= 1)."""
    given: dict[str, int | None] = {
        **{name: reader.integer(name, minimum=1, maximum=MAX_SEATS) for name in SEAT_FIELDS},
        **{name: reader.integer(name, minimum=1) for name in UNIT_FIELDS},
    }
    return {name: value for name, value in given.items() if value is not None}


def _billing_address(body: JSON, reader: BodyReader) -> JSON | None:
    """An ``Address`` (``country`` required), with every key present."""
    value = body.get("customer_billing_address")
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("country"), str):
        reader.errors.append(entry("missing", ["body", "customer_billing_address", "country"],
                                   "Field required", value))
        return None
    keys = ("line1", "line2", "postal_code", "city", "state")
    return {**{k: value.get(k) for k in keys}, "country": value["country"].upper()}


def _metadata_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    return None if value is None else str(value)
