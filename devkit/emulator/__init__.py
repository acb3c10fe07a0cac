"""An emulator of Visma Amili's invoice registration API, for tests and the local demo.

Part of the development kit: never imported by the service, never in its image. One concern per
module:

- ``settings.py``: ``AMILI_EMULATOR_*`` and the demo key, account and creditor it knows.
- ``app.py``: the Starlette app, its routes and Eve-shaped errors (the ``Emulator``).
- ``validation.py``: the registration's rules (the reference's field table and the notes).
- ``swedish.py``: personnummer, organisationsnummer and Luhn, independent of the service's copy.
- ``store.py``: registrations in memory and in a JSON-lines file; ``views.py``: the invoice and case
  each registration creates; ``query.py``: ``where``, ``sort``, ``projection`` and pages.
- ``auth.py``: ``x-api-key`` and the api code JWT exchange; ``faults.py``: fault injection.
- ``openapi.py``: the OpenAPI document (``schemas/amili-emulator.openapi.json``); ``server.py``:
  serving on loopback from inside an event loop.
"""
