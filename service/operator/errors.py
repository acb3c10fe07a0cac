"""The operator commands' one-line failure."""

from __future__ import annotations


class OperatorError(Exception):
    """What went wrong, in one line for the operator (printed, exit code 1)."""
