"""Swedish numbers as Amili checks them: personnummer, samordningsnummer, organisationsnummer, and the
mod-10 (Luhn) check digit that they and OCR numbers carry.

The emulator has its own copy of these rules, written from the public rules and not shared with the
service, so that a mistake in the service's checks is not mirrored by the emulator that tests it.
"""

from __future__ import annotations

import re
from datetime import date

_PERSON = re.compile(r"(\d{2})?(\d{2})(\d{2})(\d{2})[-+]?(\d{4})", re.ASCII)
_COMPANY = re.compile(r"(?:16)?(\d{6})-?(\d{4})", re.ASCII)
_DIGITS = re.compile(r"[0-9]{2,}")


def luhn_check_digit(digits: str) -> int:
    """The digit that makes ``digits + check`` pass the Luhn (mod 10) test."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 0:  # doubled: the rightmost digit sits next to the check digit
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return (10 - total % 10) % 10


def has_valid_luhn(number: str) -> bool:
    return bool(_DIGITS.fullmatch(number)) and luhn_check_digit(number[:-1]) == int(number[-1])


def personnummer_problem(value: str) -> str | None:
    """None for a valid personnummer or samordningsnummer (day + 60), else what is wrong."""
    match = _PERSON.fullmatch(value)
    if not match:
        return "must be YYMMDD-NNNC or YYYYMMDDNNNC"
    century, yy, mm, dd, tail = match.groups()
    day = int(dd) - 60 if int(dd) > 60 else int(dd)
    try:
        date(int((century or "19") + yy), int(mm), day)
    except ValueError:
        return "does not hold a valid date of birth"
    if not has_valid_luhn(yy + mm + dd + tail):
        return "check digit does not match"
    return None


def organisationsnummer_problem(value: str) -> str | None:
    """None for a valid organisationsnummer (10 digits, third digit 2 or more), else what is wrong."""
    match = _COMPANY.fullmatch(value)
    if not match:
        return "must be NNNNNN-NNNN"
    digits = match.group(1) + match.group(2)
    if int(digits[2]) < 2:
        return "third digit must be 2 or more"
    if not has_valid_luhn(digits):
        return "check digit does not match"
    return None
