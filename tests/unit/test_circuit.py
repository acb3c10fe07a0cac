from __future__ import annotations

import asyncio

import pytest

from service.circuit import AmiliCircuit, CircuitState
from service.ports import AmiliRejected, AmiliUnauthorized, AmiliUnavailable


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
