"""The OpenAPI 3.1 description of the routes, served at ``GET {base}/openapi.json``.

It is written to match the real responses (``tests/http/test_schemathesis.py`` checks
that against the live server): every error is ``{"error", "message"}``; session routes
accept a bearer token or the session cookie.
"""

from __future__ import annotations

import copy
from typing import Any

from kavach._version import __version__
from kavach.core import DEFAULT_COOKIE_NAME

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _error(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    response = _json_body(_ref("Error"), description)
    if headers:
        response["headers"] = headers
    return response


_SET_COOKIE = {
    "Set-Cookie": {
        "description": "The session cookie (HttpOnly; SameSite=Lax; Path=/; Secure over https).",
        "schema": {"type": "string"},
    }
}
_WWW_AUTHENTICATE = {"description": "Bearer challenge.", "schema": {"type": "string"}}
_RETRY_AFTER = {"description": "Seconds to wait.", "schema": {"type": "string"}}

_BAD_REQUEST = _error("Bad JSON, a missing or invalid field (`field` names it).")
_UNAUTHORIZED = _error("No valid session.", **{"WWW-Authenticate": _WWW_AUTHENTICATE})
_CSRF = _error("A cookie-authenticated request (or a sign-in) from an untrusted origin.")
_TOO_LARGE = _error("The body is over the size limit (1 MiB by default).")
_NOT_CONFIGURED = _error("The Polar plugin is not configured.")
_SESSION_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"cookie": []}]

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "description": "A machine-readable code."},
            "message": {"type": "string"},
            "field": {"type": "string", "description": "The offending input field."},
        },
    },
    "User": {
        "type": "object",
        "required": ["id", "email", "name", "createdAt"],
        "properties": {
            "id": {"type": "string"},
            "email": {"type": "string"},
            "name": {"type": ["string", "null"]},
            "createdAt": {"type": "string", "format": "date-time"},
        },
    },
    "SignedIn": {
        "type": "object",
        "required": ["user", "session"],
        "properties": {
            "user": _ref("User"),
            "session": {
                "type": "object",
                "required": ["token", "expiresAt"],
                "properties": {
                    "token": {"type": "string", "description": "Shown only here."},
                    "expiresAt": {"type": "string", "format": "date-time"},
                },
            },
        },
    },
    "CurrentSession": {
        "type": "object",
        "required": ["user", "session"],
        "properties": {
            "user": _ref("User"),
            "session": {
                "type": "object",
                "required": ["expiresAt"],
                "properties": {"expiresAt": {"type": "string", "format": "date-time"}},
                "additionalProperties": False,
            },
        },
    },
    "Credentials": {
        "type": "object",
        "required": ["email", "password"],
        "properties": {
            "email": {"type": "string", "format": "email", "maxLength": 254},
            "password": {"type": "string", "minLength": 8, "maxLength": 1024},
        },
    },
    "SignUp": {
        "type": "object",
        "required": ["email", "password"],
        "properties": {
            "email": {"type": "string", "format": "email", "maxLength": 254},
            "password": {"type": "string", "minLength": 8, "maxLength": 1024},
            "name": {
                "type": ["string", "null"],
                "maxLength": 200,
                "pattern": "^[^\\u0000]*$",  # no NUL (PostgreSQL cannot store it)
            },
        },
    },
    "CheckoutRequest": {
        "type": "object",
        "required": ["productId"],
        "properties": {
            "productId": {"type": "string", "minLength": 1},
            "successUrl": {
                "type": ["string", "null"],
                "format": "uri",
                "description": (
                    "Must be on a configured trusted origin (the server's own counts on a "
                    "loopback host only)."
                ),
            },
        },
    },
    "Checkout": {
        "type": "object",
        "required": ["url", "id"],
        "properties": {"url": {"type": "string"}, "id": {"type": "string"}},
    },
    "Subscription": {
        "type": "object",
        "required": ["id", "status", "productId", "currentPeriodEnd", "cancelAtPeriodEnd"],
        "properties": {
            "id": {"type": "string"},
            "status": {"type": "string"},
            "productId": {"type": ["string", "null"]},
            "currentPeriodEnd": {"type": ["string", "null"], "format": "date-time"},
            "cancelAtPeriodEnd": {"type": "boolean"},
        },
    },
    "Access": {
        "type": "object",
        "required": ["granted", "reason", "until", "subscriptionId"],
        "properties": {
            "granted": {"type": "boolean"},
            "reason": {
                "type": "string",
                "enum": [
                    "active", "trialing", "canceled_in_grace", "past_due", "paused",
                    "revoked", "none",
                ],
            },
            "until": {"type": ["string", "null"], "format": "date-time"},
            "subscriptionId": {"type": ["string", "null"]},
        },
    },
    "SubscriptionResult": {
        "type": "object",
        "required": ["subscription", "access"],
        "properties": {
            "subscription": {"oneOf": [_ref("Subscription"), {"type": "null"}]},
            "access": _ref("Access"),
        },
    },
    "ChangedSubscription": {
        "type": "object",
        "required": ["subscription"],
        "properties": {"subscription": _ref("Subscription")},
    },
    "CancelRequest": {
        "type": "object",
        "properties": {
            "reason": {
                "type": "string",
                "description": "Polar's customer_cancellation_reason, e.g. too_expensive.",
            },
            "comment": {"type": "string"},
        },
    },
    "PortalRequest": {
        "type": "object",
        "properties": {
            "returnUrl": {
                "type": ["string", "null"],
                "format": "uri",
                "description": (
                    "Must be on a configured trusted origin (the server's own counts on a "
                    "loopback host only)."
                ),
            },
        },
    },
    "PortalResult": {
        "type": "object",
        "required": ["url"],
        "properties": {"url": {"type": "string"}},
    },
    "CheckoutReturn": {
        "type": "object",
        "required": ["checkout", "subscription", "access"],
        "properties": {
            "checkout": {
                "type": "object",
                "required": ["id", "status"],
                "properties": {"id": {"type": "string"}, "status": {"type": "string"}},
            },
            "subscription": {"oneOf": [_ref("Subscription"), {"type": "null"}]},
            "access": _ref("Access"),
        },
    },
    "WebhookResult": {
        "type": "object",
        "required": ["received"],
        "properties": {"received": {"const": True}},
    },
}


def _webhook_header(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _change_responses() -> dict[str, Any]:
    return {
        "200": _json_body(_ref("ChangedSubscription"), "The subscription after the change."),
        "400": _BAD_REQUEST,
        "401": _UNAUTHORIZED,
        "403": _CSRF,
        "404": _error("No live subscription, or the plugin is not configured."),
        "409": _error("Already canceled, or the subscription has a pending update."),
        "413": _TOO_LARGE,
        "502": _error("Polar failed; no secrets in the body."),
    }


def _paths() -> dict[str, Any]:
    return {
        "/auth/sign-up/email": {
            "post": {
                "operationId": "signUpEmail",
                "summary": "Create a user with email and password, and sign in.",
                "security": [],
                "requestBody": {"required": True, "content": {_JSON: {"schema": _ref("SignUp")}}},
                "responses": {
                    "200": {**_json_body(_ref("SignedIn"), "Signed up."), "headers": _SET_COOKIE},
                    "400": _BAD_REQUEST,
                    "403": _CSRF,
                    "409": _error("The email is taken."),
                    "413": _TOO_LARGE,
                },
            }
        },
        "/auth/sign-in/email": {
            "post": {
                "operationId": "signInEmail",
                "summary": "Sign in with email and password.",
                "security": [],
                "requestBody": {
                    "required": True,
                    "content": {_JSON: {"schema": _ref("Credentials")}},
                },
                "responses": {
                    "200": {**_json_body(_ref("SignedIn"), "Signed in."), "headers": _SET_COOKIE},
                    "400": _BAD_REQUEST,
                    "401": _error("Unknown email or wrong password (the same answer)."),
                    "403": _CSRF,
                    "413": _TOO_LARGE,
                    "429": _error(
                        "Too many failed attempts from this IP or for this email.",
                        **{"Retry-After": _RETRY_AFTER},
                    ),
                },
            }
        },
        "/auth/sign-out": {
            "post": {
                "operationId": "signOut",
                "summary": "Revoke the session and clear the cookie.",
                "security": _SESSION_SECURITY,
                "responses": {
                    "204": {"description": "Signed out (cookie cleared).", "headers": _SET_COOKIE},
                    "401": _UNAUTHORIZED,
                    "403": _CSRF,
                    "413": _TOO_LARGE,
                },
            }
        },
        "/auth/session": {
            "get": {
                "operationId": "getSession",
                "summary": "The signed-in user and the session's expiry.",
                "security": _SESSION_SECURITY,
                "responses": {
                    "200": _json_body(_ref("CurrentSession"), "The session."),
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/auth/polar/checkout": {
            "post": {
                "operationId": "createPolarCheckout",
                "summary": "Start a Polar checkout for the signed-in user.",
                "security": _SESSION_SECURITY,
                "requestBody": {
                    "required": True,
                    "content": {_JSON: {"schema": _ref("CheckoutRequest")}},
                },
                "responses": {
                    "200": _json_body(_ref("Checkout"), "Redirect the browser to `url`."),
                    "400": _BAD_REQUEST,
                    "401": _UNAUTHORIZED,
                    "403": _CSRF,
                    "404": _NOT_CONFIGURED,
                    "413": _TOO_LARGE,
                    "502": _error("Polar failed; no secrets in the body."),
                },
            }
        },
        "/auth/polar/subscription": {
            "get": {
                "operationId": "getPolarSubscription",
                "summary": "The signed-in user's subscription, or null.",
                "security": _SESSION_SECURITY,
                "responses": {
                    "200": _json_body(_ref("SubscriptionResult"), "The subscription."),
                    "401": _UNAUTHORIZED,
                    "404": _NOT_CONFIGURED,
                },
            }
        },
        "/auth/polar/portal": {
            "post": {
                "operationId": "createPolarPortalSession",
                "summary": "A Polar customer-portal link for the signed-in user's own customer.",
                "security": _SESSION_SECURITY,
                "requestBody": {
                    "required": False,
                    "content": {_JSON: {"schema": _ref("PortalRequest")}},
                },
                "responses": {
                    "200": _json_body(_ref("PortalResult"), "Redirect the browser to `url`."),
                    "400": _BAD_REQUEST,
                    "401": _UNAUTHORIZED,
                    "403": _CSRF,
                    "404": _error("No Polar customer yet, or the plugin is not configured."),
                    "413": _TOO_LARGE,
                    "502": _error("Polar failed; no secrets in the body."),
                },
            }
        },
        "/auth/polar/subscription/cancel": {
            "post": {
                "operationId": "cancelPolarSubscription",
                "summary": "Cancel the signed-in user's subscription at the end of its period.",
                "security": _SESSION_SECURITY,
                "requestBody": {
                    "required": False,
                    "content": {_JSON: {"schema": _ref("CancelRequest")}},
                },
                "responses": _change_responses(),
            }
        },
        "/auth/polar/subscription/uncancel": {
            "post": {
                "operationId": "uncancelPolarSubscription",
                "summary": "Undo a scheduled cancellation of the signed-in user's subscription.",
                "security": _SESSION_SECURITY,
                "responses": _change_responses(),
            }
        },
        "/auth/polar/checkout/{checkoutId}": {
            "get": {
                "operationId": "getPolarCheckout",
                "summary": "Return from checkout: own checkout only; syncs once it succeeded.",
                "security": _SESSION_SECURITY,
                "parameters": [
                    {
                        "name": "checkoutId",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                    }
                ],
                "responses": {
                    "200": _json_body(_ref("CheckoutReturn"), "The checkout and the plan."),
                    "401": _UNAUTHORIZED,
                    "404": _error("No such checkout for this user (another user's looks missing)."),
                    "502": _error("Polar failed; no secrets in the body."),
                },
            }
        },
        "/auth/polar/webhook": {
            "post": {
                "operationId": "polarWebhook",
                "summary": "Polar's webhook endpoint (Standard Webhooks signature).",
                "description": (
                    "Authenticated by the signature, not a session. Unsigned or badly "
                    "signed deliveries get 400 with the verification reason as `error`."
                ),
                "security": [],
                "parameters": [
                    _webhook_header("webhook-id", "The delivery id (idempotency key)."),
                    _webhook_header("webhook-timestamp", "Unix seconds."),
                    _webhook_header("webhook-signature", "`v1,<base64>` entries."),
                ],
                "requestBody": {
                    "required": True,
                    "content": {_JSON: {"schema": {"type": "object"}}},
                },
                "responses": {
                    "2XX": _json_body(_ref("WebhookResult"), "Accepted (also duplicates)."),
                    "400": _error("Verification failed or the body is not a Polar event."),
                    "404": _NOT_CONFIGURED,
                    "413": _TOO_LARGE,
                    "500": _error("The subscription callback failed; Polar retries."),
                    "503": _error(
                        "Another request is processing this delivery (`error`: "
                        "`in_progress`); retry after the `Retry-After` seconds.",
                        **{"Retry-After": _RETRY_AFTER},
                    ),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "getOpenAPI",
                "summary": "This document.",
                "security": [],
                "responses": {
                    "200": _json_body({"type": "object"}, "The OpenAPI description."),
                },
            }
        },
    }


def build_openapi(base_path: str = "", cookie_name: str = DEFAULT_COOKIE_NAME) -> dict[str, Any]:
    """The OpenAPI 3.1 document for routes mounted under ``base_path`` (a fresh copy each
    call: the module's templates are never handed out)."""
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "kavach",
            "version": __version__,
            "description": "Email + password sessions and Polar subscriptions.",
        },
        "paths": {base_path + path: item for path, item in _paths().items()},
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": cookie_name},
            },
        },
    }
    return copy.deepcopy(document)
