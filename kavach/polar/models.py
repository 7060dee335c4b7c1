"""Frozen values for the Polar objects the plugin hands back, and the converter that builds them.

The models only declare fields. How JSON becomes a value (ISO datetimes, enums that may
grow, unknown keys) is decided in one place, :func:`make_converter`, as cattrs intends.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import attrs
import cattrs


class CheckoutStatus(enum.StrEnum):
    """Status of a checkout session; ``confirmed`` means "clicked Pay", not "paid"."""

    OPEN = "open"
    EXPIRED = "expired"
    CONFIRMED = "confirmed"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def _url_without_query(url: str) -> str:
    """``repr`` of a URL whose query carries a bearer token: show where it goes, not the token."""
    base, sep, _ = url.partition("?")
    return repr(base + ("?…" if sep else ""))


@attrs.frozen(kw_only=True)
class Checkout:
    """A Polar checkout session (``POST /v1/checkouts/``); send the customer to ``url``.

    ``status`` is a :class:`CheckoutStatus`, or the plain string Polar sent when it is a
    status this version does not know. ``client_secret`` is left out of ``repr``.
    """

    id: str
    status: CheckoutStatus | str
    url: str
    expires_at: datetime
    organization_id: str
    client_secret: str = attrs.field(repr=False)
    created_at: datetime | None = None
    modified_at: datetime | None = None
    success_url: str | None = None
    return_url: str | None = None
    product_id: str | None = None
    product_price_id: str | None = None
    customer_id: str | None = None
    external_customer_id: str | None = None
    customer_email: str | None = None
    subscription_id: str | None = None
    amount: int | None = None
    total_amount: int | None = None
    currency: str | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)
    customer_metadata: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class CustomerSession:
    """A customer-portal session (``POST /v1/customer-sessions/``), valid for one hour.

    Redirect the customer to ``customer_portal_url``. The ``token`` is a bearer token for
    Polar's customer-portal API: it is kept out of ``repr``, and so is the portal URL's
    query string, which carries the same token.
    """

    id: str
    customer_portal_url: str = attrs.field(repr=_url_without_query)
    expires_at: datetime
    customer_id: str
    token: str = attrs.field(repr=False)
    return_url: str | None = None
    created_at: datetime | None = None


def parse_datetime(value: object) -> datetime:
    """An aware UTC ``datetime`` from Polar's ISO-8601 text.

    Lenient: ``Z`` or an offset, with or without (any number of) fractional digits; a
    string without an offset is taken as UTC. An aware ``datetime`` passes through.
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        parsed = datetime.fromisoformat(value.strip())
    else:
        raise TypeError(f"expected an ISO-8601 datetime string, got {type(value).__name__}")
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def format_datetime(value: datetime) -> str:
    """Polar's own form: ISO-8601 in UTC with a ``Z`` suffix."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _enum_or_str_member(type_: Any) -> type[enum.Enum] | None:
    """The enum class of an ``SomeEnum | str`` annotation, else ``None``."""
    if typing.get_origin(type_) not in (typing.Union, types.UnionType):
        return None
    args = set(typing.get_args(type_))
    if str not in args or len(args) != 2:
        return None
    (other,) = args - {str}
    if isinstance(other, type) and issubclass(other, enum.Enum):
        return other
    return None


def _is_enum_or_str(type_: Any) -> bool:
    return _enum_or_str_member(type_) is not None


def _structure_enum_or_str(type_: Any) -> Callable[[Any, Any], enum.Enum | str]:
    enum_cls = _enum_or_str_member(type_)
    if enum_cls is None:
        raise TypeError(f"{type_!r} is not an 'Enum | str' annotation")

    def structure(value: Any, _: Any) -> enum.Enum | str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string for {enum_cls.__name__}, got {value!r}")
        try:
            return enum_cls(value)
        except ValueError:
            return value  # a value Polar added later: data, not a crash

    return structure


def _unstructure_enum_or_str(value: enum.Enum | str) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def make_converter() -> cattrs.Converter:
    """The one converter between Polar JSON and kavach's Polar values.

    * unknown JSON keys are ignored (Polar adds fields over time);
    * datetimes are parsed leniently into aware UTC (see :func:`parse_datetime`) and
      written back in Polar's ``...Z`` form;
    * a field typed ``SomeEnum | str`` gets the enum member, or the plain string for a
      value the enum does not know (and is written back as that string).
    """
    converter = cattrs.Converter(forbid_extra_keys=False)
    converter.register_structure_hook(datetime, lambda value, _: parse_datetime(value))
    converter.register_unstructure_hook(datetime, format_datetime)
    converter.register_structure_hook_factory(_is_enum_or_str, _structure_enum_or_str)
    converter.register_unstructure_hook_func(_is_enum_or_str, _unstructure_enum_or_str)
    return converter
