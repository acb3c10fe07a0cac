"""Amili's wire conventions: RFC 1123 GMT dates, ObjectId strings, money as JSON numbers."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Annotated, Literal

from pydantic import BeforeValidator, PlainSerializer, StringConstraints

OBJECT_ID_PATTERN = r"^[0-9a-f]{24}$"
RFC1123_PATTERN = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} GMT$"
)

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def format_rfc1123(value: datetime | date) -> str:
    """``Wed, 21 Jan 2024 10:11:22 GMT``; a plain date is taken as midnight UTC."""
    # Formatted by hand: English names whatever the locale, and several dates go out with every
    # invoice (``email.utils.format_datetime`` costs ten times as much).
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day, tzinfo=UTC)
    elif value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    else:
        value = value.astimezone(UTC)
    return (
        f"{_DAYS[value.weekday()]}, {value.day:02d} {_MONTHS[value.month - 1]} {value.year:04d} "
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d} GMT"
    )


def parse_rfc1123(value: object) -> object:
    """Accept an RFC 1123 GMT string (or an aware datetime); leave anything else to pydantic."""
    if isinstance(value, str):
        if not RFC1123_PATTERN.match(value):
            raise ValueError(f"not an RFC 1123 GMT date: {value!r}")
        return parsedate_to_datetime(value)
    return value


def money_to_json(value: Decimal) -> int | float:
    """Money goes out as a JSON number: an integer when it has no fraction."""
    return int(value) if value == value.to_integral_value() else float(value)


Rfc1123Date = Annotated[
    datetime,
    BeforeValidator(parse_rfc1123),
    PlainSerializer(format_rfc1123, return_type=str),
]
ObjectId = Annotated[str, StringConstraints(pattern=OBJECT_ID_PATTERN)]
Money = Annotated[Decimal, PlainSerializer(money_to_json, return_type=float)]
VatPercent = Literal["0%", "6%", "12%", "25%"]
