"""The transactional producers in a process of their own (``KAFKA_TRANSACTION_PRODUCERS=process``).

Why: a commit is a chain of requests (AddPartitionsToTxn, produce, AddOffsetsToTxn,
TxnOffsetCommit, EndTxn) that aiokafka's sender sends one after another, each step waiting for
turns of the event loop; about 36 turns a commit (``python -m bench.transaction_lag``: 8-14 ms on a
free loop, 74 ms when each turn takes 2 ms, 181 ms at 5 ms). The service's loop is busy with the
events in flight, so its commits took 90-170 ms under load, longer than the interval between them.
Here the chain runs on a loop that does nothing else; the service's loop spends one exchange on a
socket per transaction. A thread instead was measured worse (the two loops hand the interpreter
back and forth at every answer; ``docs/performance.md``).

The protocol: frames of a 4-byte length and a pickled tuple on a socket pair, the child's end
passed as a file descriptor (stdin, stdout and stderr stay the service's: the child logs as the
service does). The parent sends ``(request, operation, handle, argument)``; the child answers
``(request, error)`` with ``error`` None or the exception raised, so that the partition's
transactions see the very errors aiokafka raises (fenced, refused, broker away). A handle is one
producer: ``start`` makes it for a transactional id, ``transaction`` commits records and offsets,
``stop`` stops it (cancelling whatever it was doing).

Life cycle: the child is started on the first producer and ends when its socket closes: when the
service stops, and when the service dies, whatever killed it (a transaction it had begun is aborted
by the partition's next owner, as after any crash). Should the child die, every call waiting on it
fails as a broker error would, its producers are replaced by the partitions' usual recovery (which
starts another child), and the exit is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError, ProducerFenced
from aiokafka.structs import OffsetAndMetadata

from service.config import Settings
from service.kafka.link import REFUSED_RECORD_ERRORS
from service.kafka.transactions import (
    FENCED_ERRORS,
    LocalTransactionalProducer,
    Output,
    TransactionalProducer,
)

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!I")
CHILD_MODULE = "service.kafka.producer_process"


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    return pickle.loads(await reader.readexactly(length))  # our own child's frames


def _frame(message: object) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


def _portable(error: BaseException) -> BaseException:
    """The error as the parent can receive it: itself if it pickles, else one of the same kind
    (fenced, refused, aiokafka's state assertion, a broker error) that names it."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        text = f"in the producers' process: {error!r}"
        alike: BaseException
        if isinstance(error, FENCED_ERRORS):
            alike = ProducerFenced()
        elif isinstance(error, REFUSED_RECORD_ERRORS):
            alike = MessageSizeTooLargeError(text)
        elif isinstance(error, AssertionError):
            alike = AssertionError(text)
        else:
            alike = KafkaConnectionError(text)
        return alike
    return error


class ProducerProcess:
    """The service's side: starts the child, sends it requests, and hands out its producers."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[BaseException | None]] = {}
        self._requests = 0
        self._handles = 0
        self._generation = 0
        self._starting = asyncio.Lock()
        self._closed = False

    def producer(self, transactional_id: str) -> TransactionalProducer:
        self._handles += 1
        return RemoteTransactionalProducer(self, self._handles, transactional_id)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.returncode is None else None

    async def call(self, operation: str, handle: int, argument: object, generation: int | None) -> int:
        """Send a request and wait for its answer; return the child's generation it went to.
        A request for a producer of an earlier child (``generation``) fails at once."""
        if self._closed:
            raise KafkaConnectionError("the producers' process is closed")
        await self._started()
        if generation is not None and generation != self._generation:
            raise KafkaConnectionError("the producers' process was replaced")
        writer = self._writer
        assert writer is not None
        self._requests += 1
        request = self._requests
        answer: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self._pending[request] = answer
        try:
            writer.write(_frame((request, operation, handle, argument)))
            error = await answer
        finally:
            self._pending.pop(request, None)
        if error is not None:
            raise error
        return self._generation

    async def _started(self) -> None:
        async with self._starting:
            if self._process is not None and self._process.returncode is None and self._writer is not None:
                return
            ours, theirs = socket.socketpair()
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    CHILD_MODULE,
                    str(theirs.fileno()),
                    pass_fds=(theirs.fileno(),),
                    stdin=asyncio.subprocess.DEVNULL,
                )
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            reader, writer = await asyncio.open_unix_connection(sock=ours)
            # The settings (secrets included) go over the socket, never on a command line.
            writer.write(_frame(self._settings))
            self._process, self._writer = process, writer
            self._generation += 1
            self._reader_task = asyncio.create_task(self._answers(reader, process), name="producer-process")
            log.info("transactional producers' process started", extra={"pid": process.pid})

    async def _answers(self, reader: asyncio.StreamReader, process: asyncio.subprocess.Process) -> None:
        try:
            while True:
                request, error = await _read_frame(reader)
                answer = self._pending.get(request)
                if answer is not None and not answer.done():
                    answer.set_result(error)
        except (asyncio.IncompleteReadError, ConnectionError, EOFError):
            pass
        finally:
            if self._process is process:
                self._writer = None
            lost = KafkaConnectionError("the producers' process exited")
            for answer in self._pending.values():
                if not answer.done():
                    answer.set_result(lost)
            if not self._closed:
                code = await _exit_code(process)
                log.error(
                    "the transactional producers' process exited; its producers are replaced",
                    extra={"pid": process.pid, "exit_code": code},
                )

    async def close(self) -> None:
        """Stop the child: its socket closes, it stops its producers and exits (killed after 5 s)."""
        self._closed = True
        writer, self._writer = self._writer, None
        process = self._process
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        if process is not None:
            await _exit_code(process)
        if self._reader_task is not None:
            await asyncio.wait({self._reader_task}, timeout=1.0)


async def _exit_code(process: asyncio.subprocess.Process) -> int | None:
    try:
        async with asyncio.timeout(5.0):
            return await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        return await process.wait()


class RemoteTransactionalProducer:
    """One producer in the child, as a partition's transactions use it."""

    def __init__(self, process: ProducerProcess, handle: int, transactional_id: str) -> None:
        self._process = process
        self._handle = handle
        self._transactional_id = transactional_id
        self._generation: int | None = None

    async def start(self) -> None:
        self._generation = await self._process.call("start", self._handle, self._transactional_id, None)

    async def transaction(
        self, records: list[Output], offsets: dict[TopicPartition, OffsetAndMetadata], group_id: str
    ) -> None:
        if self._generation is None:
            raise KafkaConnectionError("the producer was not started")
        await self._process.call("transaction", self._handle, (records, offsets, group_id), self._generation)

    async def stop(self) -> None:
        if self._generation is None:
            return
        generation, self._generation = self._generation, None
        # A child gone or stuck: its producers go with it (the next owner's initialisation aborts
        # what they left open).
        with contextlib.suppress(KafkaConnectionError, TimeoutError):
            async with asyncio.timeout(2.0):
                await self._process.call("stop", self._handle, None, generation)


# The child -------------------------------------------------------------------------------------


class _Child:
    def __init__(
        self, make: Callable[[str], LocalTransactionalProducer], writer: asyncio.StreamWriter
    ) -> None:
        self._make = make
        self._writer = writer
        self._producers: dict[int, LocalTransactionalProducer] = {}
        self._busy: dict[int, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def handle(self, request: int, operation: str, handle: int, argument: Any) -> None:
        if operation == "stop":
            running = self._busy.pop(handle, None)
            if running is not None:
                running.cancel()
            task = asyncio.create_task(self._answer(request, self._stop(handle, running)))
        else:
            task = asyncio.create_task(self._answer(request, self._run(operation, handle, argument)))
            self._busy[handle] = task
            task.add_done_callback(lambda done: self._idle(handle, done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _idle(self, handle: int, task: asyncio.Task[None]) -> None:
        if self._busy.get(handle) is task:
            del self._busy[handle]

    async def _answer(self, request: int, work: Any) -> None:
        error: BaseException | None = None
        try:
            await work
        except asyncio.CancelledError:
            error = KafkaConnectionError("stopped")
        except Exception as failure:
            error = _portable(failure)
        self._writer.write(_frame((request, error)))

    async def _run(self, operation: str, handle: int, argument: Any) -> None:
        if operation == "start":
            made = self._make(argument)
            self._producers[handle] = made
            await made.start()
        elif operation == "transaction":
            producer = self._producers.get(handle)
            if producer is None:
                raise KafkaConnectionError("no such producer")
            records, offsets, group_id = argument
            await producer.transaction(records, offsets, group_id)
        else:
            raise ValueError(f"unknown operation {operation!r}")

    async def _stop(self, handle: int, running: asyncio.Task[None] | None) -> None:
        if running is not None:
            await asyncio.wait({running})
        stopped = self._producers.pop(handle, None)
        if stopped is not None:
            await stopped.stop()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        stopping = (producer.stop() for producer in self._producers.values())
        await asyncio.gather(*stopping, return_exceptions=True)


async def serve(descriptor: int) -> None:
    """The child: serve requests on the socket until it closes."""
    from service.kafka.clients import client_security, result_producer
    from service.kafka.pacing import paced_transactional_producer
    from service.ops.logging import configure_logging

    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=descriptor))
    settings: Settings = await _read_frame(reader)
    configure_logging(settings.log_level)
    paced = paced_transactional_producer(result_producer(settings, client_security(settings)))
    child = _Child(lambda transactional_id: LocalTransactionalProducer(paced(transactional_id)), writer)
    try:
        while True:
            try:
                request, operation, handle, argument = await _read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return  # the service stopped or died
            child.handle(request, operation, handle, argument)
    finally:
        await child.close()


def main() -> None:
    # Ctrl-C reaches the whole process group; the service decides when its producers stop (it
    # commits what is finished first) by closing the socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(BrokenPipeError):
        asyncio.run(serve(int(sys.argv[1])))
    os._exit(0)


if __name__ == "__main__":
    main()
