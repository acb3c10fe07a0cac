"""devkit.localkafka without a real broker: ids, one-line errors, generated files."""

from __future__ import annotations

import base64
import os
import random
import re
import secrets
import shutil
import socket
import stat
from pathlib import Path

import pytest

from devkit.localkafka import (
    DEFAULT_KAFKA_VERSION,
    LocalKafka,
    LocalKafkaError,
    default_cache_dir,
    ensure_jars,
    format_properties,
    new_cluster_id,
    project_root,
    render_log_config,
    render_server_properties,
)
from devkit.localkafka.broker import ephemeral_port_range, stable_free_ports
from devkit.localkafka.pom import render_pom


def _fake_tool(bin_dir: Path, name: str, script: str) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _cached_jars(cache: Path, version: str = DEFAULT_KAFKA_VERSION) -> Path:
    libs = cache / version / "libs"
    libs.mkdir(parents=True)
    (libs / ".complete").write_text(version)
    return libs


def test_default_version_is_3_9_2() -> None:
    assert DEFAULT_KAFKA_VERSION == "3.9.2"


def test_cluster_id_is_22_url_safe_chars_of_16_bytes() -> None:
    for _ in range(500):
        cluster_id = new_cluster_id()
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id)
        assert not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([b"\xf8" + bytes(15), bytes(16)])  # 0xf8 encodes to a leading "-"
    monkeypatch.setattr(secrets, "token_bytes", lambda _n: next(draws))
    assert new_cluster_id() == "A" * 22


def test_start_without_java_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "java" else real_which(name))
    with pytest.raises(LocalKafkaError) as caught:
        LocalKafka(version=DEFAULT_KAFKA_VERSION, cache_dir=tmp_path).start()
    assert str(caught.value) == "java not found on PATH: install a JDK 17+"
    assert not (tmp_path / "run").exists()


def test_fetch_without_mvn_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(LocalKafkaError) as caught:
        ensure_jars("3.9.2", tmp_path)
    assert str(caught.value) == "mvn not found on PATH: install Maven"


def test_cached_jars_need_no_mvn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    libs = _cached_jars(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert ensure_jars(DEFAULT_KAFKA_VERSION, tmp_path) == libs


def test_failed_fetch_names_the_useful_mvn_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    _fake_tool(
        bin_dir,
        "mvn",
        'echo "[ERROR] Failed to execute goal on project x: Could not find artifact '
        'org.apache.kafka:kafka_2.13:jar:3.9.2"\n'
        'echo "[ERROR] "\necho "[ERROR] -> [Help 1]"\nexit 1\n',
    )
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    with pytest.raises(LocalKafkaError) as caught:
        ensure_jars("3.9.2", tmp_path / "cache")
    assert str(caught.value) == (
        "could not fetch Apache Kafka 3.9.2 jars from Maven Central: Failed to execute goal on "
        "project x: Could not find artifact org.apache.kafka:kafka_2.13:jar:3.9.2"
    )
    assert (tmp_path / "cache" / "3.9.2" / "pom.xml").is_file()
    assert not (tmp_path / "cache" / "3.9.2" / "libs").exists()


def test_bad_version_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(LocalKafkaError, match="not an Apache Kafka version"):
        ensure_jars("latest", tmp_path)


def test_pom_pins_plugin_and_matches_logging_to_version() -> None:
    pom_3 = render_pom("3.9.2")
    assert "<artifactId>kafka_2.13</artifactId>" in pom_3
    assert "<version>3.9.2</version>" in pom_3
    assert "<artifactId>slf4j-reload4j</artifactId>" in pom_3
    assert "<artifactId>reload4j</artifactId>" in pom_3
    assert "<version>3.8.1</version>" in pom_3
    assert "log4j-core" not in pom_3
    pom_4 = render_pom("4.1.1")
    assert "<artifactId>log4j-slf4j-impl</artifactId>" in pom_4
    assert "<artifactId>log4j-core</artifactId>" in pom_4
    assert "reload4j" not in pom_4
    assert "://repo" not in pom_3 + pom_4  # the registry is named, never addressed


def test_server_properties_single_node_small_machine(tmp_path: Path) -> None:
    props = render_server_properties(port=19092, controller_port=19093, log_dir=tmp_path / "data")
    expected = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": "1@127.0.0.1:19093",
        "listeners": "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093",
        "advertised.listeners": "PLAINTEXT://127.0.0.1:19092",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(tmp_path / "data"),
        "auto.create.topics.enable": "true",
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "num.io.threads": "2",
        "num.network.threads": "1",
        "background.threads": "2",
        "log.cleaner.dedupe.buffer.size": "16777216",
    }
    assert {key: props[key] for key in expected} == expected
    overridden = render_server_properties(
        port=1, controller_port=2, log_dir="/x", extra={"num.partitions": "3"}
    )
    assert overridden["num.partitions"] == "3"

    text = format_properties({"a.b": "c", "path": "C:\\data"})
    assert text.splitlines()[1:] == ["a.b=c", "path=C:\\\\data"]


def test_log_config_follows_the_kafka_major() -> None:
    name_3, content_3 = render_log_config("3.9.2")
    assert name_3 == "log4j.properties"
    assert "log4j.rootLogger=INFO, stdout" in content_3
    name_4, content_4 = render_log_config("4.1.1")
    assert name_4 == "log4j2.properties"
    assert "rootLogger.level = INFO" in content_4


FAKE_JAVA = """\
case "$*" in
  *StorageTool*) echo "Formatting $PWD"; exit 0 ;;
esac
echo "[2025-01-01 00:00:00,000] INFO starting (kafka.Kafka$)"
echo "[2025-01-01 00:00:01,000] ERROR Exiting Kafka due to fatal exception during startup. (kafka.Kafka$)"
echo "java.lang.IllegalArgumentException: requirement failed: bad config"
echo "	at kafka.Kafka.main(Kafka.scala:1)"
exit 1
"""


def test_broker_that_exits_during_start_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    _cached_jars(cache)
    bin_dir = tmp_path / "bin"
    _fake_tool(bin_dir, "java", FAKE_JAVA)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    kafka = LocalKafka(version=DEFAULT_KAFKA_VERSION, cache_dir=cache, name="unit")
    with pytest.raises(LocalKafkaError) as caught:
        kafka.start(timeout=20)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("broker exited during start-up (exit code 1): ")
    assert "ERROR Exiting Kafka due to fatal exception" in message
    assert "java.lang.IllegalArgumentException: requirement failed: bad config" in message
    assert kafka.status() is None

    run_dir = cache / "run" / "unit"
    written = (run_dir / "server.properties").read_text()
    assert f"listeners=PLAINTEXT://127.0.0.1:{kafka.port},CONTROLLER://127.0.0.1:{kafka.controller_port}" in (
        written
    )
    assert f"log.dirs={run_dir / 'data'}" in written
    assert (run_dir / "log4j.properties").is_file()


def test_failed_format_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    _cached_jars(cache)
    bin_dir = tmp_path / "bin"
    _fake_tool(bin_dir, "java", 'echo "Exception in thread main"\necho "bad cluster id" >&2\nexit 1\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    with pytest.raises(LocalKafkaError) as caught:
        LocalKafka(version=DEFAULT_KAFKA_VERSION, cache_dir=cache, name="unit").start(timeout=5)
    assert str(caught.value) == "formatting the broker storage failed: Exception in thread main"


def test_taken_port_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    _cached_jars(cache)
    _fake_tool(tmp_path / "bin", "java", "exit 1\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(LocalKafkaError, match=f"^port {port} on 127.0.0.1 is already in use$"):
            LocalKafka(version=DEFAULT_KAFKA_VERSION, cache_dir=cache, port=port).start()


def test_stop_and_status_without_a_broker(tmp_path: Path) -> None:
    kafka = LocalKafka(version=DEFAULT_KAFKA_VERSION, cache_dir=tmp_path, name="never-started")
    assert kafka.status() is None
    assert not kafka.is_running()
    assert kafka.stop() is False
    assert kafka.stop() is False


def test_stale_state_is_not_running_and_stop_cleans_it(tmp_path: Path) -> None:
    kafka = LocalKafka(version=DEFAULT_KAFKA_VERSION, cache_dir=tmp_path, name="stale")
    kafka.run_dir.mkdir(parents=True)
    kafka.pid_file.write_text(f"{os.getpid()}\n")  # alive, but not a broker: never signalled
    kafka.state_file.write_text(f'{{"pid": {os.getpid()}, "bootstrap": "127.0.0.1:1", "version": "3.9.2"}}')
    status = kafka.status()
    assert status is not None
    assert status["running"] is False
    assert kafka.stop() is False
    assert kafka.status() is None


def test_invalid_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(LocalKafkaError, match="invalid broker name"):
        LocalKafka(version=DEFAULT_KAFKA_VERSION, cache_dir=tmp_path, name="../escape")


def test_cache_dir_is_local_kafka_home_or_project_dot_kafka(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOCAL_KAFKA_HOME", raising=False)
    assert default_cache_dir() == project_root() / ".kafka"
    assert (project_root() / "pyproject.toml").is_file()
    monkeypatch.setenv("LOCAL_KAFKA_HOME", str(tmp_path / "k"))
    assert default_cache_dir() == tmp_path / "k"
    assert LocalKafka(version="3.9.2").run_dir == tmp_path / "k" / "run" / "default"


def test_ephemeral_range_is_read_from_proc_else_linux_default(tmp_path: Path) -> None:
    proc_file = tmp_path / "ip_local_port_range"
    proc_file.write_text("40000\t50000\n")
    assert ephemeral_port_range(proc_file) == (40000, 50000)
    assert ephemeral_port_range(tmp_path / "missing") == (32768, 60999)
    proc_file.write_text("garbage\n")
    assert ephemeral_port_range(proc_file) == (32768, 60999)


def test_chosen_ports_lie_below_the_ephemeral_range_and_are_free() -> None:
    low, _ = ephemeral_port_range()
    for seed in range(20):
        ports = stable_free_ports(3, rng=random.Random(seed))
        assert len(set(ports)) == 3
        for port in ports:
            assert 10000 <= port < low
            with socket.socket() as sock:  # really free: it can be bound
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))


class _Draws(random.Random):
    """A random source whose ``randint`` returns the given values in turn."""

    def __init__(self, values: list[int]) -> None:
        super().__init__(0)
        self._values = iter(values)

    def randint(self, a: int, b: int) -> int:
        value = next(self._values)
        assert a <= value <= b
        return value


def test_chosen_ports_skip_taken_and_repeated_ones_and_leave_the_range_when_it_starts_low() -> None:
    taken_port, first, second = stable_free_ports(3)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", taken_port))
        taken.listen()
        draws = _Draws([taken_port, first, first, second])
        assert stable_free_ports(2, ephemeral=(60000, 60999), rng=draws) == [first, second]
    above = stable_free_ports(2, ephemeral=(1024, 60999), rng=random.Random(1))
    assert all(60999 < p <= 65535 for p in above)
    with pytest.raises(LocalKafkaError, match="no port outside the ephemeral range"):
        stable_free_ports(1, ephemeral=(1024, 65535))


def test_a_broker_picks_its_ports_outside_the_ephemeral_range_and_keeps_them_on_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    _cached_jars(cache)
    bin_dir = tmp_path / "bin"
    _fake_tool(bin_dir, "java", FAKE_JAVA)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    kafka = LocalKafka(version=DEFAULT_KAFKA_VERSION, cache_dir=cache, name="ports")
    with pytest.raises(LocalKafkaError):
        kafka.start(timeout=20)
    low, high = ephemeral_port_range()
    ports = (kafka.port, kafka.controller_port)
    assert all(p < low or p > high for p in ports)
    assert ports[0] != ports[1]
    with pytest.raises(LocalKafkaError):
        kafka.start(timeout=20)  # the same object again: the same ports
    assert (kafka.port, kafka.controller_port) == ports
