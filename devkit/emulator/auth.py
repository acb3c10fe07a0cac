"""Who may call the emulator: the ``x-api-key`` header, and the exchange of an api code's JWT for an
access token (``GET /authenticates/api-code``).

Accepted ``x-api-key`` values are the configured static keys (``api_keys``) and the access tokens this
emulator issued that have not expired.

The exchange, as Amili documents it: the client signs a short-lived JWT (claims ``api_code`` and
``exp``) with a key pair whose public half is registered for that api code (here: ``api_code_keys``,
PEM text or a PEM file per api code; an EC key of P-256/P-384/P-521 for ES256/ES384/ES512, an RSA
key for RS256/RS384/RS512) and sends it in the ``x-api-key`` header. A valid, unexpired JWT is
answered 200 with

    {"_status": "OK", "access_token": "<opaque>", "expires_in": <seconds>}

[open: Amili does not document the body nor the lifetime; ``access_token_lifetime_seconds``, 3600 by
default, sets it]. A missing, malformed, badly signed or expired JWT, or one for an unknown api code,
is answered 401 in Eve's shape. Issued tokens live in memory: a restarted emulator has forgotten
them, as a client must expect of any token (it exchanges again after a 401).

Who a caller is, for the rate limit (``client_of``): a static key is its own client, named by a
digest of it; an access token is its api code's, and so is a JWT sent to the exchange (the api code
it names, unverified); anything else (no key, an unknown one) is one client, ``unknown``.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_RSA_ALGORITHMS = ("RS256", "RS384", "RS512")


class AuthError(Exception):
    """Why a JWT was refused (the message goes into the 401's ``_error``)."""


@dataclass(frozen=True)
class RegisteredKey:
    key: PublicKey
    algorithms: tuple[str, ...]


def load_public_key(text_or_path: str) -> RegisteredKey:
    """A public key (or a certificate holding one) from PEM text or from the path of a PEM file."""
    text = text_or_path if "-----BEGIN" in text_or_path else Path(text_or_path).read_text(encoding="ascii")
    data = text.encode("ascii")
    key: Any
    if "-----BEGIN CERTIFICATE-----" in text:
        key = x509.load_pem_x509_certificate(data).public_key()
    else:
        key = load_pem_public_key(data)
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = _EC_ALGORITHMS.get(key.curve.name)
        if algorithm is None:
            raise ValueError(f"unsupported elliptic curve {key.curve.name}")
        return RegisteredKey(key, (algorithm,))
    if isinstance(key, rsa.RSAPublicKey):
        return RegisteredKey(key, _RSA_ALGORITHMS)
    raise ValueError("the public key must be an EC (P-256/384/521) or RSA key")


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int

    def body(self) -> dict[str, Any]:
        return {"_status": "OK", "access_token": self.access_token, "expires_in": self.expires_in}


@dataclass(frozen=True)
class _Token:
    expires_at: float
    api_code: str


def key_digest(api_key: str) -> str:
    """A name for the client of a key that does not give the key away."""
    return "key:" + hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:16]


class Authenticator:
    def __init__(
        self,
        api_keys: list[str],
        api_code_keys: Mapping[str, str],
        token_lifetime_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._static = frozenset(api_keys)
        self._lifetime = token_lifetime_seconds
        self._clock = clock
        self._tokens: dict[str, _Token] = {}  # access token -> when it expires, whose it is
        self._keys: dict[str, RegisteredKey] = {}
        for api_code, source in api_code_keys.items():
            try:
                self._keys[api_code] = load_public_key(source)
            except (OSError, ValueError) as error:
                problem = f"the public key of api code {api_code!r} cannot be read: {error}"
                raise ValueError(problem) from error

    def accepts(self, api_key: str) -> bool:
        if api_key in self._static:
            return True
        issued = self._tokens.get(api_key)
        return issued is not None and self._clock() < issued.expires_at

    def client_of(self, api_key: str) -> str:
        """Who sends requests with this ``x-api-key``, as a name that does not give the key away."""
        if api_key in self._static:
            return key_digest(api_key)
        issued = self._tokens.get(api_key)
        if issued is not None:
            return f"api_code:{issued.api_code}"
        try:
            api_code = jwt.decode(api_key, options={"verify_signature": False}).get("api_code")
        except jwt.PyJWTError:
            api_code = None
        return f"api_code:{api_code}" if isinstance(api_code, str) else "unknown"

    def exchange(self, token: str) -> IssuedToken:
        """An access token for a valid JWT of a registered api code; AuthError otherwise."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as error:
            raise AuthError("The JWT cannot be read") from error
        api_code = unverified.get("api_code")
        if not isinstance(api_code, str) or (registered := self._keys.get(api_code)) is None:
            raise AuthError("The JWT's api_code is not registered")
        if header.get("alg") not in registered.algorithms:
            raise AuthError("The JWT is not signed with an algorithm of the api code's key")
        try:
            claims = jwt.decode(
                token,
                registered.key,
                algorithms=list(registered.algorithms),
                options={
                    "require": ["exp", "api_code"],
                    "verify_exp": False,  # checked below, against this emulator's clock
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError as error:
            raise AuthError("The JWT's signature or claims are not valid") from error
        now = self._clock()
        expires, not_before = _number(claims.get("exp")), _number(claims.get("nbf", now))
        if expires is None or not_before is None:
            raise AuthError("The JWT's exp and nbf must be numbers")
        if expires <= now:
            raise AuthError("The JWT has expired")
        if not_before > now:
            raise AuthError("The JWT is not valid yet")
        return self._issue(now, api_code)

    def _issue(self, now: float, api_code: str) -> IssuedToken:
        self._tokens = {token: issued for token, issued in self._tokens.items() if issued.expires_at > now}
        access_token = secrets.token_urlsafe(32)
        self._tokens[access_token] = _Token(now + self._lifetime, api_code)
        return IssuedToken(access_token, self._lifetime)

    def active_tokens(self) -> int:
        now = self._clock()
        return sum(issued.expires_at > now for issued in self._tokens.values())

    def revoke_all(self) -> None:
        self._tokens.clear()


def _number(value: object) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None
