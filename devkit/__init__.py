"""The development kit of amili-registrar: the tools for running, testing and measuring the service
on one machine, kept out of the product.

- ``emulator/``: the Amili emulator (``amili-registrar emulator``), with its settings.
- ``localkafka/``: a real Kafka broker from Apache Kafka's jars (``amili-registrar kafka``).
- ``produce.py``, ``demo.py``: sending events from a file; the end-to-end demo.
- ``chaos/``: the chaos run (``amili-registrar chaos``), split into plan, run and verdict.
- ``harness.py``: what the chaos run and the benchmarks (``bench/``) share to run the service on one
  machine: the broker, the emulator and the service as processes, the topics, reading them back.
- ``postgres.py``: a scratch PostgreSQL database for one run.
- ``schemas.py``: generating the documents in ``schemas/`` and ``docs/field-mapping.md``.
- ``cli.py``: those commands, registered on ``amili-registrar``'s parser.

Tools may import the service; the service never imports them, except ``service.cli`` looking for
``cli.py`` to register the commands (and saying in one line that they are missing in the image).

Why a distribution of its own: the service's wheel is built from the project's ``pyproject.toml``,
whose package discovery takes ``service`` and nothing else, and the image installs that wheel (its
build context holds only ``service/``); so none of this reaches production. ``devkit/pyproject.toml``
makes the kit a second, small distribution (``amili-registrar-devkit``) that ``make setup``
installs editable beside the service. Being installed, not merely found on the current directory,
matters: the development commands are console commands that run from anywhere, and the chaos run
and the benchmarks start ``python -m service emulator`` as subprocesses.
"""
