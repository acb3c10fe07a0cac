"""amili-registrar: registers invoice-created events as invoices at Visma Amili, exactly once."""

__version__ = "0.1.0"
