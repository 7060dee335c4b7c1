"""Schema validation for the fake Polar's request bodies and queries (private).

Errors are collected as pydantic-style entries (``type``, ``loc``, ``msg``, ``input``,
sometimes ``ctx``), which is what Polar's ``RequestValidationError`` answers carry.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Collection
from typing import Any
from urllib.parse import urlsplit

from kavach.testing._fake_objects import JSON

Loc = list[str | int]

# email-validator's special-use names, and the domains IANA publishes a null MX for.
_SPECIAL_USE_TLDS = frozenset({"arpa", "invalid", "local", "localhost", "onion", "test"})
_NULL_MX_DOMAINS = ("example.com", "example.net", "example.org")
_METADATA_MAX_KEYS = 50
_METADATA_KEY_MAX = 40
_METADATA_VALUE_MAX = 500


def entry(type_: str, loc: Loc, msg: str, value: Any, ctx: JSON | None = None) -> JSON:
    """One pydantic-style error entry."""
    item: JSON = {"type": type_, "loc": loc, "msg": msg, "input": value}
    if ctx is not None:
        item["ctx"] = ctx
    return item


def literal_message(allowed: Collection[str]) -> str:
    """Pydantic's message for a value outside a ``Literal``/enum."""
    quoted = [f"'{a}'" for a in allowed]
    return "Input should be " + (
        quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    )


def parse_uuid(value: Any, loc: Loc, errors: list[JSON]) -> str | None:
    """The canonical UUID string, or ``None`` after recording an error."""
    if not isinstance(value, str):
        errors.append(
            entry("uuid_type", loc, "UUID input should be a string, bytes or UUID object", value)
        )
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        errors.append(
            entry(
                "uuid_parsing",
                loc,
                "Input should be a valid UUID, invalid character or length",
                value,
                {"error": "invalid UUID"},
            )
        )
        return None


def email_problem(address: str, *, check_domains: bool) -> str | None:
    """Why ``address`` fails Polar's ``EmailStrDNS`` check, or ``None`` when it passes.

    Beyond syntax, Polar checks deliverability: special-use domains (``.test``,
    ``.localhost``...) and ``example.com/net/org`` (null MX) are refused.
    """
    local, at, domain = address.rpartition("@")
    if not at or not local:
        return "An email address must have an @-sign."
    domain = domain.lower().rstrip(".")
    if "." not in domain or any(not label for label in domain.split(".")) or " " in address:
        return "The part after the @-sign is not valid. It should have a period."
    if not check_domains:
        return None
    tld = domain.rsplit(".", 1)[-1]
    if tld in _SPECIAL_USE_TLDS:
        return (
            "The part after the @-sign is a special-use or reserved name "
            "that cannot be used with email."
        )
    if tld == "example" or any(
        domain == d or domain.endswith("." + d) for d in _NULL_MX_DOMAINS
    ):
        return f"The domain name {domain} does not accept email."
    return None


class BodyReader:
    """Reads optional fields of a JSON object body, recording errors as it goes."""

    def __init__(self, body: JSON, *, check_email_domains: bool = True) -> None:
        self.body = body
        self.errors: list[JSON] = []
        self.check_email_domains = check_email_domains

    def _get(self, name: str, aliases: tuple[str, ...] = ()) -> tuple[str, Any]:
        for key in (name, *aliases):
            if key in self.body:
                return key, self.body[key]
        return name, None

    def string(self, name: str, *aliases: str) -> str | None:
        """An optional string (``aliases`` are other accepted names)."""
        key, value = self._get(name, aliases)
        if value is None or isinstance(value, str):
            return value
        self.errors.append(entry("string_type", ["body", key], "Input should be a valid string",
                                 value))
        return None

    def boolean(self, name: str, default: bool) -> bool:
        """An optional boolean with a default."""
        value = self.body.get(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        self.errors.append(entry("bool_type", ["body", name], "Input should be a valid boolean",
                                 value))
        return default

    def integer(
        self, name: str, *, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        """An optional integer within ``minimum`` and ``maximum`` (inclusive)."""
        value = self.body.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.errors.append(entry("int_type", ["body", name], "Input should be a valid integer",
                                     value))
            return None
        if minimum is not None and value < minimum:
            self.errors.append(
                entry("greater_than_equal", ["body", name],
                      f"Input should be greater than or equal to {minimum}", value,
                      {"ge": minimum})
            )
            return None
        if maximum is not None and value > maximum:
            self.errors.append(
                entry("less_than_equal", ["body", name],
                      f"Input should be less than or equal to {maximum}", value,
                      {"le": maximum})
            )
            return None
        return value

    def uuid(self, name: str) -> str | None:
        """An optional UUID."""
        value = self.body.get(name)
        return None if value is None else parse_uuid(value, ["body", name], self.errors)

    def choice(self, name: str, allowed: Collection[str]) -> str | None:
        """An optional value from ``allowed``."""
        value = self.body.get(name)
        if value is None or value in allowed:
            return value
        self.errors.append(
            entry("literal_error", ["body", name], literal_message(allowed), value,
                  {"expected": ", ".join(f"'{a}'" for a in allowed)})
        )
        return None

    def url(self, name: str) -> str | None:
        """An optional http(s) URL."""
        value = self.string(name)
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            self.errors.append(entry("url_scheme", ["body", name],
                                     "URL scheme should be 'http' or 'https'", value,
                                     {"expected_schemes": "'http' or 'https'"}))
            return None
        if not parts.netloc:
            self.errors.append(entry("url_parsing", ["body", name],
                                     "Input should be a valid URL, empty host", value,
                                     {"error": "empty host"}))
            return None
        return value

    def email(self, name: str) -> str | None:
        """An optional email, checked like Polar's ``EmailStrDNS``."""
        value = self.string(name)
        if value is None:
            return None
        problem = email_problem(value, check_domains=self.check_email_domains)
        if problem is None:
            return value
        self.errors.append(
            entry("value_error", ["body", name], f"value is not a valid email address: {problem}",
                  value, {"reason": problem})
        )
        return None

    def mapping(self, name: str) -> JSON:
        """An optional object (default ``{}``)."""
        value = self.body.get(name)
        if value is None:
            return {}
        if isinstance(value, dict):
            return value
        self.errors.append(entry("dict_type", ["body", name], "Input should be a valid dictionary",
                                 value))
        return {}

    def metadata(self, name: str) -> JSON:
        """Metadata: at most 50 keys of 1-40 chars; values str (1-500), int, float or bool."""
        value = self.mapping(name)
        if len(value) > _METADATA_MAX_KEYS:
            self.errors.append(
                entry("too_long", ["body", name],
                      f"Dictionary should have at most {_METADATA_MAX_KEYS} items after "
                      f"validation, not {len(value)}", value,
                      {"field_type": "Dictionary", "max_length": _METADATA_MAX_KEYS,
                       "actual_length": len(value)})
            )
        for key, item in value.items():
            loc: Loc = ["body", name, key]
            if not 1 <= len(key) <= _METADATA_KEY_MAX:
                self.errors.append(
                    entry("string_too_long" if key else "string_too_short", [*loc, "[key]"],
                          f"String should have between 1 and {_METADATA_KEY_MAX} characters",
                          key)
                )
            if isinstance(item, str):
                if not 1 <= len(item) <= _METADATA_VALUE_MAX:
                    self.errors.append(
                        entry("string_too_long" if item else "string_too_short", loc,
                              f"String should have between 1 and {_METADATA_VALUE_MAX} "
                              "characters", item)
                    )
            elif isinstance(item, float) and not math.isfinite(item):
                self.errors.append(entry("finite_number", loc, "Input should be a finite number",
                                         item))
            elif not isinstance(item, bool | int | float):
                self.errors.append(
                    entry("string_type", loc, "Input should be a valid string", item)
                )
        return value

    def forbid_extra(self, allowed: Collection[str]) -> None:
        """``extra="forbid"``: every key outside ``allowed`` is an error."""
        for key, value in self.body.items():
            if key not in allowed:
                self.errors.append(
                    entry("extra_forbidden", ["body", key], "Extra inputs are not permitted",
                          value)
                )


class QueryReader:
    """Reads query parameters (repeatable ones as lists), recording errors."""

    def __init__(self, query: dict[str, list[str]]) -> None:
        self.query = query
        self.errors: list[JSON] = []

    def page_and_limit(self) -> tuple[int, int]:
        """``page`` (>= 1, default 1) and ``limit`` (>= 1, default 10, clamped to 100)."""
        page = self._positive("page", 1)
        limit = self._positive("limit", 10)
        return page, min(limit, 100)

    def _positive(self, name: str, default: int) -> int:
        values = self.query.get(name)
        if not values:
            return default
        raw = values[-1]
        try:
            number = int(raw)
        except ValueError:
            self.errors.append(
                entry("int_parsing", ["query", name],
                      "Input should be a valid integer, unable to parse string as an integer",
                      raw)
            )
            return default
        if number < 1:
            self.errors.append(entry("greater_than", ["query", name],
                                     "Input should be greater than 0", raw, {"gt": 0}))
            return default
        return number

    def last(self, name: str) -> str | None:
        """The last value of a single-valued parameter."""
        values = self.query.get(name)
        return values[-1] if values else None

    def strings(self, name: str) -> list[str] | None:
        """A repeatable string filter (``None`` when absent)."""
        return self.query.get(name) or None

    def uuids(self, name: str) -> list[str] | None:
        """A repeatable UUID filter."""
        values = self.query.get(name)
        if not values:
            return None
        parsed = []
        for index, value in enumerate(values):
            loc: Loc = ["query", name, index] if len(values) > 1 else ["query", name]
            parsed.append(parse_uuid(value, loc, self.errors))
        return [p for p in parsed if p is not None]

    def choices(self, name: str, allowed: Collection[str]) -> list[str] | None:
        """A repeatable filter restricted to ``allowed`` values."""
        values = self.query.get(name)
        if not values:
            return None
        for index, value in enumerate(values):
            if value not in allowed:
                self.errors.append(
                    entry("enum", ["query", name, index], literal_message(allowed), value,
                          {"expected": ", ".join(f"'{a}'" for a in allowed)})
                )
        return values

    def boolean(self, name: str) -> bool | None:
        """An optional boolean (``true``/``false``/``1``/``0``...)."""
        values = self.query.get(name)
        if not values:
            return None
        raw = values[-1].lower()
        if raw in ("true", "1", "yes", "on", "t", "y"):
            return True
        if raw in ("false", "0", "no", "off", "f", "n"):
            return False
        self.errors.append(
            entry("bool_parsing", ["query", name],
                  "Input should be a valid boolean, unable to interpret input", values[-1])
        )
        return None

    def metadata(self) -> dict[str, list[str]]:
        """``metadata[key]=value`` filters."""
        return {
            key[len("metadata["):-1]: values
            for key, values in self.query.items()
            if key.startswith("metadata[") and key.endswith("]")
        }

    def sorting(self, allowed: Collection[str], default: str) -> list[tuple[str, bool]]:
        """``sorting`` criteria as ``(field, descending)``; ``-field`` sorts descending."""
        values = self.query.get("sorting") or [default]
        criteria: list[tuple[str, bool]] = []
        options = [*allowed, *(f"-{a}" for a in allowed)]
        for index, value in enumerate(values):
            if value.lstrip("-") not in allowed:
                self.errors.append(
                    entry("enum", ["query", "sorting", index], literal_message(options), value)
                )
                continue
            criteria.append((value.lstrip("-"), value.startswith("-")))
        return criteria
