"""Under ``CI=true`` nothing may be skipped: what a test needs and lacks fails it there."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def skip_or_fail(reason: str, *, ci_reason: str | None = None) -> NoReturn:
    """Skip the calling test for ``reason``; under CI, fail it (with ``ci_reason`` if given)."""
    if under_ci():
        pytest.fail(ci_reason or reason, pytrace=False)
    pytest.skip(reason)
