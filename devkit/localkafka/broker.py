"""Run a real single-node Apache Kafka broker (KRaft) from the jars Apache publishes on Maven Central.

No Docker and no Kafka distribution are needed, only ``java`` (17+) and ``mvn``:

* :func:`ensure_jars` resolves ``org.apache.kafka:kafka_2.13:<version>`` plus a logging backend
  into ``<cache_dir>/<version>/libs`` once (a ``.complete`` marker makes later calls free).
* :class:`LocalKafka` formats a fresh storage dir, writes ``server.properties`` and the log
  config into ``<cache_dir>/run/<name>/``, starts ``java ... kafka.Kafka`` detached from the
  calling process and waits until the broker port accepts TCP connections.

Every failure is raised as :class:`LocalKafkaError` with a one-line message.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devkit.localkafka.pom import SCALA_BINARY_VERSION, render_pom, uses_log4j2

DEFAULT_KAFKA_VERSION = "3.9.2"
"""Apache Kafka version used unless told otherwise (3.9.1 is a known-good fallback)."""

VERSION_ENV = "LOCAL_KAFKA_VERSION"
HOME_ENV = "LOCAL_KAFKA_HOME"
HOST = "127.0.0.1"

DEFAULT_JVM_OPTS: tuple[str, ...] = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
_TOOL_JVM_OPTS: tuple[str, ...] = (
    "-Xms64m",
    "-Xmx256m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
)

_COMPLETE_MARKER = ".complete"
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+(?:[.-][A-Za-z0-9.-]+)?$")
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_MAX_MESSAGE = 400


class LocalKafkaError(Exception):
    """A local broker could not be fetched, started or stopped; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


# --------------------------------------------------------------------------- helpers


def _one_line(text: str, limit: int = _MAX_MESSAGE) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _require_tool(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise LocalKafkaError(f"{tool} not found on PATH: {hint}")
    return path


def require_java() -> str:
    """Absolute path of ``java``, or a one-line :class:`LocalKafkaError`."""
    return _require_tool("java", "install a JDK 17+")


def require_mvn() -> str:
    """Absolute path of ``mvn``, or a one-line :class:`LocalKafkaError`."""
    return _require_tool("mvn", "install Maven")


def default_version() -> str:
    """``$LOCAL_KAFKA_VERSION`` if set and not empty, else :data:`DEFAULT_KAFKA_VERSION`."""
    return os.environ.get(VERSION_ENV, "").strip() or DEFAULT_KAFKA_VERSION


def _check_version(version: str) -> str:
    version = version.strip()
    if not _VERSION_RE.match(version):
        raise LocalKafkaError(f"not an Apache Kafka version: {version!r} (expected e.g. 3.9.2)")
    return version


def project_root() -> Path:
    """The checkout the tools run in: the nearest directory above the ``devkit`` package that holds
    ``pyproject.toml``, else the current directory. The search starts above ``devkit/``, whose own
    ``pyproject.toml`` (the development distribution) is not the project's."""
    devkit_dir = Path(__file__).resolve().parents[1]
    for parent in devkit_dir.parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return Path.cwd().resolve()


def default_cache_dir() -> Path:
    """Where jars (per version) and run dirs live: ``$LOCAL_KAFKA_HOME`` if set, else
    ``<project root>/.kafka``."""
    env = os.environ.get(HOME_ENV, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    return project_root() / ".kafka"


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (22 characters),
    never starting with ``-`` (the storage tool would read it as an option)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode("ascii").rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all sockets held open together while choosing)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL_RANGE = (32768, 60999)  # Linux's default
LOWEST_CHOSEN_PORT = 10000
_PORT_ATTEMPTS = 200


def ephemeral_port_range(path: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's range of ephemeral (automatically assigned source) ports, from ``path``; Linux's
    default 32768-60999 when it cannot be read."""
    try:
        low, high = (int(part) for part in path.read_text().split()[:2])
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL_RANGE
    if not 0 < low <= high <= 65535:
        return DEFAULT_EPHEMERAL_RANGE
    return low, high


def stable_free_ports(
    count: int, *, ephemeral: tuple[int, int] | None = None, rng: random.Random | None = None
) -> list[int]:
    """``count`` distinct free loopback ports outside the kernel's ephemeral range: random ones in
    ``[10000, low - 1]`` (else above ``high``), each checked free by binding it.

    Why not let the kernel pick (port 0)? Its picks come from the ephemeral range, the very range it
    takes client source ports from. A client reconnecting in a hot loop to a stopped broker whose port
    lies in that range can be handed that very port as its own source port and connect to itself
    (TCP simultaneous open); the connection then holds the port and the broker cannot bind it when
    it starts again. A port outside the range is never handed out as a source port.
    """
    low, high = ephemeral if ephemeral is not None else ephemeral_port_range()
    spans = [(LOWEST_CHOSEN_PORT, low - 1), (max(high + 1, LOWEST_CHOSEN_PORT), 65535)]
    candidates = [span for span in spans if span[0] <= span[1]]
    if not candidates:
        raise LocalKafkaError(f"no port outside the ephemeral range {low}-{high} to choose from")
    first, last = candidates[0]
    draw = rng or random.SystemRandom()
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(_PORT_ATTEMPTS):
            if len(ports) == count:
                break
            port = draw.randint(first, last)
            if port in ports:
                continue
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM binds it
            try:
                sock.bind((HOST, port))  # held until all are chosen: no port is picked twice
            except OSError:
                continue
            ports.append(port)
        if len(ports) < count:
            raise LocalKafkaError(f"found no {count} free ports in {first}-{last} on {HOST}")
        return ports


def _port_is_free(port: int) -> bool:
    """Whether the broker could bind ``port``: like the JVM, with SO_REUSEADDR, so that connections
    of a stopped broker lingering in TIME_WAIT do not hold its port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _can_connect(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


_MVN_NOISE = ("-> [Help", "Re-run Maven", "To see the full stack", "For more information")


def _mvn_failure_line(output: str) -> str:
    """The most useful line of a failed ``mvn -q`` run."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("[ERROR]"):
            text = line.removeprefix("[ERROR]").strip()
            if text and not any(noise in text for noise in _MVN_NOISE):
                return text
    return lines[-1] if lines else "no output"


def _log_tail_line(log_file: Path, max_bytes: int = 65536) -> str:
    """Summarise the end of a broker log as one line: the last ERROR/FATAL record plus the
    exception it reports, else the last non-empty line."""
    try:
        with log_file.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return f"no log at {log_file}"
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    if not lines:
        return f"empty log {log_file}"
    for index in range(len(lines) - 1, -1, -1):
        if " ERROR " in lines[index] or " FATAL " in lines[index]:
            summary = lines[index]
            for follow in lines[index + 1 : index + 4]:
                stripped = follow.strip()
                if follow[:1].isspace() or stripped.startswith("at "):
                    continue
                if re.match(r"^[\w.$]+(?:Exception|Error)\b", stripped):
                    summary += " | " + stripped
                    break
            return _one_line(summary, 300)
    for line in reversed(lines):
        stripped = line.strip()
        if not stripped.startswith("at ") and not stripped.startswith("... "):
            return _one_line(stripped, 300)
    return _one_line(lines[-1], 300)


def format_properties(props: Mapping[str, str]) -> str:
    """Java ``.properties`` text for ``props`` (backslashes escaped, one ``key=value`` a line)."""
    body = "".join(f"{key}={value.replace(chr(92), chr(92) * 2)}\n" for key, value in props.items())
    return "# written by devkit.localkafka; regenerated on every start\n" + body


# --------------------------------------------------------------------------- jars


def ensure_jars(version: str = DEFAULT_KAFKA_VERSION, cache_dir: Path | None = None) -> Path:
    """Resolve the broker's runtime jars into ``<cache_dir>/<version>/libs`` and return that dir.

    Does nothing when ``libs/.complete`` exists. Otherwise writes ``<cache_dir>/<version>/pom.xml``
    and runs ``mvn dependency:copy-dependencies`` (needs Maven and access to Maven Central).
    """
    version = _check_version(version)
    base = (cache_dir if cache_dir is not None else default_cache_dir()).resolve() / version
    libs = base / "libs"
    if (libs / _COMPLETE_MARKER).is_file():
        return libs
    mvn = require_mvn()
    with _file_lock(base / ".lock"):
        if (libs / _COMPLETE_MARKER).is_file():  # another process fetched them meanwhile
            return libs
        pom = base / "pom.xml"
        pom.write_text(render_pom(version))
        staging = base / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        command = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]
        failure = f"could not fetch Apache Kafka {version} jars from Maven Central"
        try:
            result = subprocess.run(
                command,
                cwd=base,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalKafkaError(f"{failure}: mvn did not finish within 900 s") from exc
        except OSError as exc:
            raise LocalKafkaError(f"{failure}: cannot run mvn: {exc}") from exc
        if result.returncode != 0:
            line = _mvn_failure_line(result.stdout + "\n" + result.stderr)
            raise LocalKafkaError(f"{failure}: {line}")
        broker_jar = f"kafka_{SCALA_BINARY_VERSION}-{version}.jar"
        if not (staging / broker_jar).is_file():
            raise LocalKafkaError(f"{failure}: mvn succeeded but {broker_jar} is missing")
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        (libs / _COMPLETE_MARKER).write_text(f"{version}\n")
    return libs


# --------------------------------------------------------------------------- config files


def render_server_properties(
    *,
    port: int,
    controller_port: int,
    log_dir: Path | str,
    node_id: int = 1,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Single-node KRaft (combined broker+controller) settings sized for a small machine."""
    props: dict[str, str] = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": f"{node_id}@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dir),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "auto.create.topics.enable": "true",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "group.initial.rebalance.delay.ms": "0",
        "num.io.threads": "2",
        "num.network.threads": "1",
        "background.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
        "num.replica.fetchers": "1",
        "log.cleaner.threads": "1",
        "log.cleaner.dedupe.buffer.size": "16777216",
    }
    if extra:
        props.update(extra)
    return props


def render_log_config(version: str) -> tuple[str, str]:
    """``(file name, content)`` of a console-only log config for this Kafka version."""
    if uses_log4j2(version):
        return (
            "log4j2.properties",
            "status = warn\n"
            "name = local-kafka\n"
            "shutdownHook = disable\n"
            "appender.console.type = Console\n"
            "appender.console.name = STDOUT\n"
            "appender.console.layout.type = PatternLayout\n"
            "appender.console.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.stdout.ref = STDOUT\n"
            "logger.request.name = kafka.request.logger\n"
            "logger.request.level = WARN\n"
            "logger.statechange.name = state.change.logger\n"
            "logger.statechange.level = WARN\n"
            "logger.cleaner.name = kafka.log.LogCleaner\n"
            "logger.cleaner.level = WARN\n",
        )
    return (
        "log4j.properties",
        "log4j.rootLogger=INFO, stdout\n"
        "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
        "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        "log4j.logger.kafka.request.logger=WARN\n"
        "log4j.logger.state.change.logger=WARN\n"
        "log4j.logger.kafka.log.LogCleaner=WARN\n",
    )


def _log_jvm_opt(version: str, log_config: Path) -> str:
    if uses_log4j2(version):
        return f"-Dlog4j2.configurationFile={log_config}"
    return f"-Dlog4j.configuration={log_config.as_uri()}"


# --------------------------------------------------------------------------- processes


def _read_cmdline(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def _pid_alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


# --------------------------------------------------------------------------- the broker


@dataclass
class LocalKafka:
    """One named local broker. Its files live in ``<cache_dir>/run/<name>/``.

    ``port``/``controller_port`` 0 pick free loopback ports outside the kernel's ephemeral range at
    :meth:`start` (see :func:`stable_free_ports`); the chosen ones are stored back on the object and
    in the state file.

    :meth:`start` formats a fresh data dir unless ``keep_data`` is set and one exists. The same object
    started again after :meth:`stop` is a restart: the same ports and the same data (its topics,
    records and committed offsets), whatever ``keep_data`` says.
    """

    version: str = field(default_factory=default_version)
    cache_dir: Path = field(default_factory=default_cache_dir)
    name: str = "default"
    port: int = 0
    controller_port: int = 0
    keep_data: bool = False
    jvm_opts: Sequence[str] = DEFAULT_JVM_OPTS
    extra_properties: Mapping[str, str] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _cluster_id: str | None = field(default=None, init=False, repr=False)  # of the data it started on

    def __post_init__(self) -> None:
        self.version = _check_version(self.version)
        self.cache_dir = Path(self.cache_dir).expanduser().resolve()
        if not _NAME_RE.match(self.name):
            raise LocalKafkaError(f"invalid broker name {self.name!r}: use [A-Za-z0-9._-]")

    # paths ---------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self.cache_dir / "run" / self.name

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    @property
    def properties_file(self) -> Path:
        return self.run_dir / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "broker.log"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "kafka.pid"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "state.json"

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.port}"

    # state ---------------------------------------------------------------
    def _read_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            state = self._read_state()
            pid = state.get("pid") if state else None
            return pid if isinstance(pid, int) else None

    def _is_our_broker(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None
        if not _pid_alive(pid):
            return False
        cmdline = _read_cmdline(pid)
        if cmdline is None:  # no /proc (not Linux): trust the pid file
            return True
        return b"kafka.Kafka" in cmdline and str(self.properties_file).encode() in cmdline

    def _clear_state(self) -> None:
        for path in (self.pid_file, self.state_file):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def status(self) -> dict[str, Any] | None:
        """``None`` if this broker was never started (or was stopped); otherwise its state with
        ``running`` telling whether the recorded process is still alive."""
        state = self._read_state()
        if state is None:
            return None
        pid = state.get("pid")
        state["running"] = isinstance(pid, int) and self._is_our_broker(pid)
        return state

    def is_running(self) -> bool:
        state = self.status()
        return bool(state and state["running"])

    # lifecycle -----------------------------------------------------------
    def start(self, timeout: float = 60.0) -> str:
        """Start the broker (fetching jars on first use) and return ``"127.0.0.1:<port>"``
        once the broker port accepts connections. Returns the running broker's address if this
        named broker is already up with the same version (and port, if one was asked for)."""
        java = require_java()
        state = self.status()
        if state is not None and state["running"]:
            running_port = int(state.get("port", 0))
            if state.get("version") == self.version and self.port in (0, running_port):
                self.port = running_port
                self.controller_port = int(state.get("controller_port", 0))
                return str(state["bootstrap"])
            raise LocalKafkaError(
                f"local broker {self.name!r} is already running (pid {state.get('pid')}, "
                f"Kafka {state.get('version')}, {state.get('bootstrap')}): stop it first"
            )
        self._clear_state()
        libs = ensure_jars(self.version, self.cache_dir)
        self._choose_ports()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cluster_id = self._prepare_storage(java, libs)

        restart = self._cluster_id == cluster_id
        self._cluster_id = cluster_id
        proc = self._spawn(java, libs, append_log=restart)
        self.pid_file.write_text(f"{proc.pid}\n")
        self.state_file.write_text(
            json.dumps(
                {
                    "pid": proc.pid,
                    "bootstrap": self.bootstrap_servers,
                    "version": self.version,
                    "name": self.name,
                    "port": self.port,
                    "controller_port": self.controller_port,
                    "cluster_id": cluster_id,
                    "log_file": str(self.log_file),
                    "started_at": time.time(),
                },
                indent=2,
            )
            + "\n"
        )
        self._wait_ready(proc, timeout)
        return self.bootstrap_servers

    def _choose_ports(self) -> None:
        wanted = [p for p in (self.port, self.controller_port) if p]
        for port in wanted:
            if not _port_is_free(port):
                raise LocalKafkaError(f"port {port} on {HOST} is already in use")
        if len(set(wanted)) != len(wanted):
            raise LocalKafkaError("port and controller_port must differ")
        fresh = iter(p for p in stable_free_ports(3) if p not in wanted)
        if not self.port:
            self.port = next(fresh)
        if not self.controller_port:
            self.controller_port = next(fresh)

    def _classpath(self, libs: Path) -> str:
        return f"{libs}{os.sep}*"

    def _prepare_storage(self, java: str, libs: Path) -> str:
        """Write the config files and format the storage dir unless its data is kept (``keep_data``,
        or a restart of this object on the data it formatted); returns the cluster id."""
        existing = self.data_dir / "meta.properties"
        cluster_id: str | None = None
        if (self.keep_data or self._cluster_id is not None) and existing.is_file():
            match = re.search(r"^cluster\.id=(\S+)", existing.read_text(), re.MULTILINE)
            cluster_id = match.group(1) if match else None
            if not self.keep_data and cluster_id != self._cluster_id:
                cluster_id = None  # another broker's data: not ours to keep
        if cluster_id is None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)

        log_name, log_content = render_log_config(self.version)
        log_config = self.run_dir / log_name
        log_config.write_text(log_content)
        props = render_server_properties(
            port=self.port,
            controller_port=self.controller_port,
            log_dir=self.data_dir,
            extra=self.extra_properties,
        )
        self.properties_file.write_text(format_properties(props))
        if cluster_id is not None:
            return cluster_id

        cluster_id = new_cluster_id()
        command = [
            java,
            *_TOOL_JVM_OPTS,
            _log_jvm_opt(self.version, log_config),
            "-cp",
            self._classpath(libs),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.properties_file),
        ]
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalKafkaError("formatting the broker storage timed out after 120 s") from exc
        if result.returncode != 0:
            lines = [ln for ln in (result.stderr + "\n" + result.stdout).splitlines() if ln.strip()]
            useful = [ln for ln in lines if not ln.strip().startswith("at ")]
            detail = (useful or lines or ["no output"])[-1]
            raise LocalKafkaError(f"formatting the broker storage failed: {detail}")
        return cluster_id

    def _spawn(self, java: str, libs: Path, *, append_log: bool = False) -> subprocess.Popen[bytes]:
        log_name, _ = render_log_config(self.version)
        command = [
            java,
            *self.jvm_opts,
            f"-Dkafka.logs.dir={self.run_dir / 'logs'}",
            _log_jvm_opt(self.version, self.run_dir / log_name),
            "-cp",
            self._classpath(libs),
            "kafka.Kafka",
            str(self.properties_file),
        ]
        with self.log_file.open("ab" if append_log else "wb") as log:
            try:
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.run_dir,
                    start_new_session=True,
                )
            except OSError as exc:
                raise LocalKafkaError(f"cannot run java: {exc}") from exc
        self._proc = proc
        return proc

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            code = proc.poll()
            if code is not None:
                self._clear_state()
                raise LocalKafkaError(
                    f"broker exited during start-up (exit code {code}): "
                    f"{_log_tail_line(self.log_file)} (log: {self.log_file})"
                )
            if _can_connect(self.port):
                return
            if time.monotonic() >= deadline:
                tail = _log_tail_line(self.log_file)
                self.stop()
                raise LocalKafkaError(
                    f"broker not ready on {self.bootstrap_servers} within {timeout:g} s: "
                    f"{tail} (log: {self.log_file})"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0, *, sig: signal.Signals = signal.SIGTERM) -> bool:
        """Stop the broker: ``sig`` (SIGTERM: a controlled shutdown), wait up to ``timeout`` s, then
        SIGKILL, always by the pid from this broker's pid file. Idempotent; True if a running broker
        was stopped. Its ports and data stay with the object: :meth:`start` restarts it."""
        pid = self._read_pid()
        stopped = False
        if pid is not None and self._is_our_broker(pid):
            stopped = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if not self._wait_exit(pid, timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                if not self._wait_exit(pid, 10.0):
                    raise LocalKafkaError(f"broker pid {pid} did not exit after SIGKILL")
        self._proc = None
        self._clear_state()
        return stopped

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while _pid_alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
