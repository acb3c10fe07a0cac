"""The x-api-key check and the exchange of an api code's JWT for an access token."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr

from devkit.emulator.app import Emulator
from devkit.emulator.settings import EmulatorSettings
from service.amili.auth import ApiCodeTokenProvider
from tests.unit.test_emulator import client_for, request

EXCHANGE = "/authenticates/api-code"
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def private_key(algorithm: str) -> PrivateKey:
    curves = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}
    if algorithm in curves:
        return ec.generate_private_key(curves[algorithm])
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def private_pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def mint(
    key: PrivateKey, algorithm: str, *, api_code: str = "code-1", exp_in: float = 600, **claims: Any
) -> str:
    now = int(time.time())
    return jwt.encode({"api_code": api_code, "exp": now + exp_in, **claims}, key, algorithm=algorithm)


def tampered(token: str) -> str:
    """The token with its claims swapped for others of the same api code, the signature kept."""
    header, _, signature = token.split(".")
    claims = jwt.encode({"api_code": "code-1", "exp": int(time.time()) + 10**6}, "s" * 32).split(".")[1]
    return f"{header}.{claims}.{signature}"


EC_KEY = private_key("ES256")
RSA_KEY = private_key("RS256")


def emulator(clock: Clock | None = None, **settings: Any) -> Emulator:
    configured = EmulatorSettings(
        api_code_keys={"code-1": public_pem(EC_KEY), "code-2": public_pem(RSA_KEY)},
        access_token_lifetime_seconds=3600,
        **settings,
    )
    return Emulator(configured, clock=clock or Clock())


async def exchange(amili: httpx.AsyncClient, token: str) -> httpx.Response:
    return await amili.get(EXCHANGE, headers={"x-api-key": token})


@pytest.mark.parametrize("algorithm", ["ES256", "ES384", "ES512", "RS256", "RS384", "RS512"])
async def test_a_jwt_signed_with_the_registered_key_buys_an_access_token(algorithm: str) -> None:
    key = (
        EC_KEY if algorithm == "ES256" else RSA_KEY if algorithm.startswith("RS") else private_key(algorithm)
    )
    amili_settings = EmulatorSettings(
        api_code_keys={"code-1": public_pem(key)}, access_token_lifetime_seconds=900
    )
    async with client_for(Emulator(amili_settings)) as amili:
        answer = await exchange(amili, mint(key, algorithm))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body == {"_status": "OK", "access_token": body["access_token"], "expires_in": 900}
        token_headers = {"x-api-key": body["access_token"]}
        created = await amili.post("/invoice--registrations", json=request(), headers=token_headers)
        assert created.status_code == 201


async def test_an_access_token_expires() -> None:
    clock = Clock()
    amili_emulator = emulator(clock)
    async with client_for(amili_emulator) as amili:
        token = (await exchange(amili, mint(EC_KEY, "ES256"))).json()["access_token"]
        headers = {"x-api-key": token}
        clock.now += 3599
        assert (await amili.get("/invoice--registrations", headers=headers)).status_code == 200
        clock.now += 1
        refused = await amili.get("/invoice--registrations", headers=headers)
        assert refused.status_code == 401
        assert refused.json()["_error"] == {"code": 401, "message": "Please provide proper credentials"}
        assert (await amili.get("/_admin/tokens")).json() == {"active": 0}


async def test_issued_tokens_can_be_revoked_by_the_admin() -> None:
    async with client_for(emulator()) as amili:
        token = (await exchange(amili, mint(RSA_KEY, "RS256", api_code="code-2"))).json()["access_token"]
        assert (await amili.get("/_admin/tokens")).json() == {"active": 1}
        assert (await amili.delete("/_admin/tokens")).status_code == 204
        assert (await amili.get("/invoices", headers={"x-api-key": token})).status_code == 401


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (lambda: "", "Please provide proper credentials"),
        (lambda: "not-a-jwt", "The JWT cannot be read"),
        (lambda: mint(EC_KEY, "ES256", exp_in=-1), "The JWT has expired"),
        (lambda: mint(EC_KEY, "ES256", nbf=int(time.time()) + 60), "The JWT is not valid yet"),
        (lambda: mint(EC_KEY, "ES256", api_code="unknown"), "The JWT's api_code is not registered"),
        (lambda: mint(private_key("ES256"), "ES256"), "The JWT's signature or claims are not valid"),
        (lambda: mint(RSA_KEY, "RS256"), "The JWT is not signed with an algorithm of the api code's key"),
        (
            lambda: jwt.encode({"api_code": "code-1"}, EC_KEY, algorithm="ES256"),
            "The JWT's signature or claims are not valid",
        ),  # no exp
        (
            lambda: jwt.encode({"api_code": "code-1", "exp": 1}, "s" * 32, algorithm="HS256"),
            "The JWT is not signed with an algorithm of the api code's key",
        ),
        (lambda: tampered(mint(EC_KEY, "ES256")), "The JWT's signature or claims are not valid"),
    ],
)
async def test_a_bad_jwt_is_401(token: Any, message: str) -> None:
    async with client_for(emulator()) as amili:
        answer = await exchange(amili, token())
    assert answer.status_code == 401
    assert answer.json() == {"_status": "ERR", "_error": {"code": 401, "message": message}}


async def test_a_jwt_is_not_an_api_key() -> None:
    async with client_for(emulator()) as amili:
        answer = await amili.get("/invoices", headers={"x-api-key": mint(EC_KEY, "ES256")})
    assert answer.status_code == 401


def test_keys_come_from_pem_files_or_text_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pem_file = tmp_path / "code-1.pem"
    pem_file.write_text(public_pem(EC_KEY), encoding="ascii")
    monkeypatch.setenv(
        "AMILI_EMULATOR_API_CODE_KEYS",
        __import__("json").dumps({"code-1": str(pem_file), "code-2": public_pem(RSA_KEY)}),
    )
    monkeypatch.setenv("AMILI_EMULATOR_ACCESS_TOKEN_LIFETIME_SECONDS", "60")
    settings = EmulatorSettings()
    assert settings.access_token_lifetime_seconds == 60
    amili = Emulator(settings)
    assert amili.auth.exchange(mint(EC_KEY, "ES256")).expires_in == 60
    assert amili.auth.exchange(mint(RSA_KEY, "RS512", api_code="code-2")).access_token


def test_an_unreadable_key_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'code-1'"):
        Emulator(EmulatorSettings(api_code_keys={"code-1": str(tmp_path / "missing.pem")}))
    with pytest.raises(ValueError, match="'code-1'"):
        Emulator(EmulatorSettings(api_code_keys={"code-1": "-----BEGIN PUBLIC KEY-----\nnope\n"}))


async def test_the_services_token_provider_works_against_the_emulator() -> None:
    amili_emulator = emulator()
    async with client_for(amili_emulator) as http:
        provider = ApiCodeTokenProvider(
            http=http, api_code="code-1", private_key=SecretStr(private_pem(EC_KEY)), algorithm="ES256"
        )
        token = await provider.token()
        response = await http.get("/invoice--registrations", headers={"x-api-key": token.get_secret_value()})
        assert response.status_code == 200
        amili_emulator.auth.revoke_all()
        renewed = await provider.refresh(token)
        assert renewed is not None
        assert renewed.get_secret_value() != token.get_secret_value()
        assert amili_emulator.auth.accepts(renewed.get_secret_value())
