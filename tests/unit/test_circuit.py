from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from service.circuit import AmiliCircuit, CircuitState
from service.ops.metrics import Metrics, MetricsObserver
from service.ports import AmiliMisconfigured, AmiliRejected, AmiliUnauthorized, AmiliUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state(circuit: AmiliCircuit) -> CircuitState:
    return circuit.state  # read through a call, so the type checker does not narrow it between steps


async def fail(circuit: AmiliCircuit, error: Exception) -> None:
    with pytest.raises(type(error)):
        async with circuit.attempt():
            raise error


async def succeed(circuit: AmiliCircuit) -> None:
    async with circuit.attempt():
        pass


async def test_consecutive_failures_open_the_circuit_and_a_probe_closes_it() -> None:
    clock = Clock()
    circuit = AmiliCircuit(failure_threshold=3, open_seconds=10, clock=clock)
    for _ in range(2):
        await fail(circuit, AmiliUnavailable("503"))
    assert state(circuit) is CircuitState.CLOSED
    await fail(circuit, AmiliUnavailable("503"))
    assert state(circuit) is CircuitState.OPEN
    assert not circuit.accepting

    waiting = asyncio.create_task(succeed(circuit))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # held back while open
    clock.now += 10
    assert state(circuit) is CircuitState.HALF_OPEN
    assert circuit.accepting
    await asyncio.wait_for(waiting, 1)  # it went out as the probe and succeeded
    assert state(circuit) is CircuitState.CLOSED


async def test_a_failed_probe_opens_the_circuit_again() -> None:
    clock = Clock()
    circuit = AmiliCircuit(failure_threshold=1, open_seconds=5, clock=clock)
    await fail(circuit, AmiliUnavailable("503"))
    clock.now += 5
    await fail(circuit, AmiliUnavailable("503"))
    assert state(circuit) is CircuitState.OPEN
    clock.now += 5
    assert state(circuit) is CircuitState.HALF_OPEN


async def test_only_one_probe_goes_out_while_half_open() -> None:
    clock = Clock()
    circuit = AmiliCircuit(failure_threshold=1, open_seconds=5, clock=clock)
    await fail(circuit, AmiliUnavailable("503"))
    clock.now += 5
    release = asyncio.Event()
    entered: list[int] = []

    async def call(number: int) -> None:
        async with circuit.attempt():
            entered.append(number)
            await release.wait()

    tasks = [asyncio.create_task(call(n)) for n in range(3)]
    await asyncio.sleep(0.05)
    assert len(entered) == 1
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 1)
    assert sorted(entered) == [0, 1, 2]


async def test_an_answer_from_amili_counts_as_success() -> None:
    circuit = AmiliCircuit(failure_threshold=2, clock=Clock())
    await fail(circuit, AmiliUnavailable("503"))
    await fail(circuit, AmiliRejected(422, {}))
    await fail(circuit, AmiliUnavailable("503"))
    assert state(circuit) is CircuitState.CLOSED


async def test_refused_credentials_hold_calls_back_and_are_retried_periodically() -> None:
    clock = Clock()
    changes: list[tuple[CircuitState, bool]] = []
    circuit = AmiliCircuit(
        unauthorized_retry_seconds=30,
        clock=clock,
        on_change=lambda c: changes.append((c.state, c.authorized)),
    )
    await fail(circuit, AmiliUnauthorized("401"))
    assert not circuit.authorized
    assert state(circuit) is CircuitState.OPEN
    clock.now += 30
    await fail(circuit, AmiliUnauthorized("401"))
    assert state(circuit) is CircuitState.OPEN
    clock.now += 30
    await succeed(circuit)
    assert circuit.authorized
    assert state(circuit) is CircuitState.CLOSED
    assert changes[0] == (CircuitState.OPEN, False)
    assert changes[-1] == (CircuitState.CLOSED, True)


async def test_a_cancelled_probe_lets_another_probe_go() -> None:
    clock = Clock()
    circuit = AmiliCircuit(failure_threshold=1, open_seconds=1, clock=clock)
    await fail(circuit, AmiliUnavailable("503"))
    clock.now += 1
    with pytest.raises(asyncio.CancelledError):
        async with circuit.attempt():
            raise asyncio.CancelledError
    assert state(circuit) is CircuitState.HALF_OPEN


# Every transition is reported (on_change, the gauge, the log), the lazy one included ----------------

MISCONFIGURED = AmiliMisconfigured("POST", "http://amili/wrong/invoice--registrations", 404)


def gauges(metrics: Metrics) -> tuple[float | None, float | None, float | None]:
    read = metrics.registry.get_sample_value
    return (
        read("registrar_circuit_state"),
        read("registrar_amili_auth_ok"),
        read("registrar_amili_config_ok"),
    )


def shown(metrics: Metrics, circuit: AmiliCircuit) -> None:
    """The gauges say what the circuit says (read the gauges first: reading ``state`` reports)."""
    state, auth_ok, config_ok = gauges(metrics)
    assert state == int(circuit.state)
    assert auth_ok == (1 if circuit.authorized else 0)
    assert config_ok == (1 if circuit.config_error is None else 0)


async def test_the_gauge_follows_every_transition_without_anybody_reading_the_state() -> None:
    metrics = Metrics()
    observer = MetricsObserver(metrics)
    circuit = AmiliCircuit(
        failure_threshold=2,
        open_seconds=0.05,
        unauthorized_retry_seconds=0.05,
        on_change=observer.circuit_changed,
    )
    assert gauges(metrics) == (0, 1, 1)
    await fail(circuit, AmiliUnavailable("503"))
    assert gauges(metrics)[0] == CircuitState.CLOSED
    await fail(circuit, AmiliUnavailable("503"))
    assert gauges(metrics)[0] == CircuitState.OPEN  # closed -> open
    await asyncio.sleep(0.1)  # nobody calls, nobody reads: the open period ends all the same
    assert gauges(metrics)[0] == CircuitState.HALF_OPEN  # open -> half-open (lazy)
    release = asyncio.Event()

    async def probe() -> None:
        async with circuit.attempt():
            await release.wait()
            raise AmiliUnavailable("503")

    probing = asyncio.create_task(probe())
    await asyncio.sleep(0.01)
    assert gauges(metrics)[0] == CircuitState.OPEN  # the probe is out: held back again
    release.set()
    with pytest.raises(AmiliUnavailable):
        await probing
    assert gauges(metrics)[0] == CircuitState.OPEN  # half-open -> open (the probe failed)
    await asyncio.sleep(0.1)
    assert gauges(metrics)[0] == CircuitState.HALF_OPEN
    await succeed(circuit)
    assert gauges(metrics) == (0, 1, 1)  # half-open -> closed

    await fail(circuit, AmiliUnauthorized("401"))
    assert gauges(metrics) == (CircuitState.OPEN, 0, 1)
    await asyncio.sleep(0.1)  # unauthorized_retry_seconds, lazily as well
    assert gauges(metrics) == (CircuitState.HALF_OPEN, 0, 1)
    await fail(circuit, MISCONFIGURED)
    assert gauges(metrics) == (CircuitState.OPEN, 0, 0)
    await asyncio.sleep(0.1)
    assert gauges(metrics) == (CircuitState.HALF_OPEN, 0, 0)
    await succeed(circuit)
    assert gauges(metrics) == (0, 1, 1)


async def test_the_gauge_equals_the_state_at_every_step_of_a_scripted_history() -> None:
    clock = Clock()
    metrics = Metrics()
    circuit = AmiliCircuit(
        failure_threshold=2,
        open_seconds=5,
        unauthorized_retry_seconds=30,
        misconfigured_retry_seconds=60,
        clock=clock,
        on_change=MetricsObserver(metrics).circuit_changed,
    )
    steps: list[Callable[[], Awaitable[None]]] = [
        lambda: fail(circuit, AmiliUnavailable("503")),
        lambda: fail(circuit, AmiliUnavailable("503")),
        lambda: succeed(circuit),  # the probe, once the clock has moved
        lambda: fail(circuit, AmiliUnauthorized("401")),
        lambda: fail(circuit, AmiliUnauthorized("401")),
        lambda: fail(circuit, MISCONFIGURED),
        lambda: fail(circuit, MISCONFIGURED),
        lambda: fail(circuit, AmiliUnavailable("503")),
        lambda: fail(circuit, AmiliRejected(422, {})),  # an answer: every hold is over
        lambda: fail(circuit, MISCONFIGURED),
        lambda: succeed(circuit),
    ]
    for step in steps:
        if circuit.state is not CircuitState.CLOSED:
            clock.now += 60  # whatever held it, the probe may go now
            assert circuit.accepting
            shown(metrics, circuit)
        await step()
        shown(metrics, circuit)
    assert state(circuit) is CircuitState.CLOSED


async def test_a_configuration_error_holds_every_call_until_a_probe_gets_an_answer() -> None:
    clock = Clock()
    changes: list[tuple[CircuitState, str | None]] = []
    circuit = AmiliCircuit(
        misconfigured_retry_seconds=20,
        clock=clock,
        on_change=lambda c: changes.append((c.state, c.config_error)),
    )
    await fail(circuit, MISCONFIGURED)  # the first one: no threshold
    assert (
        circuit.config_error
        == "POST http://amili/wrong/invoice--registrations answered 404: check AMILI_BASE_URL"
    )
    assert circuit.authorized
    assert state(circuit) is CircuitState.OPEN
    assert not circuit.accepting
    waiting = asyncio.create_task(succeed(circuit))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    clock.now += 20
    await asyncio.wait_for(waiting, 1)  # re-probed after misconfigured_retry_seconds, and it worked
    assert circuit.config_error is None
    assert state(circuit) is CircuitState.CLOSED
    assert changes[0] == (CircuitState.OPEN, MISCONFIGURED.args[0])
    assert changes[-1] == (CircuitState.CLOSED, None)


def records(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "service.circuit" and r.levelno >= level]


async def test_an_outage_logs_its_opening_one_probe_cycle_and_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="service.circuit")
    clock = Clock()
    circuit = AmiliCircuit(failure_threshold=5, open_seconds=5, clock=clock)
    for _ in range(5):
        await fail(circuit, AmiliUnavailable("Amili answered HTTP 503"))
    for _ in range(1000):  # a long outage: a failed probe every 5 s
        clock.now += 5
        await fail(circuit, AmiliUnavailable("Amili answered HTTP 503"))
    clock.now += 5
    await succeed(circuit)
    lines = [(r.levelname, r.getMessage()) for r in records(caplog)]
    assert lines == [
        ("WARNING", "amili circuit open: calls held back, consumption paused"),
        ("INFO", "amili circuit half-open: the next call probes Amili"),
        ("INFO", "amili circuit open again: the probe failed"),
        ("WARNING", "amili circuit closed: calls go out, consumption resumes"),
    ]
    opened, *_, closed = records(caplog)
    assert (
        opened.__dict__["reason"]
        == "5 failures in a row, the last: AmiliUnavailable: Amili answered HTTP 503"
    )
    assert closed.__dict__["probes_failed"] == 1000
    assert closed.__dict__["open_seconds"] == 5005
    assert len(records(caplog, logging.DEBUG)) > 2000  # the rest of the cycle, at DEBUG


async def test_refused_credentials_and_a_configuration_error_are_logged_once_per_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="service.circuit")
    clock = Clock()
    circuit = AmiliCircuit(unauthorized_retry_seconds=30, clock=clock)
    for _ in range(100):
        await fail(circuit, AmiliUnauthorized("POST http://amili/invoice--registrations: refused (401)"))
        clock.now += 30
    await succeed(circuit)
    for _ in range(100):
        await fail(circuit, MISCONFIGURED)
        clock.now += 30
    await succeed(circuit)
    lines = [(r.levelname, r.getMessage()) for r in records(caplog)]
    assert lines == [
        ("ERROR", "amili refused the credentials: calls held back, consumption paused"),
        ("WARNING", "amili accepts the credentials again"),
        ("WARNING", "amili circuit closed: calls go out, consumption resumes"),
        ("ERROR", "amili configuration error: calls held back, consumption paused"),
        ("WARNING", "amili configuration error resolved"),
        ("WARNING", "amili circuit closed: calls go out, consumption resumes"),
    ]
    refused, _, _, misconfigured, _, _ = records(caplog)
    assert "(401)" in refused.__dict__["reason"]
    assert misconfigured.__dict__["detail"] == MISCONFIGURED.args[0]
