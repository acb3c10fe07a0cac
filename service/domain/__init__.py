"""The core: canonical invoice, the transform, outcomes and checksums. No I/O lives here."""
