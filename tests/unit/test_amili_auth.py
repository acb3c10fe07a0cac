"""Access tokens minted from an api code: JWT contents, exchange, caching and renewal on 401."""

from __future__ import annotations

import itertools
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr

from service.amili.auth import ApiCodeTokenProvider, read_token_answer
from service.amili.client import AmiliClient, ApiCodeCredentials
from service.ports import AmiliMisconfigured, AmiliUnauthorized


def key_pair(algorithm: str) -> tuple[str, str]:
    private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if algorithm.startswith("ES"):
        curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}[algorithm]
        private = ec.generate_private_key(curve)
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return pem, public


class FakeAmiliAuth:
    """Verifies JWTs like Amili would, issues numbered tokens, and can revoke them."""

    def __init__(self, public_key: str, algorithm: str) -> None:
        self.public_key = public_key
        self.algorithm = algorithm
        self.counter = itertools.count(1)
        self.valid: set[str] = set()
        self.exchanges = 0
        self.seen_tokens: list[str] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        presented = request.headers.get("x-api-key", "")
        if request.url.path == "/authenticates/api-code":
            try:
                # Leeway lets tests move the provider's clock forward by hours.
                claims = jwt.decode(presented, self.public_key, algorithms=[self.algorithm], leeway=7200)
            except jwt.PyJWTError:
                return httpx.Response(401, json={"_status": "ERR"})
            assert set(claims) == {"api_code", "exp"}
            assert claims["api_code"] == "code-1"
            self.exchanges += 1
            token = f"token-{next(self.counter)}"
            self.valid.add(token)
            return httpx.Response(200, json={"access_token": token, "expires_in": 3600})
        self.seen_tokens.append(presented)
        if presented not in self.valid:
            return httpx.Response(401, json={"_status": "ERR"})
        return httpx.Response(200, json={"_items": [], "_meta": {"total": 0}})


@pytest.mark.parametrize("algorithm", ["ES256", "ES384", "ES512", "RS256", "RS384", "RS512"])
async def test_tokens_are_exchanged_cached_and_renewed_once_on_401(algorithm: str) -> None:
    private, public = key_pair(algorithm)
    amili = FakeAmiliAuth(public, algorithm)
    credentials = ApiCodeCredentials("code-1", SecretStr(private), algorithm)
    async with AmiliClient(
        "http://amili", credentials, transport=httpx.MockTransport(amili.handle)
    ) as client:
        assert await client.find_registration("c", "1") is None
        assert await client.find_registration("c", "2") is None
        assert amili.exchanges == 1  # cached
        amili.valid.clear()  # Amili revokes the token
        assert await client.find_registration("c", "3") is None
        assert amili.exchanges == 2
        assert amili.seen_tokens == ["token-1", "token-1", "token-1", "token-2"]


async def test_a_refused_jwt_is_unauthorized() -> None:
    private, _ = key_pair("ES256")
    _, other_public = key_pair("ES256")
    amili = FakeAmiliAuth(other_public, "ES256")
    credentials = ApiCodeCredentials("code-1", SecretStr(private), "ES256")
    async with AmiliClient(
        "http://amili", credentials, transport=httpx.MockTransport(amili.handle)
    ) as client:
        with pytest.raises(AmiliUnauthorized) as caught:
            await client.find_registration("c", "1")
    assert "BEGIN" not in str(caught.value)


async def test_no_exchange_at_the_base_url_is_a_configuration_error() -> None:
    private, _ = key_pair("ES256")
    credentials = ApiCodeCredentials("code-1", SecretStr(private), "ES256")
    not_here = httpx.MockTransport(lambda _: httpx.Response(404, json={"_status": "ERR"}))
    async with AmiliClient("http://amili/wrong", credentials, transport=not_here) as client:
        with pytest.raises(AmiliMisconfigured) as caught:
            await client.find_registration("c", "1")
    assert (
        str(caught.value)
        == "GET http://amili/wrong/authenticates/api-code answered 404: check AMILI_BASE_URL"
    )


async def test_a_token_is_renewed_before_its_stated_lifetime_ends() -> None:
    private, public = key_pair("ES256")
    amili = FakeAmiliAuth(public, "ES256")
    now = [time.time()]
    async with httpx.AsyncClient(
        base_url="http://amili", transport=httpx.MockTransport(amili.handle)
    ) as http:
        provider = ApiCodeTokenProvider(
            http=http, api_code="code-1", private_key=SecretStr(private), clock=lambda: now[0]
        )
        first = await provider.token()
        now[0] += 3000
        assert (await provider.token()) == first
        now[0] += 560  # within a minute of the hour the exchange announced
        assert (await provider.token()).get_secret_value() == "token-2"


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (httpx.Response(200, json={"access_token": "a", "expires_in": 60}), ("a", 60.0)),
        (httpx.Response(200, json={"token": "b"}), ("b", None)),
        (httpx.Response(200, json="c"), ("c", None)),
        (httpx.Response(200, text="d"), ("d", None)),
    ],
)
def test_token_answers_in_the_likely_shapes_are_read(
    response: httpx.Response, expected: tuple[str, float | None]
) -> None:
    assert read_token_answer(response) == expected
