"""How operator commands show what they found: a rich table for people, JSON lines for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table


def show(
    rows: Sequence[Mapping[str, Any]],
    *,
    columns: Sequence[str],
    title: str,
    as_json: bool,
) -> None:
    """``rows`` as a table of ``columns`` (people), or each row whole as one JSON line (scripts)."""
    if as_json:
        for row in rows:
            sys.stdout.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if row.get(column) is None else str(row.get(column)) for column in columns))
    Console().print(table)


def progress_console() -> Console:
    """Where progress bars go: stderr, so that ``--json`` output stays clean."""
    return Console(stderr=True)
