"""The emulator's registrations: in memory, and in a JSON-lines file when given one, so that they
survive a restart of the emulator (tests of crashes need that)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class DuplicateInvoiceNumber(Exception):
    pass


class RegistrationStore:
    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._by_id: dict[str, dict[str, Any]] = {}
        self._by_invoice: dict[tuple[str, str], str] = {}
        if path is not None and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    self._index(json.loads(line))

    def _index(self, document: dict[str, Any]) -> None:
        self._by_id[document["_id"]] = document
        self._by_invoice[(document["creditor"], document["invoice_number"])] = document["_id"]

    def add(self, document: dict[str, Any]) -> None:
        key = (document["creditor"], document["invoice_number"])
        if key in self._by_invoice:
            raise DuplicateInvoiceNumber(document["invoice_number"])
        if self._path is not None:
            with self._path.open("a", encoding="utf-8") as file:
                file.write(json.dumps(document, separators=(",", ":")) + "\n")
        self._index(document)

    def get(self, registration_id: str) -> dict[str, Any] | None:
        return self._by_id.get(registration_id)

    def all(self) -> list[dict[str, Any]]:
        return list(self._by_id.values())

    def by_invoice(self, creditor: str, invoice_number: str) -> dict[str, Any] | None:
        registration_id = self._by_invoice.get((creditor, invoice_number))
        return None if registration_id is None else self._by_id[registration_id]

    def clear(self) -> None:
        self._by_id.clear()
        self._by_invoice.clear()
        if self._path is not None and self._path.exists():
            self._path.unlink()


def matches(document: dict[str, Any], where: dict[str, Any]) -> bool:
    """Eve's ``where`` as equality on (dot-notation) fields."""
    for path, expected in where.items():
        value: Any = document
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                return False
            value = value[part]
        if value != expected:
            return False
    return True
