"""No private attribute of a library is used by the service (docs/architecture.md), but the ones
listed there, each with its reason.

Checked on the source: every ``name._attribute`` whose object is not ``self`` or ``cls``. A new
reach past a library's public API fails here until it is justified in the document and listed below.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE_DOC = ROOT / "docs" / "architecture.md"

ALLOWED: dict[str, set[str]] = {
    # aiokafka refreshes metadata without pause while the broker is away (aio-libs/aiokafka#1155).
    "service/kafka/pacing.py": {"client._metadata_update", "consumer._client"},
    # The standard library's sub-command collection has no public name to annotate with.
    "service/cli.py": {"argparse._SubParsersAction"},
    "service/operator/__init__.py": {"argparse._SubParsersAction"},
    "service/operator/dead_letters.py": {"argparse._SubParsersAction"},
    "service/operator/invoices.py": {"argparse._SubParsersAction"},
    "service/operator/replay.py": {"argparse._SubParsersAction"},
    "service/operator/results.py": {"argparse._SubParsersAction"},
    "service/operator/validate.py": {"argparse._SubParsersAction"},
    # The service's own class, inside its own module.
    "service/ledger/sqlite.py": {"SqliteLedger._in_transaction"},
}


def reaches_in(source: str) -> set[str]:
    reaches: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        reaches.add(ast.unparse(node))
    return reaches


def private_reaches() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "service").rglob("*.py")):
        reaches = reaches_in(path.read_text(encoding="utf-8"))
        if reaches:
            found[path.relative_to(ROOT).as_posix()] = reaches
    return found


def test_no_private_attribute_of_a_library_is_reached_but_the_documented_ones() -> None:
    assert private_reaches() == ALLOWED


def test_the_architecture_document_names_each_library_reach() -> None:
    document = ARCHITECTURE_DOC.read_text(encoding="utf-8")
    assert "service/kafka/pacing.py" in document
    assert "_metadata_update" in document
    assert "argparse._SubParsersAction" in document


def test_the_check_sees_a_reach_into_a_library_and_not_into_its_own_object() -> None:
    source = "found = await consumer._coordinator.fetch_committed_offsets([self._partition])"
    assert reaches_in(source) == {"consumer._coordinator"}
