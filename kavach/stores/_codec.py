"""Turning store records into plain values and back, shared by every backend.

Two jobs live here:

* **UTC normalisation.** Stores accept aware datetimes in any zone and always hand
  back aware UTC ones, so a record read from SQL equals, field by field and zone by
  zone, the record the memory store returns. A naive datetime is refused with
  ``ValueError`` (it would silently mean different instants on different machines).
* **JSON encoding** of records, for the JSON file store's snapshot and journal:
  datetimes as ISO 8601 text with microseconds and ``+00:00``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from operator import attrgetter
from types import MappingProxyType
from typing import Any, TypeVar

import attrs

from kavach.records import InboxEvent, SessionRecord, SubscriptionState, UserRecord

Record = UserRecord | SessionRecord | SubscriptionState | InboxEvent
R = TypeVar("R", UserRecord, SessionRecord, SubscriptionState, InboxEvent)

RECORD_TYPES: tuple[type[Record], ...] = (UserRecord, SessionRecord, SubscriptionState, InboxEvent)

#: Field names, in declaration order, per record type. SQL column order follows it.
FIELD_NAMES: Mapping[type[Record], tuple[str, ...]] = MappingProxyType(
    {cls: tuple(field.name for field in attrs.fields(cls)) for cls in RECORD_TYPES}
)

#: The fields holding a ``datetime`` (annotations are strings: ``from __future__``).
DATETIME_FIELDS: Mapping[type[Record], frozenset[str]] = MappingProxyType(
    {
        cls: frozenset(f.name for f in attrs.fields(cls) if "datetime" in str(f.type))
        for cls in RECORD_TYPES
    }
)

#: The boolean fields (stored as integers by SQLite and MySQL).
BOOL_FIELDS: Mapping[type[Record], frozenset[str]] = MappingProxyType(
    {
        cls: frozenset(f.name for f in attrs.fields(cls) if str(f.type).startswith("bool"))
        for cls in RECORD_TYPES
    }
)


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime. Raises ``ValueError`` for a naive one."""
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"store datetimes must be timezone-aware, got naive {value!r}")
    return value.astimezone(UTC)


#: Per record type, a getter of its datetime fields' values (a tuple: every type has 2+).
_DATETIME_VALUES: Mapping[type[Record], Callable[[Any], tuple[datetime | None, ...]]] = (
    MappingProxyType({cls: attrgetter(*sorted(DATETIME_FIELDS[cls])) for cls in RECORD_TYPES})
)


def utc_record(record: R) -> R:
    """``record`` with every datetime field converted to aware UTC (same object if already)."""
    for value in _DATETIME_VALUES[type(record)](record):
        if value is not None and value.tzinfo is not UTC:
            break
    else:  # the common case, and a hot path: nothing to convert
        return record
    changes: dict[str, Any] = {}
    for name in DATETIME_FIELDS[type(record)]:
        value = getattr(record, name)
        if value is not None and value.tzinfo is not UTC:
            changes[name] = as_utc(value)
    return attrs.evolve(record, **changes) if changes else record


def to_json(record: Record) -> dict[str, Any]:
    """A JSON-ready dict of ``record``; datetimes become ISO 8601 text."""
    datetimes = DATETIME_FIELDS[type(record)]
    out: dict[str, Any] = {}
    for name in FIELD_NAMES[type(record)]:
        value = getattr(record, name)
        if value is not None and name in datetimes:
            value = value.isoformat(timespec="microseconds")
        out[name] = value
    return out


def from_json(cls: type[R], data: Mapping[str, Any]) -> R:
    """The record of type ``cls`` that :func:`to_json` turned into ``data``.

    Unknown keys are ignored; a missing required key or a malformed datetime raises
    ``ValueError``/``TypeError`` (the JSON store reports it as corruption).
    """
    datetimes = DATETIME_FIELDS[cls]
    kwargs: dict[str, Any] = {}
    for name in FIELD_NAMES[cls]:
        if name not in data:
            continue
        value = data[name]
        if value is not None and name in datetimes:
            value = as_utc(datetime.fromisoformat(value))
        kwargs[name] = value
    return cls(**kwargs)
