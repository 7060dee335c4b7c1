"""The fake Polar's hosted pages: checkout, confirmation and customer portal (private).

Plain server-rendered HTML with one form per action, so a test (or a person running
``kavach serve --fake-polar``) can click through the whole flow without JavaScript. An
action's webhook events ride on its response, sent once the response is written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from html import escape
from urllib.parse import parse_qs, quote

from kavach.testing._fake_api import Request, Response
from kavach.testing._fake_objects import CheckoutRecord, ProductRecord, SubscriptionRecord
from kavach.testing._fake_state import ApiError, Event, FakeState

_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "inr": "₹"}
_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;background:#f4f5f7;color:#1d1f24;
margin:0;display:flex;justify-content:center;padding:48px 16px}
main{background:#fff;border-radius:12px;box-shadow:0 2px 12px rgba(0,0,0,.08);padding:32px;
width:100%;max-width:420px}
h1{font-size:1.3rem;margin:0 0 4px}.price{font-size:1.8rem;font-weight:600;margin:12px 0 20px}
.muted{color:#6b7080;font-size:.9rem}label{display:block;font-size:.85rem;margin:12px 0 4px}
input{width:100%;box-sizing:border-box;padding:10px;border:1px solid #d0d3da;border-radius:8px}
button{margin-top:20px;width:100%;padding:12px;border:0;border-radius:8px;background:#0062ff;
color:#fff;font-size:1rem;cursor:pointer}button.secondary{background:#e9ebf0;color:#1d1f24}
.badge{display:inline-block;padding:2px 8px;border-radius:99px;background:#e9ebf0;font-size:.8rem}
.sub{border-top:1px solid #eceef2;padding:16px 0}.sandbox{font-size:.75rem;color:#b35c00}
"""
_CHECKOUT_PATH = re.compile(r"^/checkout/(?P<secret>[^/]+)(?P<action>/pay|/confirmation)?$")
_PORTAL_ACTION = re.compile(r"^/portal/subscriptions/(?P<id>[^/]+)/(?P<action>cancel|uncancel)$")


def price_text(amount: int, currency: str, interval: str | None, count: int = 1) -> str:
    """``$20.00 / month`` style price text."""
    symbol = _SYMBOLS.get(currency.lower())
    money = f"{symbol}{amount / 100:,.2f}" if symbol else f"{amount / 100:,.2f} {currency.upper()}"
    if interval is None:
        return money
    return f"{money} / {interval}" if count == 1 else f"{money} / {count} {interval}s"


def _page(title: str, body: str, status: int = 200) -> Response:
    html = (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<title>{escape(title)} · Polar (fake)</title><style>{_STYLE}</style></head>"
        f"<body><main>{body}<p class=\"sandbox\">FakePolar — no real payment is made.</p>"
        "</main></body></html>"
    )
    return Response(status, html.encode("utf-8"), "text/html; charset=utf-8")


def _message(title: str, text: str, status: int, link: tuple[str, str] | None = None) -> Response:
    extra = f'<p><a href="{escape(link[0])}">{escape(link[1])}</a></p>' if link else ""
    return _page(title, f"<h1>{escape(title)}</h1><p class=\"muted\">{escape(text)}</p>{extra}",
                 status)


def _form_value(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return (values[-1].strip() or None) if values else None


def _redirect(location: str, events: Sequence[Event] = ()) -> Response:
    return Response(303, b"", None, {"location": location}, tuple(events))


class Pages:
    """Serves ``/checkout/...`` and ``/portal`` pages; actions share the API's code paths."""

    def __init__(self, state: FakeState) -> None:
        self.state = state

    def handle(self, request: Request) -> Response | None:
        """The page for ``request``, or ``None`` when the path is not a page."""
        match = _CHECKOUT_PATH.match(request.path)
        if match is not None:
            return self._checkout(request, match["secret"], match["action"])
        if request.path == "/portal" and request.method == "GET":
            token = (request.query.get("customer_session_token") or [""])[-1]
            return self._portal(token)
        action = _PORTAL_ACTION.match(request.path)
        if action is not None and request.method == "POST":
            return self._portal_action(request, action["id"], action["action"])
        return None

    # --- checkout -------------------------------------------------------------------

    def _checkout(self, request: Request, secret: str, action: str | None) -> Response:
        with self.state.lock:
            try:
                checkout = self.state.checkout_by_secret(secret)
            except ApiError:
                return _message("Checkout not found", "This checkout link is not valid.", 404)
            product = self.state.products[checkout.product_id]
            rendered = self.state.render_checkout(checkout)
            success_url, status = rendered["success_url"], rendered["status"]
        if action == "/pay":
            if request.method != "POST":
                return _message("Method not allowed", "Use the Pay button.", 405)
            form = parse_qs(request.body.decode("utf-8", "replace"))
            email = _form_value(form, "customer_email")
            name = _form_value(form, "customer_name")
            try:
                _, events = self.state.complete_checkout(checkout.id, email=email, name=name)
            except ApiError as error:
                detail = error.body.get("detail") if error.body else None
                text = detail if isinstance(detail, str) else (
                    "; ".join(d.get("msg", "") for d in detail) if isinstance(detail, list)
                    else "The payment could not be completed."
                )
                return _message("Payment failed", text, error.status)
            return _redirect(success_url, events)
        if request.method != "GET":
            return _message("Method not allowed", "This page only supports GET.", 405)
        if action == "/confirmation":
            return _message("Payment succeeded",
                            f"Thank you! Your purchase of {product.name} is complete.", 200)
        return self._checkout_form(checkout, status, product, secret, success_url)

    def _checkout_form(
        self,
        checkout: CheckoutRecord,
        status: str,
        product: ProductRecord,
        secret: str,
        success_url: str,
    ) -> Response:
        if status == "succeeded":
            return _message("Already paid", "This checkout has already been completed.", 200,
                            (success_url, "Continue"))
        if status != "open":
            return _message("Checkout unavailable", f"This checkout is {status}.", 410)
        price = price_text(checkout.amount, checkout.currency, product.recurring_interval,
                           product.recurring_interval_count)
        email = escape(checkout.customer_email or "")
        locked = " readonly" if checkout.customer_email else ""
        back = (
            f'<p><a class="muted" href="{escape(checkout.return_url)}">← Back</a></p>'
            if checkout.return_url else ""
        )
        body = (
            f"{back}<h1>{escape(product.name)}</h1>"
            + (f"<p class=\"muted\">{escape(product.description)}</p>"
               if product.description else "")
            + f"<div class=\"price\">{escape(price)}</div>"
            f"<form method=\"post\" action=\"/checkout/{quote(secret)}/pay\">"
            f"<label for=\"email\">Email</label><input id=\"email\" name=\"customer_email\" "
            f"type=\"email\" value=\"{email}\"{locked}>"
            f"<label for=\"name\">Name</label><input id=\"name\" name=\"customer_name\" "
            f"value=\"{escape(checkout.customer_name or '')}\">"
            f"<button type=\"submit\">Pay {escape(price)}</button></form>"
        )
        return _page(product.name, body)

    # --- portal ---------------------------------------------------------------------

    def _portal(self, token: str) -> Response:
        found = self.state.session_customer(token)
        if found is None:
            return _message("Session expired", "This portal link is invalid or expired.", 401)
        session, customer = found
        with self.state.lock:
            subs = [s for s in self.state.subscriptions.values() if s.customer_id == customer.id]
            rows = "".join(self._subscription_row(s, token) for s in subs) or (
                "<p class=\"muted\">No subscriptions.</p>"
            )
        back = (
            f'<p><a class="muted" href="{escape(session.return_url)}">← Back</a></p>'
            if session.return_url else ""
        )
        body = (
            f"{back}<h1>Your subscriptions</h1><p class=\"muted\">{escape(customer.email)}</p>"
            f"{rows}"
        )
        return _page("Customer portal", body)

    def _subscription_row(self, sub: SubscriptionRecord, token: str) -> str:
        product = self.state.products[sub.product_id]
        price = price_text(sub.amount, sub.currency, sub.recurring_interval,
                           sub.recurring_interval_count)
        ends = sub.ends_at or sub.current_period_end
        when = (
            f"Ends {ends:%Y-%m-%d}" if sub.cancel_at_period_end or sub.ended_at
            else f"Renews {sub.current_period_end:%Y-%m-%d}"
        )
        action = ""
        if sub.ended_at is None and sub.status in ("active", "trialing", "past_due"):
            verb, label, css = (
                ("uncancel", "Resume", "") if sub.cancel_at_period_end
                else ("cancel", "Cancel", " class=\"secondary\"")
            )
            action = (
                f"<form method=\"post\" action=\"/portal/subscriptions/{sub.id}/{verb}\">"
                f"<input type=\"hidden\" name=\"customer_session_token\" value=\"{escape(token)}\">"
                f"<button type=\"submit\"{css}>{label}</button></form>"
            )
        return (
            f"<div class=\"sub\"><strong>{escape(product.name)}</strong> "
            f"<span class=\"badge\">{escape(sub.status)}</span>"
            f"<div class=\"muted\">{escape(price)} · {when}</div>{action}</div>"
        )

    def _portal_action(self, request: Request, sub_id: str, action: str) -> Response:
        form = parse_qs(request.body.decode("utf-8", "replace"))
        token = (form.get("customer_session_token") or [""])[-1]
        found = self.state.session_customer(token)
        sub = self.state.subscriptions.get(sub_id)
        if found is None or sub is None or sub.customer_id != found[1].id:
            return _message("Not allowed", "This portal session cannot change that.", 403)
        try:
            if action == "cancel":
                _, events = self.state.cancel(sub_id)
            else:
                _, events = self.state.uncancel(sub_id)
        except ApiError as error:
            detail = error.body.get("detail") if error.body else None
            return _message("Not possible", str(detail or "The change failed."), error.status)
        return _redirect(f"/portal?customer_session_token={quote(token)}", events)
