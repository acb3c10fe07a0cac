"""Fixtures of the ops tests: the tools' paths (see tests/ops/support.py)."""

from __future__ import annotations

import pytest

from tests.ops.support import find_tool


@pytest.fixture(scope="session")
def helm() -> str:
    return find_tool("helm")


@pytest.fixture(scope="session")
def promtool() -> str:
    return find_tool("promtool")


@pytest.fixture(scope="session")
def hadolint() -> str:
    return find_tool("hadolint")
