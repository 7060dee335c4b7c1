"""Turning store records into plain values and back, shared by every backend.

Two jobs live here:

* **UTC normalisation.** Stores accept aware datetimes in any zone and always hand
  back aware UTC ones, so a record read from SQL equals, field by field and zone by
  zone, the record the memory store returns. A naive datetime is refused with
  ``ValueError`` (it would silently mean different instants on different machines).
* **JSON encoding** of records, for the JSON file store's snapshot and journal:
  datetimes as ISO 8601 text with microseconds and ``+00:00``; and decoding, which
  checks every value's JSON type against its field's annotation, so a record stored
  wrongly typed is refused when read, not handed out to fail later.
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
    """A JSON-ready dict of ``record``; datetimes become ISO 8601 text.

    What :func:`from_json` would refuse is never written (the store could not be opened
    again): a value of another type than its field's raises ``TypeError``, except what
    the SQL stores take as that type too — ``0``/``1`` for a bool, an integral float for
    an integer — which is written as that type."""
    cls = type(record)
    plain, datetimes = _FIELD_SPECS[cls]
    out: dict[str, Any] = {}
    for name, json_type, optional, _ in plain:
        value = getattr(record, name)
        if type(value) is not json_type and not (value is None and optional):
            value = _coerced(cls, name, value, json_type)
        out[name] = value
    for name, optional, _ in datetimes:
        value = getattr(record, name)
        if isinstance(value, datetime):
            value = value.isoformat(timespec="microseconds")
        elif not (value is None and optional):
            raise TypeError(f"{cls.__name__}.{name} must be a datetime, not {type(value).__name__}")
        out[name] = value
    return out


def _coerced(cls: type[Record], name: str, value: Any, json_type: type[Any]) -> Any:
    """``value`` as ``json_type`` where a SQL store would take it so; else ``TypeError``."""
    if json_type is str and isinstance(value, str):  # a str subclass (an enum member)
        return str(value)
    if json_type is bool and type(value) is int and value in (0, 1):
        return bool(value)
    if json_type is int and not isinstance(value, bool):
        if isinstance(value, int):  # an int subclass (an IntEnum member)
            return int(value)
        if type(value) is float and value.is_integer():
            return int(value)
    raise TypeError(
        f"{cls.__name__}.{name} must be {_JSON_TYPE_NAMES_BY_TYPE[json_type]}, "
        f"not {type(value).__name__}"
    )


#: What :func:`from_json` calls each record type in its messages, and the field naming
#: the record. A session is named by its user: its key, the token hash, is a secret.
_RECORD_NAMES: Mapping[type[Record], tuple[str, str]] = MappingProxyType(
    {
        UserRecord: ("user", "id"),
        SessionRecord: ("session of user", "user_id"),
        SubscriptionState: ("subscription", "id"),
        InboxEvent: ("inbox event", "webhook_id"),
    }
)

#: Per annotation (``| None`` removed), the JSON type of the value. JSON decoding makes
#: exactly these types, so ``type(value) is ...`` holds and a bool is never taken for an
#: int. Datetimes are ISO 8601 text.
_JSON_TYPES: Mapping[str, type[Any]] = MappingProxyType(
    {"str": str, "int": int, "bool": bool, "datetime": str}
)
#: What messages call each annotation's JSON type.
_JSON_TYPE_NAMES: Mapping[str, str] = MappingProxyType(
    {"str": "text", "int": "an integer", "bool": "true or false", "datetime": "ISO 8601 text"}
)


def _annotation(field: attrs.Attribute[Any]) -> tuple[str, bool]:
    """A field's annotation without ``| None``, and whether it had it (null allowed)."""
    annotation = str(field.type)
    base = annotation.removesuffix(" | None")
    if base not in _JSON_TYPES:  # a new record field of a type from_json cannot check
        raise TypeError(f"{field.name}: unsupported type {annotation!r}")
    return base, base != annotation


_PlainSpec = tuple[str, type[Any], bool, bool]  # name, JSON type, null allowed, required
_DatetimeSpec = tuple[str, bool, bool]  # name, null allowed, required


def _field_specs(cls: type[Record]) -> tuple[tuple[_PlainSpec, ...], tuple[_DatetimeSpec, ...]]:
    """``cls``'s fields that are not datetimes, then its datetime fields. A field is
    required when it has no default."""
    plain: list[_PlainSpec] = []
    datetimes: list[_DatetimeSpec] = []
    for field in attrs.fields(cls):
        base, optional = _annotation(field)
        required = field.default is attrs.NOTHING
        if base == "datetime":
            datetimes.append((field.name, optional, required))
        else:
            plain.append((field.name, _JSON_TYPES[base], optional, required))
    return tuple(plain), tuple(datetimes)


_FIELD_SPECS: Mapping[type[Record], tuple[tuple[_PlainSpec, ...], tuple[_DatetimeSpec, ...]]] = (
    MappingProxyType({cls: _field_specs(cls) for cls in RECORD_TYPES})
)

#: Per record type, its text and integer fields and their type (``str`` or ``int``):
#: the values a SQL driver hands back as they are, which the SQL store checks on reading
#: (a BLOB in a text column comes back as ``bytes``).
PLAIN_FIELD_TYPES: Mapping[type[Record], Mapping[str, type[Any]]] = MappingProxyType(
    {
        cls: MappingProxyType(
            {name: json_type for name, json_type, _, _ in _FIELD_SPECS[cls][0]
             if json_type is not bool}
        )
        for cls in RECORD_TYPES
    }
)

#: Per record type, the field that names a record in error messages (never a secret: a
#: session is named by its user, not its token hash).
KEY_FIELDS: Mapping[type[Record], str] = MappingProxyType(
    {cls: key_field for cls, (_, key_field) in _RECORD_NAMES.items()}
)

_MISSING: Any = object()
_JSON_TYPE_NAMES_BY_TYPE: Mapping[type[Any], str] = MappingProxyType(
    {str: "text", int: "an integer", bool: "a bool"}
)


def from_json(cls: type[R], data: Mapping[str, Any]) -> R:
    """The record of type ``cls`` that :func:`to_json` turned into ``data``.

    Unknown keys are ignored and a missing optional key takes its default. Anything else
    that :func:`to_json` does not write raises ``ValueError`` naming the record and the
    field, never a value: a missing required key, a value of the wrong JSON type (``"5"``
    or ``true`` for an integer, ``null`` for a field that is not optional) or a time that
    is not aware ISO 8601 text. The JSON store reports it as corruption.
    (A hot path: the JSON store decodes every record when it opens.)
    """
    if type(data) is not dict:
        raise ValueError(f"a {_RECORD_NAMES[cls][0]} record is not a JSON object")
    plain, datetimes = _FIELD_SPECS[cls]
    get = data.get
    kwargs: dict[str, Any] = {}
    for name, json_type, optional, required in plain:
        value = get(name, _MISSING)
        if type(value) is json_type:
            kwargs[name] = value
        elif value is None and optional:
            kwargs[name] = None
        elif value is not _MISSING or required:
            raise _malformed(cls, data, name, value)
    for name, optional, required in datetimes:
        value = get(name, _MISSING)
        if type(value) is str:
            try:
                kwargs[name] = as_utc(datetime.fromisoformat(value))
            except (ValueError, OverflowError):  # OverflowError: 0001-01-01T00:00+01:00
                raise _malformed(cls, data, name, value) from None
        elif value is None and optional:
            kwargs[name] = None
        elif value is not _MISSING or required:
            raise _malformed(cls, data, name, value)
    return cls(**kwargs)


def _malformed(cls: type[Record], data: Mapping[str, Any], name: str, value: Any) -> ValueError:
    """The error for field ``name`` of a record: its kind, key and field, not the value."""
    kind, key_field = _RECORD_NAMES[cls]
    key = data.get(key_field)
    record = f"{kind} {key!r}" if type(key) is str else f"{kind} with a malformed {key_field}"
    base, optional = _annotation(attrs.fields_dict(cls)[name])
    if value is _MISSING:
        problem = "is missing"
    elif base == "datetime" and type(value) is str:
        problem = "is not an aware ISO 8601 time (within datetime's range in UTC)"
    else:
        got = "null" if value is None else type(value).__name__
        problem = f"must be {_JSON_TYPE_NAMES[base]}{' or null' if optional else ''}, not {got}"
    return ValueError(f"{record}: field {name!r} {problem}")
