"""Swedish personnummer, samordningsnummer and organisationsnummer: format and check digit."""

from __future__ import annotations

import re
from datetime import date

from service.domain.checksums import has_valid_luhn

_PERSON = re.compile(r"([0-9]{2})?([0-9]{2})([0-9]{2})([0-9]{2})[-+]?([0-9]{4})", re.ASCII)
_COMPANY = re.compile(r"(16)?([0-9]{6})-?([0-9]{4})", re.ASCII)


def personnummer_problem(value: str) -> str | None:
    """None when ``value`` is a valid personnummer or samordningsnummer, else what is wrong."""
    match = _PERSON.fullmatch(value)
    if not match:
        return "must be YYMMDD-NNNC or YYYYMMDDNNNC"
    century, yy, mm, dd, tail = match.groups()
    day = int(dd)
    if day > 60:  # samordningsnummer: the day is given plus 60
        day -= 60
    year = int((century or "19") + yy)
    try:
        date(year, int(mm), day)
    except ValueError:
        return "does not hold a valid date of birth"
    if not has_valid_luhn(yy + mm + dd + tail):
        return "check digit does not match"
    return None


def organisationsnummer_problem(value: str) -> str | None:
    """None when ``value`` is a valid organisationsnummer, else what is wrong."""
    match = _COMPANY.fullmatch(value)
    if not match:
        return "must be NNNNNN-NNNN"
    digits = match.group(2) + match.group(3)
    if int(digits[2]) < 2:
        return "third digit must be 2 or more"
    if not has_valid_luhn(digits):
        return "check digit does not match"
    return None
