"""Personal data and secrets out of log lines: by field for our own lines, by scrubbing for the rest.

Two kinds of log record reach the formatter, and they are redacted differently:

- **Our own lines** (emitted by code of the ``service`` package) carry a constant message and
  structured ``extra`` fields. They are safe by construction: no log call of ours puts an invoice's
  personal values in them. So the message of such a line is left as it is (no pattern masking: an
  invoice number of twelve digits, a date, an OCR number or an offset is shown as logged), and each
  ``extra`` field is judged by its key (``redact_field``): a personal key (``service.ops.personal``)
  or a secret's key is ``[redacted]`` whatever its value; a key known to hold an identifier (invoice
  number, creditor, topic, dates...) is kept as is; any other string (an ``error`` or ``reason``,
  text that came from elsewhere) is scrubbed like third-party text, and so is a message of ours
  that has ``%`` arguments.
- **Everything else** (aiokafka, httpx, httpcore, aiohttp, uvicorn, FastStream, asyncpg; exception
  tracebacks, whoever logged them) is text we did not write and whose fields we cannot know.
  aiokafka at DEBUG logs whole records (``Sending (key=%s value=%s) to %s`` with the record's bytes)
  and the first 100 bytes of every produce and fetch batch (``Request to %s:%d %d: %s``). Two layers:

  1. Raw payloads are dropped, not scrubbed: an argument that is ``bytes`` becomes
     ``[payload N bytes]``, and a bytes literal longer than ``PAYLOAD_LITERAL_MAX`` characters in the
     text (a batch inside a request's repr, a record inside a ``ConsumerRecord``) becomes
     ``b'[payload]'``. A payload can be anything (JSON in any field order, cut at any byte, not JSON
     at all, a producer's field we have never heard of), so no scrubber can be trusted with it; its
     length is what a debugging session needs. Short literals (``b'POST'``, ``b'HTTP/1.1'``) stay,
     scrubbed like the rest.
  2. What is left is scrubbed (``scrub_text``): the value after any personal or secret key written
     as JSON, a Python ``repr`` or ``key=value`` (``"name": "..."``, ``'city': '...'``,
     ``input_value='...'``, ``x-api-key: ...``), e-mail addresses, Swedish personnummer,
     samordningsnummer and organisationsnummer (a date shape, and a valid check digit where the
     shape alone is weak), and phone numbers (a leading ``+``, ``00`` or ``0``). Dates in ISO form,
     OCR numbers, offsets and other long digit runs are not touched: the patterns are anchored on
     what an id or a phone number looks like, not on how many digits it has.

Field redaction of our own lines costs a dictionary look-up per field (the decision per key is
cached), so the "event handled" line, logged once per event at thousands per second, pays no regular
expression at all (formatted in about 10 µs, against 23 µs with the former digit patterns, on a
developer's machine); the scrubber runs only on third-party text, tracebacks and free-text fields,
which are rare at INFO (and rate-limited), and each of its passes is skipped when the text cannot
hold what it looks for. Secrets have no shape: only their keys are recognised;
the API key and tokens are kept out of messages by the code that handles them
(``tests/unit/test_no_secrets.py``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from service.ops.personal import PERSONAL_KEYS, STRING_LIST_ONLY_KEYS, readable_keys

REDACTED = "[redacted]"
PAYLOAD_LITERAL_MAX = 24
"""A bytes literal longer than this (in characters of its repr) is a payload, not a token."""

_SECRET_KEYS = (
    "x-api-key",
    "api_key",
    "api-key",
    "apikey",
    "access_token",
    "refresh_token",
    "token",
    "secret",
    "client_secret",
    "password",
    "passwd",
    "authorization",
    "private_key",
    "cookie",
    "set-cookie",
)
_SECRET_KEY_PART = re.compile(
    r"api[_-]?key|token|secret|passw(?:or)?d|authorization|cookie|private[_-]?key|credential", re.I
)
_PERSONAL_KEY_PART = re.compile(r"e[_-]?mail|phone|mobile|id[_-]?number|personnummer|address", re.I)

READABLE_LOG_KEYS = frozenset(
    {
        "topic",
        "outcome",
        "dead_letter_rule",
        "rule",
        "inbound_event_id",
        "event_id",
        "ocr_number",
        "ocr_number_ocr",
        "operation",
    }
)
"""Keys of our own log fields whose values are identifiers, shown as logged."""
READABLE_KEYS = readable_keys() | READABLE_LOG_KEYS

KEEP, SCRUB, REDACT = 0, 1, 2


@functools.lru_cache(maxsize=4096)
def key_treatment(key: str) -> int:
    """What happens to a log field's value, by its key: ``REDACT`` (personal or secret),
    ``KEEP`` (an identifier) or ``SCRUB`` (free text)."""
    lowered = key.lower()
    if lowered in PERSONAL_KEYS or _SECRET_KEY_PART.search(key) or _PERSONAL_KEY_PART.search(key):
        return REDACT
    if lowered in READABLE_KEYS:
        return KEEP
    return SCRUB


def redact_field(value: Any, key: str) -> Any:
    """A log field's value as it may be written: by its key, then (for dicts and lists) by the keys
    and values inside."""
    treatment = key_treatment(key)
    if treatment == REDACT:
        return REDACTED
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value if treatment == KEEP else scrub_text(value)
    if isinstance(value, Mapping):
        return {str(k): redact_field(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_field(v, key) for v in value]
    text = str(value)
    return text if treatment == KEEP else scrub_text(text)


# Free text ----------------------------------------------------------------------------------------

_KEY_NAMES = frozenset(key.lower() for key in (*PERSONAL_KEYS, *_SECRET_KEYS))
_WORD = re.compile(r"[a-z_][\w-]*")
_VALUE = (
    r"(?P<value>"
    r'\\"(?:(?!\\")[^\n])*(?:\\")?'  # \"...\" (JSON inside a JSON string)
    r'|"(?:[^"\\\n]|\\.)*"?'  # "..." (JSON; a value cut short runs to the end of the line)
    r"|'(?:[^'\\\n]|\\.)*'?"  # '...' (a repr)
    r"|\[(?:[^\[\]{}]|\[[^\[\]{}]*\])*\]"  # a list of scalars
    r"|(?:Bearer|Basic|Token)\s+[^\s,;'\"]+"  # an Authorization header's value
    r"|[^\s,;&<>()\[\]{}'\"]+"  # bare: key=value
    r")"
)
_BYTES = re.compile(r"(?<![\w])b(?P<bq>['\"])(?P<bytes>(?:(?!(?P=bq))[^\\]|\\.)*)(?P=bq)")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_NUMBERS = re.compile(
    r"(?<![\w+-])(?P<id>(?P<century>\d{2})?(?P<six>\d{6})(?P<sep>[-+]?)(?P<four>\d{4}))(?![\w-])"
    r"|(?<![\w+.-])(?P<phone>(?:\+[1-9]|00[1-9]|0[1-9])(?:[ -]?\d){6,12})(?![\w-])"
)
_DATE_LIKE = re.compile(r"\d{2}[-. ]\d{2}[-. ]\d{4}")


@functools.lru_cache(maxsize=256)
def _keyed(keys: frozenset[str]) -> re.Pattern[str]:
    """The value after any of ``keys``: bare or quoted (JSON, repr, or JSON escaped inside a
    string), perhaps at the end of a dotted path (``'customer.address.city': ...``), then ':' or
    '='. Built for the keys a text holds: one alternation of every key costs five times as much."""
    alternation = "|".join(re.escape(key) for key in sorted(keys, key=len, reverse=True))
    return re.compile(
        r"(?<![\w-])(?P<q>\\?[\"']?)(?:[\w\[\]-]+\.)*(?P<key>(?i:"
        + alternation
        + r"))(?P=q)\s*[:=]\s*"
        + _VALUE
    )


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(digits):
        value = int(char) * (2 - index % 2)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def _is_swedish_id(match: re.Match[str]) -> bool:
    century, six, separated = match["century"], match["six"], bool(match["sep"])
    ten = six + match["four"]
    month, day = int(six[2:4]), int(six[4:6])
    person_shaped = 1 <= month <= 12 and (1 <= day <= 31 or 61 <= day <= 91)  # 61..91: samordningsnummer
    if person_shaped and (century is None or century in ("18", "19", "20")):
        # "811218-9876" is unmistakable; a bare run of digits must also carry a valid check digit.
        return separated or _luhn(ten)
    organisation_shaped = month >= 20 and (century is None or century == "16")
    # Written with its hyphen, or as 16NNNNNNNNNN: a bare ten digits is too common a number.
    return organisation_shaped and (separated or century == "16") and _luhn(ten)


def _bytes_literal(match: re.Match[str]) -> str:
    content = match["bytes"]
    if len(content) > PAYLOAD_LITERAL_MAX:
        return "b'[payload]'"
    quote = match["bq"]
    return f"b{quote}{scrub_text(content)}{quote}"


def _keyed_value(match: re.Match[str]) -> str:
    value = match["value"]
    listed_scalars = value.startswith("[") and '"' not in value and "'" not in value
    if listed_scalars and match["key"].lower() in STRING_LIST_ONLY_KEYS:
        return match[0]  # numbers under a name personal only as text (an address's lines)
    head = match[0][: match.start("value") - match.start()]
    if value.startswith('\\"'):
        return f'{head}\\"{REDACTED}\\"'
    if value[:1] in ("'", '"'):
        return f"{head}{value[0]}{REDACTED}{value[0]}"
    return head + REDACTED


def _number(match: re.Match[str]) -> str:
    if match["id"] is not None:
        return REDACTED if _is_swedish_id(match) else match[0]
    return match[0] if _DATE_LIKE.fullmatch(match["phone"]) else REDACTED


def scrub_text(text: str) -> str:
    """``text`` with payloads dropped and personal values masked (see the module's docstring), in
    passes each skipped when the text cannot hold what it looks for."""
    if "b'" in text or 'b"' in text:
        text = _BYTES.sub(_bytes_literal, text)
    keys = _KEY_NAMES.intersection(_WORD.findall(text.lower()))
    if keys:
        text = _keyed(frozenset(keys)).sub(_keyed_value, text)
    if "@" in text:
        text = _EMAIL.sub(REDACTED, text)
    return _NUMBERS.sub(_number, text)


def without_payloads(args: Any) -> Any:
    """A log record's ``args`` with every bytes-like argument replaced by its length."""
    if isinstance(args, tuple):
        if not any(isinstance(arg, bytes | bytearray | memoryview) for arg in args):
            return args
        return tuple(_placeholder(arg) for arg in args)
    if isinstance(args, Mapping):
        return {key: _placeholder(value) for key, value in args.items()}
    return args


def _placeholder(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"[payload {len(value)} bytes]"
    return value
