"""The emulator's OpenAPI document: generated from code, committed, served, and complete."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route

from devkit.emulator.app import Emulator
from devkit.emulator.openapi import DOCUMENT_PATH, build_document, main, render
from devkit.emulator.settings import EmulatorSettings
from tests.unit.test_emulator import client_for

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = f"python -m devkit.emulator.openapi {DOCUMENT_PATH}"


def test_the_committed_document_is_what_the_code_generates() -> None:
    committed = (ROOT / DOCUMENT_PATH).read_text(encoding="utf-8")
    assert committed == render(), f"the emulator's OpenAPI document drifted; regenerate it: {REGENERATE}"


def test_the_generator_writes_a_file_or_standard_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path / "doc.json")]) == 0
    assert (tmp_path / "doc.json").read_text(encoding="utf-8") == render()
    assert main([]) == 0
    assert capsys.readouterr().out == render()
    assert main(["a", "b"]) == 2


async def test_the_emulator_serves_the_document() -> None:
    async with client_for(Emulator(EmulatorSettings())) as amili:
        served = await amili.get("/openapi.json")
    assert served.status_code == 200
    assert served.json() == json.loads(render())


def test_every_route_is_documented_and_nothing_else() -> None:
    routes = {
        (route.path, method.lower())
        for route in Emulator(EmulatorSettings()).app().routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    documented = {(path, method) for path, item in build_document()["paths"].items() for method in item}
    assert documented == routes


def test_every_reference_resolves() -> None:
    document = build_document()
    text = json.dumps(document)
    schemas = document["components"]["schemas"]
    for name in {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}:
        assert name in schemas, name


async def test_the_documented_example_is_accepted() -> None:
    operation = build_document()["paths"]["/invoice--registrations"]["post"]
    example = operation["requestBody"]["content"]["application/json"]["example"]
    async with client_for(Emulator(EmulatorSettings())) as amili:
        response = await amili.post(
            "/invoice--registrations", json=example, headers={"x-api-key": "demo-api-key"}
        )
    assert response.status_code == 201, response.text
    assert isinstance(response, httpx.Response)
