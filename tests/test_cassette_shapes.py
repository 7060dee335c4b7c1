"""Every cassette answer has the shape Polar really sends.

polar-sdk 1.0.2 (a test-only dependency; kavach never imports it) is the oracle for
success bodies: ``polar.base.deserialize`` raises when a JSON object does not fit Polar's
own schema. Error bodies are checked against Polar's error shapes (polar-api.md §7).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import polar.v2026_04.outputs as polar_types
import pytest
import yaml  # type: ignore[import-untyped]
from polar.base import PolarDeserializationError, deserialize

CASSETTES_DIR = Path(__file__).resolve().parent.parent / "cassettes"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

# (method, path pattern) -> the polar-sdk type of a 2xx body. A cassette for a route not
# listed here fails the suite until its shape is added.
SUCCESS_TYPES: list[tuple[str, re.Pattern[str], Any]] = [
    ("POST", re.compile(r"/v1/checkouts/"), polar_types.Checkout),
    ("GET", re.compile(rf"/v1/checkouts/{UUID}"), polar_types.Checkout),
    ("GET", re.compile(r"/v1/subscriptions/"), polar_types.ListResourceSubscription),
    ("GET", re.compile(rf"/v1/subscriptions/{UUID}"), polar_types.Subscription),
    ("PATCH", re.compile(rf"/v1/subscriptions/{UUID}"), polar_types.Subscription),
    ("DELETE", re.compile(rf"/v1/subscriptions/{UUID}"), polar_types.Subscription),
    ("GET", re.compile(r"/v1/customers/external/[^/]+"), polar_types.Customer),
    ("POST", re.compile(r"/v1/customer-sessions/"), polar_types.CustomerSession),
]
SECRET_PATTERN = re.compile(
    r"(polar_(?:oat|pat|cst|mst|whs|at_[a-z]|rt_[a-z])_|whsec_)(?!REDACTED)[A-Za-z0-9]"
)


@attrs.frozen
class Interaction:
    """One recorded request/answer pair, named for error messages."""

    name: str
    method: str
    path: str
    status: int
    headers: dict[str, str]
    body: str


def _interactions() -> Iterator[Interaction]:
    for path in sorted(CASSETTES_DIR.rglob("*.yaml")):
        cassette = yaml.safe_load(path.read_text(encoding="utf-8"))
        for index, item in enumerate(cassette["interactions"]):
            request, response = item["request"], item["response"]
            uri = re.sub(r"^https?://[^/]+", "", request["uri"]).split("?")[0]
            body = response["body"]["string"]
            yield Interaction(
                name=f"{path.relative_to(CASSETTES_DIR)}#{index}",
                method=request["method"],
                path=uri,
                status=response["status"]["code"],
                headers={k.lower(): v[0] for k, v in response["headers"].items()},
                body=body.decode("utf-8") if isinstance(body, bytes) else body,
            )


INTERACTIONS = list(_interactions())
SUCCESSES = [i for i in INTERACTIONS if 200 <= i.status < 300]
FAILURES = [i for i in INTERACTIONS if i.status >= 400]


def _success_type(interaction: Interaction) -> Any:
    for method, pattern, model in SUCCESS_TYPES:
        if interaction.method == method and pattern.fullmatch(interaction.path):
            return model
    raise AssertionError(
        f"{interaction.name}: no known shape for {interaction.method} "
        f"{interaction.path}; add it to SUCCESS_TYPES"
    )


def test_cassettes_exist() -> None:
    assert len(SUCCESSES) >= 8 and len(FAILURES) >= 4


@pytest.mark.parametrize("interaction", SUCCESSES, ids=lambda i: i.name)
def test_success_body_fits_polar_schema(interaction: Interaction) -> None:
    deserialize(json.loads(interaction.body), _success_type(interaction))


@pytest.mark.parametrize(
    "interaction",
    [i for i in SUCCESSES if _success_type(i) is polar_types.ListResourceSubscription],
    ids=lambda i: i.name,
)
def test_every_item_of_a_subscription_page_is_a_subscription(interaction: Interaction) -> None:
    page = json.loads(interaction.body)
    assert page["items"], "a page in a cassette should hold subscriptions"
    for item in page["items"]:
        deserialize(item, polar_types.Subscription)
    assert page["pagination"]["max_page"] >= 1 and page["pagination"]["total_count"] >= 1


@pytest.mark.parametrize("interaction", SUCCESSES, ids=lambda i: i.name)
def test_success_answers_are_json(interaction: Interaction) -> None:
    assert interaction.headers.get("content-type", "").startswith("application/json")


@pytest.mark.parametrize("interaction", FAILURES, ids=lambda i: i.name)
def test_error_body_has_one_of_polars_error_shapes(interaction: Interaction) -> None:
    status, body = interaction.status, interaction.body
    if status == 429:
        assert body == "", "Polar's 429 has an empty body"
        assert float(interaction.headers["retry-after"]) >= 0
        return
    if status >= 500 and not interaction.headers.get("content-type", "").startswith(
        "application/json"
    ):
        assert body, "a generic server error still says something"
        return
    data = json.loads(body)
    assert isinstance(data, dict) and isinstance(data.get("error"), str)
    if "error_description" in data:  # OAuth2 (RFC 6750): no "detail" key
        assert "detail" not in data and isinstance(data["error_description"], str)
        assert interaction.headers["www-authenticate"].startswith('Bearer realm="polar"')
    elif status == 422:
        assert data["error"] in ("RequestValidationError", "PolarRequestValidationError")
        assert isinstance(data["detail"], list) and data["detail"]
        deserialize({"detail": data["detail"]}, polar_types.HTTPValidationError)
    else:
        assert isinstance(data["detail"], str)
        named = getattr(polar_types, data["error"], None)
        if named is not None:  # Polar's own error classes: {"error": <name>, "detail": str}
            deserialize(data, named)


def test_no_cassette_holds_a_token_or_webhook_secret() -> None:
    for path in CASSETTES_DIR.rglob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        assert not SECRET_PATTERN.search(text), path.name
        for auth in re.findall(r"Authorization:\n\s+- (.+)", text):
            assert auth == "Bearer <REDACTED>", path.name


# --- the oracle can say no ------------------------------------------------------------


def _first_body(model: Any) -> dict[str, Any]:
    for interaction in SUCCESSES:
        if _success_type(interaction) is model:
            data: dict[str, Any] = json.loads(interaction.body)
            return data
    raise AssertionError(f"no cassette answer of type {model.__name__}")


@pytest.mark.parametrize(
    "model",
    [
        polar_types.Checkout,
        polar_types.Subscription,
        polar_types.Customer,
        polar_types.CustomerSession,
    ],
    ids=lambda m: getattr(m, "__name__", "Customer"),
)
def test_oracle_rejects_a_body_without_id(model: Any) -> None:
    body = _first_body(model)
    body.pop("id")
    with pytest.raises(PolarDeserializationError):
        deserialize(body, model)


def test_oracle_rejects_a_subscription_with_a_wrong_type() -> None:
    body = _first_body(polar_types.Subscription)
    body["cancel_at_period_end"] = "no"
    with pytest.raises(PolarDeserializationError):
        deserialize(body, polar_types.Subscription)


def test_oracle_rejects_a_validation_error_with_a_string_detail() -> None:
    with pytest.raises(PolarDeserializationError):
        deserialize({"detail": "Product does not exist."}, polar_types.HTTPValidationError)
