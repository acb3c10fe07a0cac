"""The durable ledger of invoices: one record per (creditor, invoice_number)."""

from service.ledger.base import Claim, ClaimStatus, Ledger, LedgerEntry, LedgerError

__all__ = ["Claim", "ClaimStatus", "Ledger", "LedgerEntry", "LedgerError"]
