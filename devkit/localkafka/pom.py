"""The Maven pom that pulls an Apache Kafka broker and a logging backend from Maven Central.

Kafka's own poms leave the SLF4J backend out, so the pom adds one:

* 3.x logs through log4j 1 syntax: ``slf4j-reload4j`` + ``reload4j``.
* 4.x logs through log4j 2: ``log4j-slf4j-impl`` (the SLF4J 1.x binding: Kafka 4.0/4.1 still
  use slf4j-api 1.7.36) + ``log4j-core`` + ``log4j-api``.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

DEPENDENCY_PLUGIN_VERSION = "3.8.1"
SCALA_BINARY_VERSION = "2.13"

_LOG4J1_BACKEND: tuple[tuple[str, str, str], ...] = (
    ("org.slf4j", "slf4j-reload4j", "1.7.36"),
    ("ch.qos.reload4j", "reload4j", "1.2.25"),
)
_LOG4J2_BACKEND: tuple[tuple[str, str, str], ...] = (
    ("org.apache.logging.log4j", "log4j-slf4j-impl", "2.24.3"),
    ("org.apache.logging.log4j", "log4j-core", "2.24.3"),
    ("org.apache.logging.log4j", "log4j-api", "2.24.3"),
)


def major_version(version: str) -> int:
    """The major number of a Kafka version string such as ``"3.9.2"``."""
    head = version.strip().split(".", 1)[0]
    if not head.isdigit():
        raise ValueError(f"not a Kafka version: {version!r}")
    return int(head)


def uses_log4j2(version: str) -> bool:
    """Kafka 4.0 moved the broker from log4j 1 (reload4j) to log4j 2."""
    return major_version(version) >= 4


def logging_backend(version: str) -> tuple[tuple[str, str, str], ...]:
    """``(groupId, artifactId, version)`` of the SLF4J backend jars for this Kafka version."""
    return _LOG4J2_BACKEND if uses_log4j2(version) else _LOG4J1_BACKEND


def _dependency(group: str, artifact: str, version: str) -> str:
    return (
        "    <dependency>\n"
        f"      <groupId>{escape(group)}</groupId>\n"
        f"      <artifactId>{escape(artifact)}</artifactId>\n"
        f"      <version>{escape(version)}</version>\n"
        "    </dependency>\n"
    )


def render_pom(version: str) -> str:
    """A packaging=pom project whose runtime closure is the broker plus its logging backend."""
    deps = [("org.apache.kafka", f"kafka_{SCALA_BINARY_VERSION}", version)]
    deps.extend(logging_backend(version))
    dependencies = "".join(_dependency(*dep) for dep in deps)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        "  <groupId>local.kafka</groupId>\n"
        f"  <artifactId>local-kafka-{escape(version)}</artifactId>\n"
        "  <version>1</version>\n"
        "  <packaging>pom</packaging>\n"
        "  <dependencies>\n"
        f"{dependencies}"
        "  </dependencies>\n"
        "  <build>\n"
        "    <pluginManagement>\n"
        "      <plugins>\n"
        "        <plugin>\n"
        "          <groupId>org.apache.maven.plugins</groupId>\n"
        "          <artifactId>maven-dependency-plugin</artifactId>\n"
        f"          <version>{DEPENDENCY_PLUGIN_VERSION}</version>\n"
        "        </plugin>\n"
        "      </plugins>\n"
        "    </pluginManagement>\n"
        "  </build>\n"
        "</project>\n"
    )
