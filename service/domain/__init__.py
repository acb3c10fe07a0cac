"""The core: the canonical invoice, its business rules, outcomes and check digits. No I/O lives
here, and nothing of the service's other packages is imported (see docs/architecture.md)."""
