"""The console entry point: ``amili-registrar`` (or ``python -m service``).

The service's commands (``run``) and the operators' (``service.operator``) are here. The development
commands (``emulator``, ``kafka``, ``produce``, ``demo``, ``chaos``) belong to ``devkit``, installed
beside the service in a checkout and absent from the image: where it is missing, each of them says
so in one line (exit code 2) instead of argparse's "invalid choice".
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pydantic import ValidationError

from service.config import Settings, settings_problems
from service.operator.errors import OperatorError

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send


def _watched(app: ASGIApp, failures: list[BaseException], stop: Callable[[], None]) -> ASGIApp:
    """``app``, with the failure of its life cycle kept for the caller to report in one line.

    FastStream hands uvicorn the traceback of a start that failed, which uvicorn logs; and a
    failure after the ASGI start-up (FastStream starts its brokers after it: the wait for the
    cluster, the topic check) ends FastStream while uvicorn goes on serving. Here either ends in
    ``failures`` and, after the start-up, ``stop`` ends the server too."""

    async def watched(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        started = False
        held: list[Message] = []

        async def holding_failures(message: Message) -> None:
            nonlocal started
            # A failure message is held until it is known why: FastStream sends it, then raises.
            if message["type"] in ("lifespan.startup.failed", "lifespan.shutdown.failed"):
                held.append(message)
                return
            started = started or message["type"] == "lifespan.startup.complete"
            await send(message)

        try:
            await app(scope, receive, holding_failures)
        except Exception as error:
            failures.append(error)
            if started:
                stop()
            else:
                await send({"type": "lifespan.startup.failed", "message": ""})
            return
        for message in held:
            await send(message)

    return watched


def _failure_line(error: BaseException) -> str:
    from service.kafka.startup import describe_error

    # Our own failures say what to do in their text; anything else is named by its class too.
    if error.__class__.__module__.startswith("service."):
        return str(error)
    return describe_error(error)


def _run(_: argparse.Namespace) -> int:
    import uvicorn

    from service.bootstrap import ConfigurationError, build_registrar
    from service.kafka.startup import StartupRefused
    from service.ops.logging import configure_logging

    settings = Settings()
    configure_logging(settings.log_level)
    try:
        registrar = build_registrar(settings)
    except (ConfigurationError, ValueError) as error:
        print(f"amili-registrar: {error}", file=sys.stderr)
        return 2
    # uvicorn serves /metrics, /healthz and /readyz and runs the service in its lifespan; on
    # SIGTERM the lifespan drains events in flight (SHUTDOWN_GRACE_SECONDS) before exiting.
    failures: list[BaseException] = []
    server: uvicorn.Server | None = None

    def stop() -> None:
        if server is not None:
            server.should_exit = True

    config = uvicorn.Config(
        _watched(registrar.app, failures, stop),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit:  # uvicorn's way out of a failed start (or a port it could not bind)
        if not failures:
            raise
    if failures:
        failure = failures[0]
        logging.getLogger("service.cli").debug("the service could not go on", exc_info=failure)
        print(f"amili-registrar: {_failure_line(failure)}", file=sys.stderr)
        return 2 if isinstance(failure, (ConfigurationError, StartupRefused)) else 1
    if not server.started:  # the port was taken, say: uvicorn has said why
        return 1
    return 0


DEVELOPMENT_COMMANDS = ("emulator", "kafka", "produce", "demo", "chaos")


def _development_command_missing(args: argparse.Namespace) -> int:
    print(
        f"amili-registrar {args.command}: a development command, not installed in this image "
        "(it comes with devkit, which make setup installs in a checkout)",
        file=sys.stderr,
    )
    return 2


def _register_development_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The development commands from ``devkit`` when it is installed; else, under the same names,
    placeholders that take any arguments and say in one line that the command is not here. The
    placeholders have no help, so ``--help`` lists only what the image can run."""
    try:
        from devkit.cli import register
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] != "devkit":
            raise  # devkit is there but broken: that is worth its traceback
        for name in DEVELOPMENT_COMMANDS:
            placeholder = commands.add_parser(name, add_help=False)
            placeholder.set_defaults(handler=_development_command_missing, takes_any_arguments=True)
        return
    register(commands)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amili-registrar",
        description="Registers invoice-created events at Visma Amili and publishes each outcome.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="run the service", description="Run the service; configured by env vars (README)."
    )
    run.set_defaults(handler=_run)

    _register_development_commands(commands)

    from service.operator import register as register_operator_commands

    register_operator_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # As parse_args, but a placeholder of a missing development command takes any arguments.
    args, unrecognized = parser.parse_known_args(argv)
    if unrecognized and not getattr(args, "takes_any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unrecognized)}")
    try:
        return int(args.handler(args))
    except ValidationError as error:
        print(f"amili-registrar: invalid configuration: {settings_problems(error)}", file=sys.stderr)
        return 2
    except OperatorError as error:
        print(f"amili-registrar {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
