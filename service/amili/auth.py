"""Where the ``x-api-key`` value comes from: a ready access token, or one minted on demand.

Amili documents ``GET /authenticates/api-code``: a short-lived JWT (claims ``api_code`` and ``exp``,
signed with a key pair registered with Amili) sent in the ``x-api-key`` header is exchanged for an
access token. The body of that answer and the token's lifetime are not documented, so the reader
below accepts the likely shapes and the token is refreshed whenever Amili answers 401.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import jwt
from pydantic import SecretStr

from service.ports import AmiliMisconfigured, AmiliUnauthorized, AmiliUnavailable

EXCHANGE_PATH = "/authenticates/api-code"
JWT_LIFETIME_SECONDS = 600  # "about 10 minutes" per Amili's documentation
SUPPORTED_ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512")
_TOKEN_KEYS = ("access_token", "token", "api_key", "x-api-key", "_token")


class TokenSource(Protocol):
    async def token(self) -> SecretStr:
        """The access token to send now."""

    async def refresh(self, rejected: SecretStr) -> SecretStr | None:
        """A new token after Amili refused ``rejected``; None when there is nothing to renew."""


@dataclass(frozen=True, slots=True)
class StaticToken:
    """An access token given by configuration."""

    value: SecretStr

    async def token(self) -> SecretStr:
        return self.value

    async def refresh(self, rejected: SecretStr) -> SecretStr | None:
        return None


class ApiCodeTokenProvider:
    """Mints the JWT, exchanges it for an access token, caches the token and renews it once when
    Amili refuses it (or shortly before the lifetime it announced runs out)."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        api_code: str,
        private_key: SecretStr,
        algorithm: str = "ES256",
        default_token_lifetime_seconds: float = 3000.0,
        timeout_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if algorithm not in SUPPORTED_ALGORITHMS:
            raise ValueError(
                f"unsupported JWT algorithm {algorithm}; use one of {', '.join(SUPPORTED_ALGORITHMS)}"
            )
        self._http = http
        self._api_code = api_code
        self._private_key = private_key
        self._algorithm = algorithm
        self._default_lifetime = default_token_lifetime_seconds
        self._timeout = timeout_seconds
        self._clock = clock
        self._current: SecretStr | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    def mint_jwt(self) -> str:
        # Only the claims Amili documents; an ``iat`` would be refused by a server whose clock is behind.
        claims = {"api_code": self._api_code, "exp": int(self._clock()) + JWT_LIFETIME_SECONDS}
        try:
            return jwt.encode(claims, self._private_key.get_secret_value(), algorithm=self._algorithm)
        except (ValueError, TypeError, jwt.PyJWTError) as error:
            # A credentials problem: it pauses consumption like a refused key, never an invoice.
            raise AmiliUnauthorized(
                f"the private key cannot sign {self._algorithm} JWTs ({error.__class__.__name__})"
            ) from None

    async def token(self) -> SecretStr:
        async with self._lock:
            # Renew a minute early so that a token never expires on the way.
            if self._current is None or self._clock() >= self._expires_at - 60:
                await self._exchange()
            assert self._current is not None
            return self._current

    async def refresh(self, rejected: SecretStr) -> SecretStr | None:
        async with self._lock:
            # Many calls may see the same 401; only the first renews, the others take its token.
            if self._current is None or self._current.get_secret_value() == rejected.get_secret_value():
                await self._exchange()
            return self._current

    async def _exchange(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._http.get(EXCHANGE_PATH, headers={"x-api-key": self.mint_jwt()})
        except TimeoutError:
            raise AmiliUnavailable("token exchange timed out") from None
        except httpx.HTTPError as error:
            raise AmiliUnavailable(f"token exchange failed: {error.__class__.__name__}") from error
        if response.status_code in (401, 403):
            raise AmiliUnauthorized(f"Amili refused the api code's JWT ({response.status_code})")
        if response.status_code in (404, 405):  # no exchange at this base URL
            url = response.request.url
            where = f"{url.scheme}://{url.netloc.decode()}{url.path}"
            raise AmiliMisconfigured("GET", where, response.status_code)
        if response.status_code != 200:
            unavailable = AmiliUnavailable(f"token exchange answered HTTP {response.status_code}")
            unavailable.status = response.status_code
            raise unavailable
        token, lifetime = read_token_answer(response)
        self._current = SecretStr(token)
        self._expires_at = self._clock() + (lifetime if lifetime is not None else self._default_lifetime)


def read_token_answer(response: httpx.Response) -> tuple[str, float | None]:
    """The token and, when stated, its lifetime in seconds, from the exchange's answer."""
    try:
        body: Any = response.json()
    except ValueError:
        text = response.text.strip()
        if text:
            return text, None
        raise AmiliUnavailable("token exchange answered an empty body") from None
    if isinstance(body, str) and body:
        return body, None
    if isinstance(body, dict):
        for key in _TOKEN_KEYS:
            value = body.get(key)
            if isinstance(value, str) and value:
                lifetime = body.get("expires_in")
                return value, float(lifetime) if isinstance(lifetime, int | float) else None
    raise AmiliUnavailable("token exchange answered no token this client can read")
