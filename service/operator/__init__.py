"""Commands for the people who run the service (day-2 operations): look an invoice up, redrive
dead letters, republish results, reconcile, replay, validate. Each module registers its own
subcommands on the ``amili-registrar`` parser."""

from __future__ import annotations

import argparse

from service.operator import dead_letters, invoices, replay, results, validate
from service.operator.errors import OperatorError

__all__ = ["OperatorError", "register"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for module in (invoices, dead_letters, results, replay, validate):
        module.register(commands)
