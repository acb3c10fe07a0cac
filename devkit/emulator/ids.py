"""Ids and numbers as Amili makes them: ObjectIds, RFC 1123 stamps, OCR numbers with a check digit."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from devkit.emulator.swedish import luhn_check_digit
from devkit.emulator.validation import format_rfc1123

_counter = itertools.count(int.from_bytes(os.urandom(3), "big"))
_process_random = os.urandom(5)


def object_id() -> str:
    """A MongoDB ObjectId: 4 bytes of seconds, 5 random bytes per process, a 3-byte counter."""
    seconds = int(time.time()).to_bytes(4, "big")
    counter = (next(_counter) % 0xFFFFFF).to_bytes(3, "big")
    return (seconds + _process_random + counter).hex()


def ocr_number() -> str:
    """20 digits: the year, 15 random digits and a mod-10 check digit, like Amili's examples."""
    body = f"{datetime.now(UTC).year}{secrets.randbelow(10**15):015d}"
    return body + str(luhn_check_digit(body))


def rfc1123_now() -> str:
    return format_rfc1123(datetime.now(UTC).replace(microsecond=0))


def etag(document: Mapping[str, Any]) -> str:
    return hashlib.sha1(json.dumps(document, sort_keys=True).encode(), usedforsecurity=False).hexdigest()
