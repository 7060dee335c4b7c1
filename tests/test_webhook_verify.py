"""Webhook signatures: kavach against two independent implementations.

``standardwebhooks`` signs as Polar's server does, with either key derivation (the
standard key ``Webhook(secret)``; the legacy key ``Webhook(base64(secret))``), and
polar-sdk 1.0.2's own verifier checks what kavach signs.
"""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from polar.webhooks import PolarWebhookVerificationError
from polar.webhooks import _verify_signature as polar_sdk_verify
from standardwebhooks import Webhook

from kavach.clock import FrozenClock
from kavach.errors import ConfigurationError, WebhookVerificationError
from kavach.polar import webhooks
from kavach.polar.webhooks import Derivation, WebhookVerifier, sign_webhook

NOW = datetime(2026, 8, 22, 10, 17, 42, tzinfo=UTC)
NOW_TS = int(NOW.timestamp())
BODY = (
    b'{"type":"subscription.updated","timestamp":"2026-08-22T10:17:41.602330Z",'
    b'"data":{"id":"b7e3f0c2-1d4a-4e5f-8a9b-0c1d2e3f4a5b","status":"active","name":"J\xc3\xb6rg"}}'
)
MSG_ID = "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"

# A padded whsec_ secret (32 random bytes) and one like Polar's current format: whsec_ + 43
# unpadded base62 characters (37 random + a 6-character checksum).
WHSEC_PADDED = "whsec_" + base64.b64encode(bytes(range(1, 33))).decode()
WHSEC_POLAR = "whsec_Xk3P9qRt2Lm8Vn4Bw6Yc1Hd5Jf7Gs0Ka2Ze9Ux3Wo8M"
POLAR_WHS = "polar_whs_Vb7Qm2Xr9Lk4Tn8Wc3Pz6Yh1Jd5Fg0Sa"
PLAIN = "a-plain-endpoint-secret-of-41-characters!"

STANDARD_SECRETS = [WHSEC_PADDED, WHSEC_POLAR]
ALL_SECRETS = [WHSEC_PADDED, WHSEC_POLAR, POLAR_WHS, PLAIN]


def signer(secret: str, derivation: Derivation) -> Webhook:
    """standardwebhooks set up to sign as Polar does for ``derivation``."""
    if derivation == "standard":
        return Webhook(secret)
    return Webhook(base64.b64encode(secret.encode()).decode())


def polar_headers(
    secret: str,
    derivation: Derivation,
    body: bytes = BODY,
    msg_id: str = MSG_ID,
    timestamp: int = NOW_TS,
) -> dict[str, str]:
    """Headers of a delivery signed by standardwebhooks, not by kavach."""
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    signature = signer(secret, derivation).sign(msg_id, when, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def verifier(secret: str = WHSEC_POLAR, tolerance: int = 300) -> WebhookVerifier:
    return WebhookVerifier(secret, tolerance=tolerance, clock=FrozenClock(NOW))


def reason_for(headers: dict[str, str], body: bytes = BODY, secret: str = WHSEC_POLAR) -> str:
    with pytest.raises(WebhookVerificationError) as caught:
        verifier(secret).verify(body, headers)
    return caught.value.reason


# --- both derivations, two independent signers --------------------------------------


@pytest.mark.parametrize("secret", STANDARD_SECRETS)
def test_delivery_signed_with_the_standard_key_is_accepted(secret: str) -> None:
    assert verifier(secret).verify(BODY, polar_headers(secret, "standard")) == "standard"


@pytest.mark.parametrize("secret", ALL_SECRETS)
def test_delivery_signed_with_the_legacy_key_is_accepted(secret: str) -> None:
    assert verifier(secret).verify(BODY, polar_headers(secret, "legacy")) == "legacy"


@pytest.mark.parametrize("derivation", ["standard", "legacy"])
def test_verdicts_are_the_same_through_the_stdlib_hmac_wrapper(
    derivation: Derivation, monkeypatch: pytest.MonkeyPatch
) -> None:
    # kavach keys OpenSSL's HMAC object directly when CPython has it; without it, the
    # stdlib hmac wrapper must give the same verdicts.
    monkeypatch.setattr(webhooks, "_openssl_hmac_new", None)
    check = verifier(WHSEC_POLAR)
    assert check.verify(BODY, polar_headers(WHSEC_POLAR, derivation)) == derivation
    with pytest.raises(WebhookVerificationError, match="no webhook signature matches"):
        check.verify(BODY + b" ", polar_headers(WHSEC_POLAR, derivation))


@pytest.mark.parametrize(
    ("secret", "derivation"),
    [(s, "standard") for s in STANDARD_SECRETS] + [(s, "legacy") for s in ALL_SECRETS],
)
def test_kavach_signature_is_accepted_by_polar_sdk(secret: str, derivation: Derivation) -> None:
    headers = sign_webhook(BODY, secret, derivation=derivation)  # signed now, real clock
    polar_sdk_verify(BODY.decode(), headers, secret)


@pytest.mark.parametrize(
    ("secret", "derivation"),
    [(s, "standard") for s in STANDARD_SECRETS] + [(s, "legacy") for s in ALL_SECRETS],
)
def test_kavach_signature_matches_standardwebhooks_byte_for_byte(
    secret: str, derivation: Derivation
) -> None:
    ours = sign_webhook(BODY, secret, MSG_ID, NOW_TS, derivation=derivation)
    assert ours["webhook-signature"] == polar_headers(secret, derivation)["webhook-signature"]


def test_polar_sdk_rejects_a_kavach_signature_made_with_another_secret() -> None:
    headers = sign_webhook(BODY, WHSEC_PADDED)
    with pytest.raises(PolarWebhookVerificationError):
        polar_sdk_verify(BODY.decode(), headers, WHSEC_POLAR)


def test_sign_webhook_defaults_to_the_standard_key_for_whsec_secrets() -> None:
    headers = sign_webhook(BODY, WHSEC_POLAR, MSG_ID, NOW_TS)
    assert verifier(WHSEC_POLAR).verify(BODY, headers) == "standard"


@pytest.mark.parametrize("secret", [POLAR_WHS, PLAIN])
def test_non_whsec_secret_has_no_standard_key(secret: str) -> None:
    with pytest.raises(ConfigurationError):
        sign_webhook(BODY, secret, derivation="standard")
    with pytest.raises(WebhookVerificationError):
        verifier(secret).verify(BODY, polar_headers(WHSEC_POLAR, "standard"))


def test_real_clock_delivery_is_accepted_without_an_injected_clock() -> None:
    now = int(time.time())
    headers = polar_headers(WHSEC_POLAR, "standard", timestamp=now)
    assert WebhookVerifier(WHSEC_POLAR).verify(BODY, headers) == "standard"


# --- distinct failure reasons -------------------------------------------------------


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_missing_headers(missing: str) -> None:
    headers = polar_headers(WHSEC_POLAR, "standard")
    del headers[missing]
    assert reason_for(headers) == "missing_headers"


def test_empty_header_is_missing_headers() -> None:
    headers = {**polar_headers(WHSEC_POLAR, "standard"), "webhook-id": ""}
    assert reason_for(headers) == "missing_headers"


@pytest.mark.parametrize(
    "timestamp", ["soon", "-5", "1755857862.5", "0x6a", "1e9", "²", "١٧٥٥٨٥٧٨٦٢", "9" * 13]
)
def test_unreadable_timestamp_is_bad_timestamp(timestamp: str) -> None:
    headers = {**polar_headers(WHSEC_POLAR, "standard"), "webhook-timestamp": timestamp}
    assert reason_for(headers) == "bad_timestamp"


@pytest.mark.parametrize("offset", [-301, 301, -86_400, 86_400])
def test_timestamp_outside_tolerance_is_stale(offset: int) -> None:
    headers = polar_headers(WHSEC_POLAR, "standard", timestamp=NOW_TS + offset)
    assert reason_for(headers) == "stale_timestamp"


@pytest.mark.parametrize("offset", [-300, 300])
def test_timestamp_exactly_at_tolerance_is_accepted(offset: int) -> None:
    headers = polar_headers(WHSEC_POLAR, "standard", timestamp=NOW_TS + offset)
    assert verifier().verify(BODY, headers) == "standard"


def test_tolerance_is_configurable() -> None:
    headers = polar_headers(WHSEC_POLAR, "standard", timestamp=NOW_TS - 61)
    with pytest.raises(WebhookVerificationError) as caught:
        verifier(tolerance=60).verify(BODY, headers)
    assert caught.value.reason == "stale_timestamp"


def test_verifier_follows_its_clock() -> None:
    clock = FrozenClock(NOW)
    check = WebhookVerifier(WHSEC_POLAR, clock=clock)
    headers = polar_headers(WHSEC_POLAR, "standard")
    assert check.verify(BODY, headers) == "standard"
    clock.advance(timedelta(seconds=301))
    with pytest.raises(WebhookVerificationError) as caught:
        check.verify(BODY, headers)
    assert caught.value.reason == "stale_timestamp"


def test_a_given_now_takes_the_place_of_the_clock() -> None:
    check = verifier()  # its clock says NOW
    headers = polar_headers(WHSEC_POLAR, "standard")
    assert check.verify(BODY, headers, now=NOW + timedelta(seconds=300)) == "standard"
    with pytest.raises(WebhookVerificationError) as caught:
        check.verify(BODY, headers, now=NOW + timedelta(seconds=301))
    assert caught.value.reason == "stale_timestamp"


def test_deliveries_of_both_derivations_in_any_order_are_accepted() -> None:
    # The verifier tries the key that matched last first: the order must not matter.
    check = verifier(WHSEC_POLAR)
    order: list[Derivation] = ["legacy", "legacy", "standard", "legacy", "standard", "standard"]
    for derivation in order:
        assert check.verify(BODY, polar_headers(WHSEC_POLAR, derivation)) == derivation


@pytest.mark.parametrize(
    "signature", ["sha256=abcdef", "v1", "v2,c2lnbmF0dXJl", "v1,!!!not-base64!!!", "  "]
)
def test_malformed_signature_header_is_bad_signature(signature: str) -> None:
    headers = {**polar_headers(WHSEC_POLAR, "standard"), "webhook-signature": signature}
    assert reason_for(headers) == "bad_signature"


def test_well_formed_wrong_signature_is_no_matching_signature() -> None:
    headers = polar_headers(WHSEC_PADDED, "standard")  # signed with another secret
    assert reason_for(headers) == "no_matching_signature"


def test_one_matching_signature_among_several_is_enough() -> None:
    good = polar_headers(WHSEC_POLAR, "standard")["webhook-signature"]
    wrong = polar_headers(WHSEC_PADDED, "standard")["webhook-signature"]
    headers = {
        **polar_headers(WHSEC_POLAR, "standard"),
        "webhook-signature": f"v2,c2lnbmF0dXJl {wrong} v1a,{good[3:]} {good}",
    }
    assert verifier().verify(BODY, headers) == "standard"


def test_header_names_are_case_insensitive() -> None:
    headers = {name.title(): value for name, value in polar_headers(WHSEC_POLAR, "legacy").items()}
    headers["WEBHOOK-SIGNATURE"] = headers.pop("Webhook-Signature")
    assert verifier().verify(BODY, headers) == "legacy"


def test_body_is_checked_as_raw_bytes_not_reserialized_json() -> None:
    headers = polar_headers(WHSEC_POLAR, "standard")
    respaced = BODY.replace(b'","', b'", "')
    assert reason_for(headers, body=respaced) == "no_matching_signature"


def test_error_repr_names_only_the_reason() -> None:
    with pytest.raises(WebhookVerificationError) as caught:
        verifier().verify(BODY, polar_headers(WHSEC_PADDED, "standard"))
    assert repr(caught.value) == "WebhookVerificationError(reason='no_matching_signature')"
    assert WHSEC_POLAR not in str(caught.value)


# --- properties ---------------------------------------------------------------------

header_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40)


@given(
    body=st.binary(max_size=256),
    msg_id=header_text,
    derivation=st.sampled_from(["standard", "legacy"]),
)
def test_an_unmodified_delivery_is_accepted(
    body: bytes, msg_id: str, derivation: Derivation
) -> None:
    headers = sign_webhook(body, WHSEC_POLAR, msg_id, NOW_TS, derivation=derivation)
    assert verifier().verify(body, headers) == derivation


@st.composite
def tampered(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """A signed delivery with exactly one of body, id, timestamp or signature changed."""
    body = draw(st.binary(max_size=256))
    msg_id = draw(header_text.filter(lambda s: s.strip() == s))
    headers = sign_webhook(body, WHSEC_POLAR, msg_id, NOW_TS)
    part = draw(st.sampled_from(["body", "id", "timestamp", "signature"]))
    if part == "body":
        changed = draw(st.binary(max_size=257).filter(lambda b: b != body))
        return changed, headers
    if part == "id":
        other = draw(header_text.filter(lambda s: s.strip() == s and s != msg_id))
        return body, {**headers, "webhook-id": other}
    if part == "timestamp":
        shift = draw(st.integers(-300, 300).filter(lambda n: n != 0))
        return body, {**headers, "webhook-timestamp": str(NOW_TS + shift)}
    raw = bytearray(base64.b64decode(headers["webhook-signature"][3:]))
    index = draw(st.integers(0, len(raw) - 1))
    raw[index] ^= draw(st.integers(1, 255))
    return body, {**headers, "webhook-signature": "v1," + base64.b64encode(raw).decode()}


@given(tampered())
def test_any_change_to_body_id_timestamp_or_signature_is_rejected(
    delivery: tuple[bytes, dict[str, str]],
) -> None:
    body, headers = delivery
    with pytest.raises(WebhookVerificationError) as caught:
        verifier().verify(body, headers)
    assert caught.value.reason == "no_matching_signature"


@given(
    msg_id=header_text,
    timestamp=header_text
    | st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=3)
    | st.integers(NOW_TS - 400, NOW_TS + 400).map(str),
    signature=header_text
    | st.just("v1,")
    | st.binary(min_size=32, max_size=32).map(lambda raw: "v1," + base64.b64encode(raw).decode()),
    body=st.binary(max_size=64),
)
def test_arbitrary_headers_get_a_verdict_never_a_crash(
    msg_id: str, timestamp: str, signature: str, body: bytes
) -> None:
    headers = {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signature}
    try:
        verifier().verify(body, headers)
    except WebhookVerificationError as error:
        assert error.reason in (
            "missing_headers",
            "bad_timestamp",
            "stale_timestamp",
            "bad_signature",
            "no_matching_signature",
        )
