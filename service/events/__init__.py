"""Event contracts: CloudEvents envelopes, the inbound invoice-created and the outbound results."""
