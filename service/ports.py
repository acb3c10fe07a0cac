"""The small interfaces the core talks through; adapters in amili/ and kafka/ implement them."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Protocol

from service.amili.models import InvoiceRegistrationReceipt, InvoiceRegistrationRequest
from service.events.cloudevents import CloudEvent
from service.events.record import InboundRecord


class AmiliError(Exception):
    """Base of what the Amili port raises. Messages never carry credentials. ``status`` is the
    HTTP status Amili answered, when an answer caused it."""

    status: int | None = None


class AmiliRejected(AmiliError):
    """Amili refused the payload (400/422): retrying the same payload will not help."""

    def __init__(self, status: int, issues: Mapping[str, str]) -> None:
        super().__init__(f"Amili refused the registration ({status}): {len(issues)} issue(s)")
        self.status = status
        self.issues = dict(issues)


class AmiliDuplicate(AmiliError):
    """Amili already holds a registration for this creditor and invoice number."""


class AmiliUnauthorized(AmiliError):
    """The credentials were refused (401/403): a problem of ours, not of the invoice."""


class AmiliMisconfigured(AmiliError):
    """The endpoint is not where the service calls it (404/405 on the registrations path, or a
    400 without validation issues, which our valid JSON never earns): AMILI_BASE_URL or the way to
    Amili is wrong. A problem of ours, not of the invoice: calls are held back until it is fixed."""

    def __init__(self, method: str, url: str, status: int) -> None:
        super().__init__(f"{method} {url} answered {status}: check AMILI_BASE_URL")
        self.method = method
        self.url = url
        self.status = status


class AmiliUnavailable(AmiliError):
    """A transient failure: 429, 5xx, timeout or connection error. ``outcome_unknown`` is set when
    the request may have reached Amili (it may have stored the registration)."""

    def __init__(self, reason: str, *, retry_after: float | None = None, outcome_unknown: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.outcome_unknown = outcome_unknown


class AmiliRateLimited(AmiliUnavailable):
    """429: Amili asks us to slow down; ``retry_after`` says for how long when it is known."""


class AmiliOutcomeUnknown(AmiliUnavailable):
    """The request may have reached Amili (timeout after sending, connection reset, 5xx on a POST):
    look the registration up before sending it again."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, outcome_unknown=True)


class AmiliPort(Protocol):
    async def register(self, request: InvoiceRegistrationRequest) -> InvoiceRegistrationReceipt: ...

    async def find_registration(
        self, creditor: str, invoice_number: str
    ) -> InvoiceRegistrationReceipt | None: ...


Committed = Awaitable[bool]
"""Whether the transaction carrying a publication committed (False: it was dropped, and its event
is processed again)."""


class ResultPublisher(Protocol):
    async def publish_result(self, event: CloudEvent, key: bytes) -> Committed | None:
        """Publish a result: ``None`` once the broker has it; with transactions, at once, with
        what tells whether the transaction that carries it committed."""


class DeadLetterPublisher(Protocol):
    async def dead_letter(self, record: InboundRecord, rule: str, reason: str) -> None: ...
