"""The offline demo page: one self-contained HTML page at ``GET /``.

``kavach serve --fake-polar`` serves it beside the JSON routes, so the whole flow can be
clicked through in a browser without any network: sign up or sign in, pick a plan,
``Upgrade`` (``POST {base}/auth/polar/checkout``), pay on the fake Polar's hosted checkout
page, come back to ``/?checkout_id=...`` and watch the subscription turn ``active``.

The page is plain HTML with inline CSS and vanilla JavaScript (no CDN, no external
request; a ``Content-Security-Policy`` with hashes of the inline script and style
enforces it). It talks to the JSON routes on its own origin with the session cookie;
``fetch`` sends ``Origin`` on POSTs, which the CSRF check trusts as the server's own
origin, and ``successUrl`` (``<own origin>/``) passes the trusted-redirect check on a
loopback host (``kavach serve``'s default, 127.0.0.1; on another host, list the page's
origin with ``--trusted-origin``). The return from checkout is not taken as proof of
payment: the page polls ``GET {base}/auth/polar/subscription`` until the webhook has made
the plan active.

The plans are the products of a Polar API (the fake's, in the CLI), listed at render
time with :class:`PolarProducts`; the demo is off unless a :class:`DemoPage` is given to
the :class:`~kavach.http.router.Router`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from html import escape
from typing import TYPE_CHECKING, Any

import attrs
import requests

from kavach.http.messages import Request, Response
from kavach.http.router import DEMO_PATH, Router

if TYPE_CHECKING:
    from kavach.core import Kavach
    from kavach.http.context import HttpContext

__all__ = ["DEMO_PATH", "DemoPage", "Plan", "PolarProducts", "demo_router", "price_text"]

logger = logging.getLogger("kavach.http")

_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "inr": "₹"}
_ZERO_DECIMAL = frozenset({"jpy", "krw"})

_STYLE = """
:root{color-scheme:light;--ink:#1d1f24;--muted:#5d6270;--line:#e3e5ea;--accent:#0b5fff;
--ok:#12753a;--warn:#8a5a00;--bad:#b3261e;font-family:system-ui,-apple-system,"Segoe UI",
Roboto,sans-serif}
body{margin:0;background:#f4f5f7;color:var(--ink);display:flex;justify-content:center;
padding:40px 16px}
main{background:#fff;border-radius:14px;box-shadow:0 2px 14px rgba(0,0,0,.08);padding:28px 32px;
width:100%;max-width:460px}
h1{font-size:1.35rem;margin:0 0 2px}h2{font-size:1.05rem;margin:22px 0 8px}
.lead{color:var(--muted);margin:0 0 18px;font-size:.92rem}
label{display:block;font-size:.85rem;margin:12px 0 4px}
input[type=email],input[type=password]{width:100%;box-sizing:border-box;padding:10px;
border:1px solid #c9ccd4;border-radius:8px;font-size:1rem}
.row{display:flex;gap:10px;margin-top:18px}
button{flex:1;padding:11px 14px;border:0;border-radius:8px;background:var(--accent);color:#fff;
font-size:.98rem;cursor:pointer}
button.secondary{background:#e9ebf0;color:var(--ink)}
button:disabled{opacity:.55;cursor:progress}
button:focus-visible,input:focus-visible{outline:3px solid #9bbcff;outline-offset:2px}
fieldset{border:1px solid var(--line);border-radius:10px;padding:6px 12px 10px;margin:0}
legend{font-size:.85rem;color:var(--muted);padding:0 4px}
.plan{display:flex;align-items:center;gap:10px;padding:8px 0;border-bottom:1px solid var(--line);
margin:0;font-size:.95rem}.plan:last-child{border-bottom:0}
.plan span{flex:1}.price{color:var(--muted);font-variant-numeric:tabular-nums}
dl{display:grid;grid-template-columns:auto 1fr;gap:6px 14px;margin:10px 0 0;font-size:.92rem}
dt{color:var(--muted)}dd{margin:0;font-variant-numeric:tabular-nums}
.plan-line{font-size:1.05rem;margin:4px 0}
#message{margin:16px 0 0;padding:10px 12px;border-radius:8px;background:#eef3ff;font-size:.92rem}
#message[data-kind=error]{background:#fdecea;color:var(--bad)}
#message[data-kind=success]{background:#e7f5ec;color:var(--ok)}
#message[data-kind=warning]{background:#fff4e0;color:var(--warn)}
.foot{color:var(--muted);font-size:.78rem;margin-top:22px}
[hidden]{display:none!important}
"""

_SCRIPT = """
"use strict";
(function () {
  var config = JSON.parse(document.getElementById("demo-config").textContent);
  var api = config.basePath;
  var names = {};
  config.plans.forEach(function (plan) { names[plan.id] = plan.name; });
  var ENTITLED = ["active", "trialing", "past_due"];
  var CONFIRMED = ["active", "trialing"];
  var POLL_MS = 500;
  var POLL_LIMIT_MS = 60000;
  function $(id) { return document.getElementById(id); }
  function sleep(ms) { return new Promise(function (done) { setTimeout(done, ms); }); }

  async function call(method, path, body) {
    var init = {method: method, credentials: "same-origin", headers: {Accept: "application/json"}};
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    var response;
    try {
      response = await fetch(api + path, init);
    } catch (err) {
      return {status: 0, ok: false, data: {message: "the server cannot be reached"}};
    }
    var data = null;
    if (response.status !== 204) {
      try { data = await response.json(); } catch (err) { data = null; }
    }
    return {status: response.status, ok: response.ok, data: data};
  }

  function say(text, kind) {
    var box = $("message");
    box.textContent = text || "";
    box.dataset.kind = kind || "info";
    box.hidden = !text;
  }
  function failure(result) {
    return (result.data && result.data.message) || ("request failed (" + result.status + ")");
  }
  function busy(on) {
    document.querySelectorAll("button").forEach(function (b) { b.disabled = on; });
    $("app").setAttribute("aria-busy", on ? "true" : "false");
  }

  function showSignedOut() {
    $("auth").hidden = false;
    $("account").hidden = true;
    $("password").value = "";
  }
  function showSignedIn(user) {
    $("auth").hidden = true;
    $("account").hidden = false;
    $("account-email").textContent = user.email;
  }
  function render(sub) {
    if (!sub) {
      $("plan").textContent = "none";
      $("subscription").hidden = true;
      $("upgrade-form").hidden = false;
      return;
    }
    var name = names[sub.productId] || sub.productId;
    $("plan").textContent = name + " (" + sub.status + ")";
    $("sub-status").textContent = sub.status;
    $("sub-product").textContent = name;
    var end = sub.currentPeriodEnd;
    $("sub-period-end").textContent = end ? end.slice(0, 10) : "-";
    $("sub-cancel").textContent = sub.cancelAtPeriodEnd ? "yes" : "no";
    $("subscription").hidden = false;
    $("upgrade-form").hidden = ENTITLED.indexOf(sub.status) >= 0;
  }

  // {signedIn, subscription} or null after an error (already shown).
  async function refresh() {
    var result = await call("GET", "/auth/polar/subscription");
    if (result.status === 401) { showSignedOut(); return {signedIn: false, subscription: null}; }
    if (!result.ok) { say(failure(result), "error"); return null; }
    render(result.data.subscription);
    return {signedIn: true, subscription: result.data.subscription};
  }

  async function waitForPlan(checkoutId) {
    say("Back from checkout. Waiting for Polar to confirm the payment...", "info");
    $("subscription-section").setAttribute("aria-busy", "true");
    var deadline = Date.now() + POLL_LIMIT_MS;
    try {
      // The return-from-checkout route syncs a paid checkout at once where the server has
      // it; either way the webhook is what the polling below waits for.
      await call("GET", "/auth/polar/checkout/" + encodeURIComponent(checkoutId));
      while (Date.now() < deadline) {
        var state = await refresh();
        if (state && !state.signedIn) { say("Sign in to see your subscription.", "info"); return; }
        var sub = state && state.subscription;
        if (sub && CONFIRMED.indexOf(sub.status) >= 0) {
          say("Your plan is active. Thank you!", "success");
          history.replaceState(null, "", location.pathname);
          return;
        }
        await sleep(POLL_MS);
      }
      say("Polar has not confirmed the payment yet. Reload this page in a moment.", "warning");
    } finally {
      $("subscription-section").setAttribute("aria-busy", "false");
    }
  }

  $("auth-form").addEventListener("submit", async function (event) {
    event.preventDefault();
    var mode = event.submitter && event.submitter.value === "sign-up" ? "sign-up" : "sign-in";
    busy(true);
    try {
      var result = await call("POST", "/auth/" + mode + "/email",
                              {email: $("email").value, password: $("password").value});
      if (!result.ok) { say(failure(result), "error"); return; }
      $("password").value = "";
      say(mode === "sign-up" ? "Account created." : "Signed in.", "success");
      showSignedIn(result.data.user);
      await refresh();
    } finally {
      busy(false);
    }
  });

  $("upgrade-form").addEventListener("submit", async function (event) {
    event.preventDefault();
    var chosen = document.querySelector("input[name=plan]:checked");
    if (!chosen) { say("Choose a plan first.", "error"); return; }
    busy(true);
    var result = await call("POST", "/auth/polar/checkout",
                            {productId: chosen.value, successUrl: location.origin + "/"});
    if (!result.ok) {
      busy(false);
      if (result.status === 401) { showSignedOut(); }
      say(failure(result), "error");
      return;
    }
    say("Opening the checkout...", "info");
    location.assign(result.data.url);
  });

  $("sign-out").addEventListener("click", async function () {
    busy(true);
    try {
      var result = await call("POST", "/auth/sign-out");
      if (!result.ok && result.status !== 401) { say(failure(result), "error"); return; }
      history.replaceState(null, "", location.pathname);
      showSignedOut();
      say("Signed out.", "info");
    } finally {
      busy(false);
    }
  });

  async function start() {
    var returned = new URLSearchParams(location.search).get("checkout_id");
    var result = await call("GET", "/auth/session");
    if (result.status === 401) {
      showSignedOut();
      if (returned) { say("Sign in to see your subscription.", "info"); }
      return;
    }
    if (!result.ok) { say(failure(result), "error"); return; }
    showSignedIn(result.data.user);
    if (returned) { await waitForPlan(returned); } else { await refresh(); }
  }

  start().finally(function () { $("app").dataset.ready = "true"; });
})();
"""


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


#: Only the page's own inline script and style run; fetches go to its own origin only.
#: ``Referrer-Policy: same-origin`` (not ``no-referrer``, which would make a same-origin
#: POST send ``Origin: null`` and fail the CSRF check).
_HEADERS = (
    ("Content-Type", "text/html; charset=utf-8"),
    ("Cache-Control", "no-store"),
    (
        "Content-Security-Policy",
        f"default-src 'none'; script-src {_csp_hash(_SCRIPT)}; "
        f"style-src {_csp_hash(_STYLE)}; connect-src 'self'; img-src 'self' data:; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
)


def price_text(amount: int, currency: str, interval: str | None, count: int = 1) -> str:
    """``$20.00 / month`` style text for an amount in minor units."""
    code = currency.lower()
    value = amount if code in _ZERO_DECIMAL else amount / 100
    number = f"{value:,.0f}" if code in _ZERO_DECIMAL else f"{value:,.2f}"
    symbol = _SYMBOLS.get(code)
    money = f"{symbol}{number}" if symbol else f"{number} {currency.upper()}"
    if interval is None:
        return money
    return f"{money} / {interval}" if count == 1 else f"{money} / {count} {interval}s"


@attrs.frozen
class Plan:
    """A plan the demo page offers: a Polar product's ``id``, ``name`` and price text."""

    id: str
    name: str
    price: str
    description: str | None = None
    amount: int = 0

    @classmethod
    def from_product(cls, product: Mapping[str, Any]) -> Plan | None:
        """The plan for a Polar ``Product`` JSON object; ``None`` for an archived,
        one-time or malformed one (the demo only sells subscriptions)."""
        product_id, name = product.get("id"), product.get("name")
        if not isinstance(product_id, str) or not isinstance(name, str):
            return None
        interval = product.get("recurring_interval")
        if product.get("is_archived") or not isinstance(interval, str):
            return None
        count = product.get("recurring_interval_count")
        count = count if isinstance(count, int) and count > 0 else 1
        amount, currency = 0, "usd"
        prices = [
            p for p in product.get("prices") or []
            if isinstance(p, dict) and not p.get("is_archived")
        ]
        if prices:
            price = prices[0]
            raw_amount = price.get("price_amount")
            amount = raw_amount if isinstance(raw_amount, int) else 0
            currency = str(price.get("price_currency") or "usd")
            text = (
                price_text(amount, currency, interval, count)
                if price.get("amount_type", "fixed") == "fixed" else "custom price"
            )
        else:
            text = "free"
        description = product.get("description")
        return cls(
            id=product_id,
            name=name,
            price=text,
            description=description if isinstance(description, str) else None,
            amount=amount,
        )


@attrs.frozen
class PolarProducts:
    """The plans of a Polar API (or a FakePolar): ``GET /v1/products/`` on each call.

    Failures are logged and give no plans: the page still renders and says so.
    """

    api_url: str
    token: str = attrs.field(repr=False)
    timeout: float = 5.0

    def __call__(self) -> list[Plan]:
        """The recurring, non-archived products as plans, cheapest first."""
        url = self.api_url.rstrip("/") + "/v1/products/"
        try:
            response = requests.get(
                url,
                params={"is_archived": "false", "is_recurring": "true", "limit": "100"},
                headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json"},
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            logger.warning("demo: listing Polar products failed: %s", type(exc).__name__)
            return []
        if response.status_code != 200:
            logger.warning("demo: listing Polar products answered %d", response.status_code)
            return []
        try:
            items = response.json().get("items")
        except (ValueError, AttributeError):
            logger.warning("demo: the Polar product list is not JSON")
            return []
        plans = [
            plan for plan in (Plan.from_product(p) for p in items or [] if isinstance(p, dict))
            if plan is not None
        ]
        return sorted(plans, key=lambda plan: (plan.amount, plan.name))


def _json_for_script(data: Any) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>`` break-out)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _plan_options(plans: Sequence[Plan]) -> str:
    if not plans:
        return '<p class="lead" id="no-plans">No plans are available right now.</p>'
    rows = []
    for index, plan in enumerate(plans):
        checked = " checked" if index == 0 else ""
        rows.append(
            f'<label class="plan" data-testid="plan-option">'
            f'<input type="radio" name="plan" value="{escape(plan.id)}" '
            f'id="plan-{index}" data-testid="plan-{escape(plan.id)}"{checked}>'
            f"<span>{escape(plan.name)}</span>"
            f'<span class="price">{escape(plan.price)}</span></label>'
        )
    return "".join(rows)


def render_page(base_path: str, plans: Sequence[Plan], title: str = "kavach demo") -> str:
    """The demo page's HTML for routes under ``base_path`` offering ``plans``."""
    config = {
        "basePath": base_path,
        "plans": [{"id": p.id, "name": p.name, "price": p.price} for p in plans],
    }
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<link rel="icon" href="data:,">
<title>{escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<main id="app" data-testid="app" aria-busy="false">
<h1>{escape(title)}</h1>
<p class="lead">Email + password sign-in with Polar subscriptions, running offline against a
local fake Polar. No real payment is made.</p>

<section id="auth" data-testid="auth" aria-labelledby="auth-title" hidden>
<h2 id="auth-title">Sign in or create an account</h2>
<form id="auth-form" data-testid="auth-form" novalidate>
<label for="email">Email</label>
<input id="email" data-testid="email" name="email" type="email" autocomplete="email" required>
<label for="password">Password (8 characters or more)</label>
<input id="password" data-testid="password" name="password" type="password"
 autocomplete="current-password" required>
<div class="row">
<button type="submit" id="sign-in" data-testid="sign-in" name="mode" value="sign-in">
Sign in</button>
<button type="submit" id="sign-up" data-testid="sign-up" name="mode" value="sign-up"
 class="secondary">Create account</button>
</div>
</form>
</section>

<section id="account" data-testid="account" aria-labelledby="account-title" hidden>
<h2 id="account-title">Your account</h2>
<p>Signed in as <strong id="account-email" data-testid="account-email"></strong></p>
<div id="subscription-section" aria-live="polite" aria-busy="false">
<p class="plan-line">Plan: <strong id="plan" data-testid="plan">none</strong></p>
<dl id="subscription" data-testid="subscription" hidden>
<dt>Status</dt><dd id="sub-status" data-testid="sub-status"></dd>
<dt>Product</dt><dd id="sub-product" data-testid="sub-product"></dd>
<dt>Current period ends</dt><dd id="sub-period-end" data-testid="sub-period-end"></dd>
<dt>Cancels at period end</dt><dd id="sub-cancel" data-testid="sub-cancel"></dd>
</dl>
</div>
<form id="upgrade-form" data-testid="upgrade-form">
<h2 id="plans-title">Choose a plan</h2>
<fieldset id="plans" data-testid="plans" aria-labelledby="plans-title">
<legend>Plans</legend>
{_plan_options(plans)}
</fieldset>
<div class="row"><button type="submit" id="upgrade" data-testid="upgrade">Upgrade</button></div>
</form>
<div class="row"><button type="button" id="sign-out" data-testid="sign-out"
 class="secondary">Sign out</button></div>
</section>

<p id="message" data-testid="message" role="status" aria-live="polite" hidden></p>
<p class="foot">JSON routes under <code>{escape(base_path)}</code> ·
<a href="{escape(base_path)}/openapi.json">OpenAPI</a></p>
</main>
<script type="application/json" id="demo-config">{_json_for_script(config)}</script>
<script>{_SCRIPT}</script>
</body>
</html>
"""


@attrs.frozen
class DemoPage:
    """The ``GET /`` route of the offline demo; ``plans()`` is called on every render.

    Pass it to the router: ``Router(kavach, demo=DemoPage(plans=...))``.
    """

    plans: Callable[[], Sequence[Plan]]
    title: str = "kavach demo"

    def __call__(self, ctx: HttpContext, request: Request) -> Response:
        """The page, rendered for ``ctx``'s base path and the current plans."""
        html = render_page(ctx.kavach.config.base_path, self.plans(), self.title)
        return Response(200, list(_HEADERS), html.encode("utf-8"))


def demo_router(kavach: Kavach, api_url: str, token: str) -> Router:
    """A router serving ``kavach``'s routes plus the demo page, whose plans are the
    products of the Polar API at ``api_url`` (the fake Polar's URL in the CLI), at
    :data:`DEMO_PATH`."""
    return Router(kavach, demo=DemoPage(plans=PolarProducts(api_url, token)))
