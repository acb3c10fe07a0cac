"""Structured JSON logs, one object a line, with personal data and secrets redacted
(``service.ops.redaction``: by field for our own lines, payloads dropped and text scrubbed for the rest)."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.ops.redaction import REDACTED, redact_field, scrub_text, without_payloads

__all__ = ["REDACTED", "JsonFormatter", "RateLimitFilter", "configure_logging", "is_own"]

_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_SERVICE_DIRS = tuple(
    {str(Path(__file__).parents[1]) + os.sep, str(Path(__file__).resolve().parents[1]) + os.sep}
)


def is_own(record: logging.LogRecord) -> bool:
    """Whether the record was emitted by the service's own code (not by a library, even one given a
    logger of our namespace, as FastStream is: it is the code that wrote the message that counts)."""
    return record.pathname.startswith(_SERVICE_DIRS)


class JsonFormatter(logging.Formatter):
    """One JSON object a line, redacted as ``service.ops.redaction`` describes: our own lines by
    field, everything else (third-party messages, tracebacks, free-text fields) scrubbed."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.message(record),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = redact_field(value, key)
        if record.exc_info:
            entry["exception"] = scrub_text(self.formatException(record.exc_info))
        return json.dumps(entry, default=str, ensure_ascii=False)

    @staticmethod
    def message(record: logging.LogRecord) -> str:
        """The record's message: ours as written when it is a constant (our messages carry no
        personal data; their variables go in fields), else with payloads dropped and scrubbed."""
        args = record.args
        if not args:
            text = str(record.msg)
            return text if is_own(record) else scrub_text(text)
        return scrub_text(str(record.msg) % without_payloads(args))


# Libraries whose loggers repeat one line per retry while a dependency is down: aiokafka alone
# wrote 833,300 "Unable to update metadata" lines in a four-minute broker outage.
THIRD_PARTY_PREFIXES: tuple[str, ...] = (
    "aiokafka",
    "kafka",
    "asyncpg",
    "aiohttp",
    "httpx",
    "uvicorn.error",
    "faststream",
)

_Key = tuple[str, int, str]


class _KeyState:
    __slots__ = ("passed_at", "suppressed")

    def __init__(self, passed_at: float) -> None:
        self.passed_at = passed_at
        self.suppressed = 0


class RateLimitFilter(logging.Filter):
    """Lets through one record per (logger, level, message template) per window.

    Applies only to loggers named by ``prefixes`` (the logger itself or its children), so the
    service's own ``service.*`` lines are never dropped. The key uses ``record.msg`` before
    formatting, so "Unable to update metadata from %s" is one key whatever its arguments. A key's
    first record passes; later ones pass at most once per ``window`` seconds, and the one that
    passes carries ``suppressed``: how many of that key were dropped since the last one passed.
    Drops still pending when a key goes quiet are reported only if the key comes back (or lost
    if it is evicted meanwhile): reporting them on time would need a timer thread. Nothing is
    hidden by level: a WARNING or ERROR key still shows once per window, which bounds the output
    without blinding anyone.
    """

    def __init__(
        self,
        window: float = 30.0,
        prefixes: Iterable[str] = THIRD_PARTY_PREFIXES,
        max_keys: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if window < 0 or max_keys < 1:
            raise ValueError("window must be >= 0 and max_keys >= 1")
        names = tuple(prefixes)
        self.window = window
        self.max_keys = max_keys
        self._exact = frozenset(names)
        # "kafka." rather than "kafka", so that a logger named "kafkaesque" is not limited.
        self._dotted = tuple(f"{name}." for name in names)
        self._clock = clock
        # Least recently seen first: a key that keeps firing is never the one evicted, so an
        # ongoing flood stays limited even when many other keys come and go.
        self._keys: OrderedDict[_Key, _KeyState] = OrderedDict()
        # Handlers run in whichever thread logged; the lock keeps count and eviction consistent.
        self._lock = threading.Lock()

    def limits(self, name: str) -> bool:
        return name in self._exact or name.startswith(self._dotted)

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if not self.limits(name):
            return True
        msg = record.msg
        # A non-string msg (an exception object, say) would make one key per distinct value;
        # its type keeps the key set small during a flood of varying errors.
        template = msg if isinstance(msg, str) else f"<{type(msg).__qualname__}>"
        key = (name, record.levelno, template)
        now = self._clock()
        with self._lock:
            state = self._keys.get(key)
            if state is None:
                if len(self._keys) >= self.max_keys:
                    self._keys.popitem(last=False)
                self._keys[key] = _KeyState(now)
                return True
            self._keys.move_to_end(key)
            if now - state.passed_at < self.window:
                state.suppressed += 1
                return False
            suppressed, state.suppressed, state.passed_at = state.suppressed, 0, now
        if suppressed:
            record.suppressed = suppressed
        return True


def configure_logging(level: str = "INFO", *, rate_limit_window: float = 30.0) -> None:
    """JSON lines on stderr at ``level``, with third-party repeats rate-limited.

    At DEBUG nothing is limited: whoever asks for DEBUG is chasing a problem and wants every
    line, and DEBUG is not a production level.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if root.level > logging.DEBUG:
        # On the handler, not on a logger: logger filters do not see records propagated from
        # child loggers, handler filters see every record from every logger.
        handler.addFilter(RateLimitFilter(window=rate_limit_window))
