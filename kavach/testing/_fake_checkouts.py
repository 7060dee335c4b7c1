"""Checkout creation and completion, customers and customer sessions (private)."""

from __future__ import annotations

from kavach.testing._fake_core import (
    CHECKOUT_TTL,
    SESSION_TTL,
    ApiError,
    Event,
    StateCore,
    validation_error,
    value_error,
)
from kavach.testing._fake_objects import (
    JSON,
    CheckoutRecord,
    CustomerRecord,
    ProductRecord,
    SessionRecord,
    SubscriptionRecord,
    add_interval,
    checkout_status,
    checkout_trial_end,
    customer_json,
)


class CheckoutOps(StateCore):
    """Checkout, customer and session operations of :class:`FakeState`."""

    def create_checkout(self, fields: JSON) -> tuple[JSON, list[Event]]:
        """``POST /v1/checkouts/`` after schema validation (``fields`` uses canonical names)."""
        with self.lock:
            errors: list[JSON] = []
            for index, product_id in enumerate(fields["products"]):
                found = self.products.get(product_id)
                if found is None or found.is_archived:
                    msg = "Product does not exist." if found is None else "Product is archived."
                    errors.append(
                        {"type": "value_error", "loc": ["body", "products", index],
                         "msg": msg, "input": product_id}
                    )
            if errors:
                raise validation_error(errors, service=True)
            product = self.products[fields["products"][0]]
            _refuse_quantities(fields.get("quantities") or {})
            currency = fields.get("currency")
            if currency is not None and currency.lower() != product.currency:
                raise value_error(
                    ["body", "currency"],
                    "Product is not available in the specified currency.",
                    currency,
                )
            customer: CustomerRecord | None = None
            if fields.get("customer_id") is not None:
                customer = self.customers.get(fields["customer_id"])
                if customer is None:
                    raise value_error(
                        ["body", "customer_id"], "Customer does not exist.", fields["customer_id"]
                    )
            elif fields.get("external_customer_id") is not None:
                customer = self.customer_by_external_id(fields["external_customer_id"])
            created = self.tick()
            checkout = CheckoutRecord(
                id=self.new_id(),
                created_at=created,
                client_secret=self.new_token("polar_c_"),
                expires_at=created + CHECKOUT_TTL,
                product_ids=list(fields["products"]),
                product_id=product.id,
                amount=product.amount,
                currency=product.currency,
                organization_id=self.organization_id,
                success_url=None,
                return_url=fields.get("return_url"),
                external_customer_id=fields.get("external_customer_id"),
                customer_id=customer.id if customer else None,
                customer_email=fields.get("customer_email")
                or (customer.email if customer else None),
                customer_name=fields.get("customer_name") or (customer.name if customer else None),
                metadata=dict(fields.get("metadata") or {}),
                customer_metadata=dict(fields.get("customer_metadata") or {}),
                allow_trial=bool(fields.get("allow_trial", True)),
                trial_interval=fields.get("trial_interval"),
                trial_interval_count=fields.get("trial_interval_count"),
                options={k: v for k, v in fields.items() if k in _CHECKOUT_OPTIONS},
            )
            success_url = fields.get("success_url")
            if success_url is not None:
                checkout.success_url = success_url.replace("{CHECKOUT_ID}", checkout.id)
            data = self._render_new_checkout(checkout)
            self.checkouts[checkout.id] = checkout
            return data, [self._event("checkout.created", data)]

    def _render_new_checkout(self, checkout: CheckoutRecord) -> JSON:
        """Its JSON, or a 422 when it cannot be rendered (a trial ending after year 9999):
        such a record is never stored."""
        try:
            return self.render_checkout(checkout)
        except (OverflowError, ValueError):
            raise value_error(
                ["body", "trial_interval_count"], "The trial would end after the year 9999.",
                checkout.trial_interval_count,
            ) from None

    def complete_checkout(
        self, checkout_id: str, *, email: str | None = None, name: str | None = None
    ) -> tuple[JSON, list[Event]]:
        """The customer pays: customer found or created, subscription (or order) created.

        Returns the new subscription's JSON (the order's, for a one-time product) and the
        events in Polar's order: ``customer.created`` (new customer), ``checkout.updated``
        (confirmed), ``subscription.created``/``.active``/``.updated``, ``order.created``,
        ``order.paid``, ``checkout.updated`` (succeeded), ``customer.state_changed``.
        """
        with self.lock:
            checkout = self.checkout(checkout_id)
            status = checkout_status(checkout, self.now())
            if status != "open":
                raise ApiError(
                    403,
                    {"error": "NotOpenCheckout",
                     "detail": f"Checkout {checkout.id} is not open: {status}"},
                )
            events: list[Event] = []
            customer = self._checkout_customer(checkout, email, name, events)
            checkout.customer_id = customer.id
            checkout.customer_email = customer.email if checkout.customer_email is None else (
                checkout.customer_email
            )
            checkout.status = "confirmed"
            checkout.modified_at = self.tick()
            events.append(self._event("checkout.updated", self.render_checkout(checkout)))

            product = self.products[checkout.product_id]
            sub: SubscriptionRecord | None = None
            if product.recurring_interval is not None:
                sub = self._subscribe(checkout, product, customer)
                data = self.render_subscription(sub)
                events.append(self._event("subscription.created", data))
                events.append(self._event("subscription.active", data))
                events.append(self._event("subscription.updated", data))
            amount = 0 if sub is not None and sub.status == "trialing" else checkout.amount
            reason = "subscription_create" if sub is not None else "purchase"
            order = self._order(customer, product, sub, checkout.id, amount, reason)
            events.extend(self._order_events(order))

            checkout.status = "succeeded"
            checkout.tax_amount = 0
            checkout.modified_at = self.tick()
            events.append(self._event("checkout.updated", self.render_checkout(checkout)))
            events.append(
                self._event("customer.state_changed", self.render_customer_state(customer))
            )
            result = self.render_subscription(sub) if sub is not None else self.render_order(order)
            return result, events

    def _checkout_customer(
        self, checkout: CheckoutRecord, email: str | None, name: str | None, events: list[Event]
    ) -> CustomerRecord:
        """Polar's ``_create_or_update_customer``: an email match is reused as is."""
        customer = self.customers.get(checkout.customer_id or "")
        address = checkout.customer_email or email
        if customer is None and address:
            customer = self.customer_by_email(address)
        if customer is None:
            external = checkout.external_customer_id
            if external is not None and self.customer_by_external_id(external) is not None:
                raise value_error(
                    ["body", "customer_email"],
                    "A customer with this external ID already exists "
                    "but with a different email address.",
                    address,
                )
            customer = CustomerRecord(
                id=self.new_id(),
                created_at=self.tick(),
                email=address or f"customer-{len(self.customers) + 1}@fakepolar.dev",
                organization_id=self.organization_id,
                name=checkout.customer_name or name,
                external_id=external,
                metadata=dict(checkout.customer_metadata),
            )
            self.customers[customer.id] = customer
            events.append(self._event("customer.created", customer_json(customer)))
        elif checkout.customer_metadata:
            merged = {**customer.metadata, **checkout.customer_metadata}
            if merged != customer.metadata:
                customer.metadata = merged
                customer.modified_at = self.tick()
                events.append(self._event("customer.updated", customer_json(customer)))
        return customer

    def _subscribe(
        self, checkout: CheckoutRecord, product: ProductRecord, customer: CustomerRecord
    ) -> SubscriptionRecord:
        assert product.recurring_interval is not None
        start = self.tick()
        trial_end = checkout_trial_end(checkout, product, start)
        end = trial_end or add_interval(
            start, product.recurring_interval, product.recurring_interval_count
        )
        sub = SubscriptionRecord(
            id=self.new_id(),
            created_at=start,
            customer_id=customer.id,
            product_id=product.id,
            checkout_id=checkout.id,
            status="trialing" if trial_end else "active",
            amount=product.amount,
            currency=product.currency,
            recurring_interval=product.recurring_interval,
            recurring_interval_count=product.recurring_interval_count,
            current_period_start=start,
            current_period_end=end,
            started_at=start,
            anchor=start,
            metadata=dict(checkout.metadata),
            custom_field_data=dict(checkout.options.get("custom_field_data") or {}),
            trial_start=start if trial_end else None,
            trial_end=trial_end,
        )
        sub.modified_at = self.tick()
        self.subscriptions[sub.id] = sub
        return sub

    def create_customer(
        self, *, email: str, name: str | None, external_id: str | None, metadata: JSON
    ) -> tuple[JSON, list[Event]]:
        """``POST /v1/customers/``: unique email and external id per organization."""
        with self.lock:
            if self.customer_by_email(email) is not None:
                raise value_error(
                    ["body", "email"], "A customer with this email address already exists.", email
                )
            if external_id is not None and self.customer_by_external_id(external_id):
                raise value_error(
                    ["body", "external_id"],
                    "A customer with this external ID already exists.",
                    external_id,
                )
            customer = CustomerRecord(
                id=self.new_id(), created_at=self.tick(), email=email,
                organization_id=self.organization_id, name=name,
                external_id=external_id, metadata=dict(metadata),
            )
            self.customers[customer.id] = customer
            data = customer_json(customer)
            return data, [self._event("customer.created", data)]

    def update_customer(self, customer: CustomerRecord, changes: JSON) -> tuple[JSON, list[Event]]:
        """``PATCH /v1/customers/{id}``: ``external_id`` can be set once, never changed."""
        with self.lock:
            external = changes.get("external_id")
            if (
                external is not None
                and customer.external_id is not None
                and external != customer.external_id
            ):
                raise value_error(
                    ["body", "external_id"], "Customer external ID cannot be updated.", external
                )
            if external is not None and external != customer.external_id:
                other = self.customer_by_external_id(external)
                if other is not None:
                    raise value_error(
                        ["body", "external_id"],
                        "A customer with this external ID already exists.",
                        external,
                    )
                customer.external_id = external
            if changes.get("name") is not None:
                customer.name = changes["name"]
            if changes.get("metadata") is not None:
                customer.metadata = dict(changes["metadata"])
            customer.modified_at = self.tick()
            data = customer_json(customer)
            events = [
                self._event("customer.updated", data),
                self._event("customer.state_changed", self.render_customer_state(customer)),
            ]
            return data, events

    def create_session(self, customer: CustomerRecord, return_url: str | None) -> JSON:
        """``POST /v1/customer-sessions/``: a one-hour portal token."""
        with self.lock:
            created = self.tick()
            session = SessionRecord(
                id=self.new_id(), created_at=created, token=self.new_token("polar_cst_"),
                expires_at=created + SESSION_TTL, customer_id=customer.id, return_url=return_url,
            )
            self.sessions[session.id] = session
            return self.render_session(session)

    def session_customer(self, token: str) -> tuple[SessionRecord, CustomerRecord] | None:
        """The live session with this token and its customer, if any."""
        with self.lock:
            for session in self.sessions.values():
                if session.token == token and self.now() < session.expires_at:
                    return session, self.customers[session.customer_id]
            return None


def _refuse_quantities(quantities: JSON) -> None:
    """Every fake product has one fixed price: seat and unit fields get Polar's 422."""
    errors = [
        {"type": "value_error", "loc": ["body", name],
         "msg": ("Seats can only be set for seat-based pricing." if "seats" in name
                 else "Units can only be set for unit-based pricing."),
         "input": value}
        for name, value in quantities.items()
    ]
    if errors:
        raise validation_error(errors, service=True)


_CHECKOUT_OPTIONS = frozenset(
    {
        "embed_origin",
        "custom_field_data",
        "allow_discount_codes",
        "require_billing_address",
        "is_business_customer",
        "customer_ip_address",
        "customer_billing_name",
        "customer_billing_address",
        "customer_tax_id",
        "locale",
    }
)

