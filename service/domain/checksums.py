"""Mod-10 (Luhn) check digits, as used by Swedish OCR references and id numbers."""

from __future__ import annotations


def luhn_check_digit(digits: str) -> int:
    """The check digit that makes ``digits + check`` pass the Luhn test."""
    if not digits.isdigit():
        raise ValueError("only digits can carry a Luhn check digit")
    total = 0
    # Walking from the right, the digit next to the (missing) check digit is doubled first.
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 0:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return (10 - total % 10) % 10


def has_valid_luhn(number: str) -> bool:
    """True when the last digit of ``number`` is the Luhn check digit of the rest."""
    if len(number) < 2 or not number.isdigit():
        return False
    return luhn_check_digit(number[:-1]) == int(number[-1])


def is_valid_ocr(ocr: str) -> bool:
    """A Swedish OCR reference: 2 to 25 digits ending in a mod-10 check digit."""
    return 2 <= len(ocr) <= 25 and has_valid_luhn(ocr)
