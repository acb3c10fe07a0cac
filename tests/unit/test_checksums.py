from __future__ import annotations

import pytest

from service.domain.checksums import has_valid_luhn, is_valid_ocr, luhn_check_digit
from service.domain.swedish_ids import organisationsnummer_problem, personnummer_problem


@pytest.mark.parametrize(
    "ocr",
    ["20251852687013699044", "20251855102634171529"],  # OCR numbers from Amili's documentation
)
def test_amili_documented_ocr_numbers_pass_the_check(ocr: str) -> None:
    assert is_valid_ocr(ocr)


def test_a_changed_digit_fails_the_check() -> None:
    assert not is_valid_ocr("20251852687013699045")
    assert not is_valid_ocr("1")
    assert not is_valid_ocr("12a4")
    assert not is_valid_ocr("1" * 26)


def test_check_digit_of_known_values() -> None:
    assert luhn_check_digit("811218987") == 6
    assert has_valid_luhn("79927398713")
    with pytest.raises(ValueError, match="digits"):
        luhn_check_digit("12x")


@pytest.mark.parametrize("value", ["811218-9876", "19811218-9876", "198112189876", "8112189876"])
def test_valid_personnummer_forms(value: str) -> None:
    assert personnummer_problem(value) is None


def test_samordningsnummer_day_plus_sixty_is_valid() -> None:
    # 1981-12-18 as samordningsnummer: day 18 + 60 = 78, check digit recomputed.
    body = "811278987"
    number = f"{body[:6]}-{body[6:]}{luhn_check_digit(body)}"
    assert personnummer_problem(number) is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("811218-9877", "check digit does not match"),
        ("811318-9876", "does not hold a valid date of birth"),
        ("81121-89876", "must be YYMMDD-NNNC or YYYYMMDDNNNC"),
    ],
)
def test_invalid_personnummer(value: str, problem: str) -> None:
    assert personnummer_problem(value) == problem


def test_organisationsnummer_rules() -> None:
    assert organisationsnummer_problem("556036-0793") is None
    assert organisationsnummer_problem("5560360793") is None
    assert organisationsnummer_problem("556789-1234") == "check digit does not match"
    assert organisationsnummer_problem("551036-0793") == "third digit must be 2 or more"
    assert organisationsnummer_problem("55603-0793") == "must be NNNNNN-NNNN"
