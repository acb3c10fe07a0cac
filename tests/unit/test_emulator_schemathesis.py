"""Schemathesis against the emulator, in process: generated requests for every operation of its
OpenAPI document, checking that none is answered by a server error and that every answer keeps to
the document (status code, content type, headers, body schema)."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devkit.emulator.app import Emulator
from devkit.emulator.settings import DEMO_API_KEY, EmulatorSettings

ApiCase = Case[Any]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
FEW_EXAMPLES = settings(
    max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck), print_blob=False
)

# One emulator for the API (with the demo account and creditor, so that valid examples register), and
# another for the admin routes, whose random fault configurations must not reach the API's run.
API = schemathesis.openapi.from_asgi("/openapi.json", Emulator(EmulatorSettings()).app())
ADMIN = schemathesis.openapi.from_asgi("/openapi.json", Emulator(EmulatorSettings()).app())


@API.exclude(tag="admin").parametrize()
@FEW_EXAMPLES
def test_the_api_keeps_to_its_document(case: ApiCase) -> None:
    # The key always goes along, so that the generated requests reach validation (401 has its tests).
    case.headers["x-api-key"] = DEMO_API_KEY
    case.call_and_validate(checks=CHECKS)


@ADMIN.include(tag="admin").parametrize()
@FEW_EXAMPLES
def test_the_admin_routes_keep_to_their_document(case: ApiCase) -> None:
    case.call_and_validate(checks=CHECKS)


# Stateful: a registration, then the registration, invoice and case it names (the document's links).
Workflow = schemathesis.openapi.from_asgi(
    "/openapi.json", Emulator(EmulatorSettings()).app()
).as_state_machine()


class RegistrationsAndWhatTheyCreate(Workflow):  # type: ignore[misc,valid-type]
    def get_call_kwargs(self, case: ApiCase) -> dict[str, Any]:
        return {"headers": {"x-api-key": DEMO_API_KEY}}

    def validate_response(self, response: schemathesis.Response, case: ApiCase, **kwargs: Any) -> None:
        case.validate_response(response, checks=CHECKS)


TestRegistrationsAndWhatTheyCreate = RegistrationsAndWhatTheyCreate.TestCase
TestRegistrationsAndWhatTheyCreate.settings = settings(
    max_examples=5,
    stateful_step_count=4,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
