"""A real Apache Kafka broker for local runs and tests, started from Maven Central jars."""

from service.localkafka.broker import (
    DEFAULT_JVM_OPTS,
    DEFAULT_KAFKA_VERSION,
    HOME_ENV,
    VERSION_ENV,
    LocalKafka,
    LocalKafkaError,
    default_cache_dir,
    default_version,
    ensure_jars,
    free_port,
    new_cluster_id,
    project_root,
    render_log_config,
    render_server_properties,
    require_java,
    require_mvn,
)

__all__ = [
    "DEFAULT_JVM_OPTS",
    "DEFAULT_KAFKA_VERSION",
    "HOME_ENV",
    "VERSION_ENV",
    "LocalKafka",
    "LocalKafkaError",
    "default_cache_dir",
    "default_version",
    "ensure_jars",
    "free_port",
    "new_cluster_id",
    "project_root",
    "render_log_config",
    "render_server_properties",
    "require_java",
    "require_mvn",
]
