"""Property tests for the parsers that face untrusted or damaged bytes.

* ``WebhookVerifier.verify`` with arbitrary bodies and headers: it raises
  ``WebhookVerificationError`` and nothing else, and never accepts a tampered delivery.
* ``PolarPlugin.handle_webhook`` with *correctly signed* but hostile JSON (a leaked
  secret, or a Polar bug): only the webhook errors (answered 4xx) or a 2xx outcome,
  never another exception (which the HTTP layer would answer 500, and Polar retry forever).
* The JSON file store's journal reader: beside a valid snapshot, a journal cut at any
  byte, followed by arbitrary bytes, or holding well-formed JSON of the wrong shape,
  opens with every earlier record or raises ``StoreCorruptError`` — never another
  exception; a torn last line (no newline) is always tolerated.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kavach import (
    FrozenClock,
    PasswordHasher,
    StoreCorruptError,
    WebhookPayloadError,
    WebhookVerificationError,
    create_kavach,
)
from kavach.auth import polar
from kavach.polar import PolarPlugin
from kavach.polar.webhooks import WebhookVerifier, sign_webhook
from kavach.stores.jsonfile import JsonFileStore
from tests.polar_plugin.payloads import envelope, iso, new_id, subscription
from tests.proof.conftest import SECRET

NOW = datetime(2026, 8, 22, 10, 20, tzinfo=UTC)
NOW_TS = int(NOW.timestamp())

# -- strategies ---------------------------------------------------------------------------

#: Any text, lone surrogates included (a framework may hand over such header values).
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)
timestamps = st.one_of(
    st.integers(NOW_TS - 400, NOW_TS + 400).map(str),
    st.integers(-(10**15), 10**15).map(str),
    st.sampled_from(["", " ", "+1787395200", f" {NOW_TS} ", f"{NOW_TS}.0", "1e9", "0x10",
                     "\u0661\u0662\u0663", "\u00b2", f"{NOW_TS}\x00"]),
    any_text,
)
signature_entries = st.tuples(
    st.sampled_from(["v1", "v1a", "v2", "V1", ""]),
    st.sampled_from([",", "", ";", " "]),
    st.one_of(st.binary(max_size=48).map(lambda b: base64.b64encode(b).decode()), any_text),
).map("".join)
signatures = st.lists(signature_entries, max_size=6).map(" ".join) | any_text
header_names = st.sampled_from(
    ["webhook-id", "Webhook-Id", "WEBHOOK-ID", "webhook-timestamp", "Webhook-Timestamp",
     "webhook-signature", "WEBHOOK-SIGNATURE", "content-type"]
) | any_text


@st.composite
def hostile_headers(draw: st.DrawFn) -> dict[str, str]:
    headers: dict[str, str] = {}
    if draw(st.booleans()):
        headers["webhook-id"] = draw(any_text | st.just(new_id()))
    if draw(st.booleans()):
        headers["webhook-timestamp"] = draw(timestamps)
    if draw(st.booleans()):
        headers["webhook-signature"] = draw(signatures)
    extra = draw(st.dictionaries(header_names, any_text | timestamps | signatures, max_size=4))
    headers.update(extra)
    return headers


def verifier() -> WebhookVerifier:
    return WebhookVerifier(SECRET, clock=FrozenClock(NOW))


# -- the verifier ----------------------------------------------------------------------------


@settings(max_examples=1500, deadline=None)
@given(body=st.binary(max_size=2048), headers=hostile_headers())
@example(body=b"{}", headers={"webhook-id": "\ud800", "webhook-timestamp": str(NOW_TS),
                              "webhook-signature": "v1,AAAA"})
@example(body=b"{}", headers={"webhook-id": "x", "webhook-timestamp": str(NOW_TS),
                              "webhook-signature": "v1," + "A" * 100_000})
def test_verifier_raises_only_verification_errors(body: bytes, headers: dict[str, str]) -> None:
    with pytest.raises(WebhookVerificationError) as err:
        verifier().verify(body, headers)
    assert isinstance(err.value.reason, str) and err.value.reason


@st.composite
def tampered(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """A genuine signed delivery with one part changed afterwards."""
    body = draw(st.binary(min_size=1, max_size=512))
    headers = sign_webhook(body, SECRET, msg_id=new_id(), timestamp=NOW_TS)
    part = draw(st.sampled_from(["body", "id", "timestamp", "signature"]))
    if part == "body":
        index = draw(st.integers(0, len(body) - 1))
        flip = draw(st.integers(1, 255))
        body = body[:index] + bytes([body[index] ^ flip]) + body[index + 1 :]
    elif part == "id":
        headers["webhook-id"] = draw(any_text.filter(lambda t: t != headers["webhook-id"]))
    elif part == "timestamp":
        headers["webhook-timestamp"] = str(NOW_TS + draw(st.integers(-299, 299).filter(bool)))
    else:
        raw = bytearray(base64.b64decode(headers["webhook-signature"][3:]))
        raw[draw(st.integers(0, len(raw) - 1))] ^= draw(st.integers(1, 255))
        headers["webhook-signature"] = "v1," + base64.b64encode(bytes(raw)).decode()
    return body, headers


@settings(max_examples=500, deadline=None)
@given(delivery=tampered())
def test_verifier_never_accepts_a_tampered_delivery(delivery: tuple[bytes, dict[str, str]]) -> None:
    body, headers = delivery
    with pytest.raises(WebhookVerificationError):
        verifier().verify(body, headers)


# -- the webhook handler with signed hostile JSON --------------------------------------------

odd_times = st.one_of(
    st.sampled_from([
        "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999Z", "2026-13-01T00:00:00Z", "2026-02-30", "", "Z", "now",
        "2026-08-22T10:20:00", "2026-08-22", "+002026-08-22T10:20:00Z",
    ]),
    st.builds(
        lambda moment, offset: moment.replace(tzinfo=timezone(offset)).isoformat(),
        st.datetimes(),
        st.timedeltas(min_value=timedelta(hours=-23, minutes=-59),
                      max_value=timedelta(hours=23, minutes=59)),
    ),
    json_values,
)
SUBSCRIPTION_FIELDS = (
    "id", "status", "modified_at", "created_at", "current_period_end", "current_period_start",
    "cancel_at_period_end", "canceled_at", "ends_at", "ended_at", "started_at", "trial_end",
    "past_due_at", "customer_id", "customer", "metadata", "product_id", "amount", "currency",
    "recurring_interval", "checkout_id",
)
TIME_FIELDS = frozenset(f for f in SUBSCRIPTION_FIELDS if f.endswith(("_at", "_end", "_start")))


@pytest.fixture(scope="module", params=["memory", "sqlite"])
def handler(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PolarPlugin, str]]:
    """A plugin on a store holding one user; yields (plugin, user id)."""
    url = "memory://"
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('fuzz-handler') / 'k.db'}"
    plugin = polar(access_token="polar_oat_x", webhook_secret=SECRET,
                   base_url="http://127.0.0.1:9", on_subscription_change=lambda *_: None)
    kavach = create_kavach(url, plugins=[plugin], clock=FrozenClock(NOW),
                           password_hasher=PasswordHasher.fast())
    with kavach:
        yield plugin, kavach.users.create("fuzz@proof.example").id


@st.composite
def hostile_envelopes(draw: st.DrawFn, user_id: str) -> bytes:
    """A subscription envelope (sometimes not even that) with fields replaced by junk."""
    data: Any = subscription(sub_id=new_id(), customer_id=new_id(), external_id=user_id,
                             modified_at=NOW - timedelta(minutes=1))
    for field in draw(st.lists(st.sampled_from(SUBSCRIPTION_FIELDS), max_size=5, unique=True)):
        data[field] = draw(odd_times if field in TIME_FIELDS else json_values)
    event_type = draw(st.sampled_from(["subscription.updated", "subscription.revoked",
                                       "subscription.created", "order.paid", ""]) | any_text)
    timestamp: Any = draw(st.just(iso(NOW)) | odd_times)
    shape = draw(st.sampled_from(["envelope", "data_junk", "any_json"]))
    if shape == "data_junk":
        data = draw(json_values)
    body: Any = {"type": event_type, "timestamp": timestamp, "data": data}
    if shape == "any_json":
        body = draw(json_values)
    return json.dumps(body, ensure_ascii=False).encode("utf-8", errors="surrogatepass")


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
@example(data=None)  # the explicit case below: a modified_at out of datetime's range
def test_signed_hostile_payloads_get_webhook_errors_or_an_outcome(
    handler: tuple[PolarPlugin, str], data: Any
) -> None:
    plugin, user_id = handler
    if data is None:
        sub = subscription(sub_id=new_id(), customer_id=new_id(), external_id=user_id,
                           modified_at=NOW)
        sub["modified_at"] = "0001-01-01T00:00:00+01:00"
        body = envelope("subscription.updated", sub, NOW)
    else:
        body = data.draw(hostile_envelopes(user_id))
    headers = sign_webhook(body, SECRET, msg_id=new_id(), timestamp=NOW_TS)
    try:
        outcome = plugin.handle_webhook(body, headers)
    except (WebhookVerificationError, WebhookPayloadError):
        return
    assert 200 <= outcome.status_code < 300


# -- the JSON store's journal reader ---------------------------------------------------------

BASE_USERS = 6


@pytest.fixture(scope="module")
def base_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, list[str]]:
    """A JSON store whose journal holds one ``create_user`` line per user.

    Returns (snapshot path, journal bytes, user ids in journal order)."""
    directory = tmp_path_factory.mktemp("journal-base")
    path = directory / "k.json"
    with create_kavach(f"json://{path}", password_hasher=PasswordHasher.fast()) as kavach:
        ids = [kavach.users.create(f"user{i}@proof.example").id for i in range(BASE_USERS)]
    journal = Path(str(path) + ".journal").read_bytes()
    assert journal.count(b"\n") == BASE_USERS
    return path, journal, ids


def open_with_journal(base: tuple[Path, bytes, list[str]], journal: bytes) -> list[str] | None:
    """Open a copy of the base snapshot beside ``journal``: the base user ids it holds,
    or ``None`` when it refused with ``StoreCorruptError``."""
    path, _, ids = base
    directory = Path(tempfile.mkdtemp(prefix="kavach-journal-"))
    try:
        shutil.copyfile(path, directory / "k.json")
        (directory / "k.json.journal").write_bytes(journal)
        try:
            store = JsonFileStore(directory / "k.json")
        except StoreCorruptError:
            return None
        try:
            return [i for i in ids if store.get_user(i) is not None]
        finally:
            store.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def complete_lines(journal: bytes, cut: int) -> int:
    return journal[:cut].count(b"\n")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_journal_cut_at_any_byte_opens_with_every_complete_line(
    base_store: tuple[Path, bytes, list[str]], data: Any
) -> None:
    _, journal, ids = base_store
    cut = data.draw(st.integers(0, len(journal)))
    present = open_with_journal(base_store, journal[:cut])
    assert present == ids[: complete_lines(journal, cut)]


@settings(max_examples=300, deadline=None)
@given(tail=st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")))
def test_torn_last_line_without_newline_is_always_tolerated(
    base_store: tuple[Path, bytes, list[str]], tail: bytes
) -> None:
    _, journal, ids = base_store
    assert open_with_journal(base_store, journal + tail) == ids


def _journal_entry_like(draw: st.DrawFn) -> bytes:
    """One line of JSON shaped like a journal entry, with junk in the records."""
    record_fields = ["id", "email", "name", "password_hash", "created_at", "token_hash",
                     "user_id", "expires_at", "status", "version", "webhook_id", "event_type",
                     "received_at", "payload", "polar_customer_id", "revoked_at"]
    entry: dict[str, Any] = {"g": draw(st.sampled_from([1, 0, 2, True, "1", None, -1]))}
    for section in draw(st.lists(st.sampled_from(
        ["users", "sessions", "subscriptions", "events", "deleted_sessions"]), max_size=3)):
        records = draw(st.lists(
            st.dictionaries(st.sampled_from(record_fields), json_values | odd_times,
                            max_size=8) | json_values,
            max_size=3,
        ))
        entry[section] = draw(st.just(records) | json_values)
    return json.dumps(entry, ensure_ascii=False).encode("utf-8", errors="surrogatepass")


@st.composite
def garbage_lines(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["bytes", "json", "entry"]))
        if kind == "bytes":
            lines.append(draw(st.binary(max_size=200)).replace(b"\n", b" "))
        elif kind == "json":
            lines.append(json.dumps(draw(json_values)).encode())
        else:
            lines.append(_journal_entry_like(draw))
    text = b"\n".join(lines)
    return text + draw(st.sampled_from([b"\n", b""]))


@settings(max_examples=400, deadline=None)
@given(garbage=garbage_lines() | st.binary(max_size=400))
@example(garbage=b"[" * 100_000 + b"\n")
@example(garbage=b'{"g": 1, "users": [{"id": "x", "email": 5, "name": null, '
         b'"password_hash": null, "created_at": "2026-01-01T00:00:00+00:00"}]}\n')
@example(garbage=b'{"g": 1, "subscriptions": [{"id": [], "user_id": "u", "status": "active", '
         b'"product_id": null, "current_period_end": null, "cancel_at_period_end": false, '
         b'"version": 1}]}\n')
# An aware time before datetime.min once converted to UTC: OverflowError, not ValueError.
@example(garbage=b'{"g": 1, "users": [{"id": "x", "email": "x@y.z", "name": null, '
         b'"password_hash": null, "created_at": "0001-01-01T00:00:00+01:00"}]}\n')
def test_garbage_after_valid_lines_opens_them_or_is_reported_as_corruption(
    base_store: tuple[Path, bytes, list[str]], garbage: bytes
) -> None:
    _, journal, ids = base_store
    present = open_with_journal(base_store, journal + garbage)
    assert present is None or present == ids


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_damage_inside_an_earlier_line_is_reported_as_corruption_or_read(
    base_store: tuple[Path, bytes, list[str]], data: Any
) -> None:
    """Bytes overwritten in the middle of the journal: the store refuses to open
    (``StoreCorruptError``) or opens; it never fails another way."""
    _, journal, _ = base_store
    start = data.draw(st.integers(0, len(journal) - 1))
    junk = data.draw(st.binary(min_size=1, max_size=40))
    damaged = journal[:start] + junk + journal[start + len(junk):]
    open_with_journal(base_store, damaged)
