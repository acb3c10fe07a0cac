"""The emulator's registrations: in memory, and in a JSON-lines file when given one, so that they
survive a restart of the emulator (tests of crashes need that).

Each line of the file is one stored registration. The invoice and case views are derived from it
(``views.py``), so they survive a restart with it. A last line cut short by a crash in the middle of
a write is skipped when the file is read again (that registration was never answered).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from devkit.emulator.views import case_view, invoice_view

log = logging.getLogger(__name__)

View = Callable[[Mapping[str, Any]], dict[str, Any]]


class DuplicateInvoiceNumber(Exception):
    pass


class RegistrationStore:
    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._by_id: dict[str, dict[str, Any]] = {}
        self._by_invoice: dict[tuple[str, str], str] = {}
        # The invoice and case views are built on first read: most registrations are never read.
        self._invoice_ids: dict[str, str] = {}  # invoice id → registration id
        self._case_ids: dict[str, str] = {}  # case id → registration id
        self._invoices: dict[str, dict[str, Any]] = {}
        self._cases: dict[str, dict[str, Any]] = {}
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        repaired = bool(text) and not text.endswith("\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                document = json.loads(line)
            except json.JSONDecodeError:
                if number != len(lines):
                    raise
                log.warning("skipping the cut-short last line of %s", path)
                lines.pop()
                repaired = True
                break
            self._index(document)
        if repaired:  # appends must start on a line of their own
            path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    def _index(self, document: dict[str, Any]) -> None:
        self._by_id[document["_id"]] = document
        self._by_invoice[(document["creditor"], document["invoice_number"])] = document["_id"]
        self._invoice_ids[document["_invoice"]] = document["_id"]
        self._case_ids[document["_case"]] = document["_id"]

    def add(self, document: dict[str, Any]) -> None:
        key = (document["creditor"], document["invoice_number"])
        if key in self._by_invoice:
            raise DuplicateInvoiceNumber(document["invoice_number"])
        if self._path is not None:
            with self._path.open("a", encoding="utf-8") as file:
                file.write(json.dumps(document, separators=(",", ":"), ensure_ascii=False) + "\n")
        self._index(document)

    def get(self, registration_id: str) -> dict[str, Any] | None:
        return self._by_id.get(registration_id)

    def all(self) -> list[dict[str, Any]]:
        return list(self._by_id.values())

    def contains(self, creditor: str, invoice_number: str) -> bool:
        return (creditor, invoice_number) in self._by_invoice

    def by_invoice(self, creditor: str, invoice_number: str) -> dict[str, Any] | None:
        registration_id = self._by_invoice.get((creditor, invoice_number))
        return None if registration_id is None else self._by_id[registration_id]

    def invoice(self, invoice_id: str) -> dict[str, Any] | None:
        registration_id = self._invoice_ids.get(invoice_id)
        return None if registration_id is None else self._view(self._invoices, invoice_view, registration_id)

    def invoices(self) -> list[dict[str, Any]]:
        return [self._view(self._invoices, invoice_view, id_) for id_ in self._invoice_ids.values()]

    def case(self, case_id: str) -> dict[str, Any] | None:
        registration_id = self._case_ids.get(case_id)
        return None if registration_id is None else self._view(self._cases, case_view, registration_id)

    def cases(self) -> list[dict[str, Any]]:
        return [self._view(self._cases, case_view, id_) for id_ in self._case_ids.values()]

    def _view(self, built: dict[str, dict[str, Any]], build: View, registration_id: str) -> dict[str, Any]:
        """The view of a registration, built on first read and kept."""
        view = built.get(registration_id)
        if view is None:
            view = built[registration_id] = build(self._by_id[registration_id])
        return view

    def clear(self) -> None:
        self._by_id.clear()
        self._by_invoice.clear()
        self._invoice_ids.clear()
        self._case_ids.clear()
        self._invoices.clear()
        self._cases.clear()
        if self._path is not None and self._path.exists():
            self._path.unlink()
