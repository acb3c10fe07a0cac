"""The Helm chart: lint, render with default values and with every optional feature, validate every
manifest against Kubernetes' schemas, and check the guards (schema, partitions, grace period, the
SQLite ledger's single replica, no secret in the ConfigMap) and what an operator is told (NOTES,
`helm test`)."""

from __future__ import annotations

import base64
import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from service.bootstrap import ConfigurationError, amili_credentials
from service.config import Settings
from tests.ops.support import CHART, import_optional, load_yaml, load_yaml_documents, run

KUBE_VERSIONS = ("1.30.0", "1.34.0")
KUBE_VERSION = KUBE_VERSIONS[-1]
ALL_FEATURES = CHART / "ci" / "all-features-values.yaml"
SQLITE_CLAIM = CHART / "ci" / "sqlite-claim-values.yaml"
CI_VALUES = [None, ALL_FEATURES, SQLITE_CLAIM]
CI_IDS = ["defaults", "all-features", "sqlite-claim"]
# Custom resources: kubernetes-validate has no schema for them; their fields are asserted instead.
CUSTOM_KINDS = {"ServiceMonitor", "ScaledObject", "TriggerAuthentication"}
RELEASE = "reg"
NAMESPACE = "payments"
FULLNAME = f"{RELEASE}-amili-registrar"
TEST_HOOK = "test"
# The service's secret settings (SecretStr in service/config.py), as environment variables.
SECRET_SETTINGS = frozenset(
    name.upper() for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)
)
# Not a SecretStr, but the chart keeps it in the Secret beside the password.
CHART_SECRET_KEYS = SECRET_SETTINGS | {"KAFKA_SASL_USERNAME"}
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "KEY")
# A URL's password: user:password@ in the authority, or a password= parameter.
URL_PASSWORD = re.compile(r"^[^:]+://[^/?#]*:[^/?#]*@|[?&]password=", re.IGNORECASE)


class Rendered:
    def __init__(self, documents: list[dict[str, Any]]) -> None:
        self.documents = documents
        self.by_kind: dict[str, list[dict[str, Any]]] = {}
        for document in documents:
            self.by_kind.setdefault(document["kind"], []).append(document)

    def one(self, kind: str) -> dict[str, Any]:
        found = self.by_kind.get(kind, [])
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]

    @property
    def kinds(self) -> set[str]:
        return set(self.by_kind)

    @property
    def test_hooks(self) -> list[dict[str, Any]]:
        return [
            document
            for document in self.documents
            if document["metadata"].get("annotations", {}).get("helm.sh/hook") == TEST_HOOK
        ]

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("Deployment")["spec"]["template"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        containers: list[dict[str, Any]] = self.pod["spec"]["containers"]
        assert len(containers) == 1
        return containers[0]


def _template(
    helm: str, tmp_path: Path, values: Mapping[str, Any] | None = None, *files: Path
) -> tuple[int, str, str]:
    args = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
    for file in files:
        args += ["--values", str(file)]
    if values is not None:
        override = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.json"
        override.write_text(json.dumps(values), encoding="utf-8")  # JSON is YAML
        args += ["--values", str(override)]
    result = run(args)
    return result.returncode, result.stdout, result.stderr


def render(helm: str, tmp_path: Path, values: Mapping[str, Any] | None = None, *files: Path) -> Rendered:
    code, stdout, stderr = _template(helm, tmp_path, values, *files)
    assert code == 0, stderr
    return Rendered(load_yaml_documents(stdout))


def render_fails(helm: str, tmp_path: Path, values: Mapping[str, Any]) -> str:
    code, _, stderr = _template(helm, tmp_path, values)
    assert code != 0, "the render should have failed"
    return stderr


def validate(documents: list[dict[str, Any]], kube_version: str) -> list[str]:
    """kubernetes-validate (strict: unknown fields are errors) on every built-in manifest."""
    kubernetes_validate = import_optional("kubernetes_validate", "kubernetes-validate")
    errors = []
    for document in documents:
        if document["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(document, kube_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{document['kind']}/{document['metadata']['name']}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{document['kind']}: no schema ({error})")
    return errors


@pytest.fixture
def defaults(helm: str, tmp_path: Path) -> Rendered:
    return render(helm, tmp_path)


@pytest.fixture
def all_features(helm: str, tmp_path: Path) -> Rendered:
    return render(helm, tmp_path, None, ALL_FEATURES)


# --- lint and schema validation --------------------------------------------------------------------


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_helm_lint_strict(helm: str, values_file: Path | None) -> None:
    args = [helm, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION]
    if values_file is not None:
        args += ["--values", str(values_file)]
    result = run(args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout
    assert "[ERROR]" not in result.stdout


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_every_manifest_is_valid_kubernetes(
    helm: str, tmp_path: Path, values_file: Path | None, kube_version: str
) -> None:
    files = [values_file] if values_file is not None else []
    rendered = render(helm, tmp_path, None, *files)
    assert validate(rendered.documents, kube_version) == []
    for document in rendered.documents:
        assert document["metadata"]["namespace"] == NAMESPACE
        labels = document["metadata"]["labels"]
        # The test pod has a name of its own: the Service must not select it.
        test_hook = document in rendered.test_hooks
        assert labels["app.kubernetes.io/name"] == "amili-registrar" + ("-test" if test_hook else "")
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "amili-registrar-0.1.0"


def test_values_schema_is_strict_draft_07() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    assert schema["$schema"].startswith("http://json-schema.org/draft-07/schema")
    assert schema["additionalProperties"] is False
    values = load_yaml(CHART / "values.yaml")
    assert set(values) <= set(schema["properties"]), "every default value is described"
    jsonschema = import_optional("jsonschema", "jsonschema")
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(values)


@pytest.mark.parametrize(
    ("values", "typo"),
    [
        ({"replicaCont": 2}, "replicaCont"),
        ({"kafka": {"partitons": 12}}, "partitons"),
        ({"autoscaling": {"enable": True}}, "enable"),
    ],
    ids=["top-level", "kafka", "autoscaling"],
)
def test_schema_rejects_a_typo(helm: str, tmp_path: Path, values: dict[str, Any], typo: str) -> None:
    stderr = render_fails(helm, tmp_path, values)
    assert typo in stderr
    assert "not allowed" in stderr


def test_schema_rejects_a_wrong_type_and_an_unknown_log_level(helm: str, tmp_path: Path) -> None:
    assert "partitions" in render_fails(helm, tmp_path, {"kafka": {"partitions": "six"}})
    assert "logLevel" in render_fails(helm, tmp_path, {"config": {"logLevel": "VERBOSE"}})


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"ledger": {"url": "postgresql+asyncpg://db:5432/registrar"}}, "/ledger/url"),
        ({"ledger": {"url": "mysql://db/registrar"}}, "/ledger/url"),
        ({"config": {"httpPort": 99999}}, "/config/httpPort"),
        ({"service": {"port": 99999}}, "/service/port"),
        ({"service": {"port": 0}}, "/service/port"),
        ({"config": {"maxInFlight": 0}}, "/config/maxInFlight"),
        ({"config": {"shutdownGraceSeconds": -1}}, "/config/shutdownGraceSeconds"),
        ({"kafka": {"bootstrapServers": "kafka"}}, "/kafka/bootstrapServers"),
        ({"kafka": {"topics": {"deadLetter": "dead letters"}}}, "/kafka/topics/deadLetter"),
        ({"kafka": {"topics": {"invoiceCreated": ".."}}}, "/kafka/topics/invoiceCreated"),
        ({"amili": {"baseUrl": "api.amili.se"}}, "/amili/baseUrl"),
        ({"amili": {"baseUrl": "https://api.amili.se?x=1"}}, "/amili/baseUrl"),
        ({"podDisruptionBudget": {"unhealthyPodEvictionPolicy": "Never"}}, "unhealthyPodEvictionPolicy"),
        ({"topologySpread": {"enabled": True, "whenUnsatisfiable": "Sometimes"}}, "whenUnsatisfiable"),
    ],
    ids=[
        "ledger-asyncpg",
        "ledger-mysql",
        "http-port",
        "service-port-high",
        "service-port-zero",
        "max-in-flight",
        "shutdown-grace",
        "bootstrap-without-port",
        "topic-with-space",
        "topic-dot-dot",
        "base-url-without-scheme",
        "base-url-with-query",
        "eviction-policy",
        "spread-when-unsatisfiable",
    ],
)
def test_schema_refuses_what_the_service_refuses(
    helm: str, tmp_path: Path, values: dict[str, Any], where: str
) -> None:
    stderr = render_fails(helm, tmp_path, values)
    assert "don't meet the specifications of the schema" in stderr
    assert where in stderr


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///ledger.sqlite3",
        "sqlite:////data/ledger.sqlite3",
        "postgresql://db:5432/registrar",
        "postgres://registrar@db/registrar?sslmode=require",
    ],
)
def test_schema_takes_the_ledger_urls_the_service_opens(helm: str, tmp_path: Path, url: str) -> None:
    rendered = render(helm, tmp_path, {"ledger": {"url": url}})
    assert rendered.one("ConfigMap")["data"]["LEDGER_URL"] == url


# --- default values --------------------------------------------------------------------------------


def test_defaults_render_the_core_resources_only(defaults: Rendered) -> None:
    assert defaults.kinds == {
        "ServiceAccount",
        "Secret",
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "Pod",  # the `helm test` hook
    }


def test_pod_runs_restricted(defaults: Rendered) -> None:
    pod_spec = defaults.pod["spec"]
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod_spec["automountServiceAccountToken"] is False
    context = defaults.container["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {mount["mountPath"]: mount["name"] for mount in defaults.container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod_spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert "emptyDir" in volumes[mounts["/data"]]


def test_probes_resources_and_grace(defaults: Rendered) -> None:
    container = defaults.container
    assert container["args"] == ["run"]
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    config = defaults.one("ConfigMap")["data"]
    grace = defaults.pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(config["SHUTDOWN_GRACE_SECONDS"])


def test_configuration_comes_from_the_configmap_and_the_secret(defaults: Rendered) -> None:
    config = defaults.one("ConfigMap")
    assert config["data"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert config["data"]["HTTP_PORT"] == "8000"
    assert config["data"]["MAX_IN_FLIGHT"] == "128"
    assert all(isinstance(value, str) for value in config["data"].values())
    assert config["data"]["LEDGER_URL"] == "sqlite:////data/ledger.sqlite3", "no password: not a secret"
    assert not CHART_SECRET_KEYS & (set(config["data"]) - {"LEDGER_URL"}), "no secret in the ConfigMap"
    container = defaults.container
    assert container["envFrom"] == [{"configMapRef": {"name": FULLNAME}}]
    refs = {env["name"]: env["valueFrom"]["secretKeyRef"] for env in container["env"]}
    assert set(refs) == CHART_SECRET_KEYS, "every secret setting of the service comes from the Secret"
    assert all(ref["name"] == FULLNAME and ref["optional"] is True for ref in refs.values())
    assert defaults.one("Secret")["data"] == {}


def test_chart_managed_secret_holds_only_the_values_set(helm: str, tmp_path: Path) -> None:
    rendered = render(
        helm,
        tmp_path,
        {"secrets": {"amiliApiKey": "key-1", "ledgerUrl": "postgresql://u:p@db/registrar"}},
    )
    data = rendered.one("Secret")["data"]
    assert {name: base64.b64decode(value).decode() for name, value in data.items()} == {
        "AMILI_API_KEY": "key-1",
        "LEDGER_URL": "postgresql://u:p@db/registrar",
    }


def test_service_exposes_the_http_port_for_metrics(defaults: Rendered) -> None:
    service = defaults.one("Service")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
    ]
    selector = service["spec"]["selector"]
    assert selector.items() <= defaults.pod["metadata"]["labels"].items()


def test_pdb_selects_the_pods(defaults: Rendered) -> None:
    pdb = defaults.one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= defaults.pod["metadata"]["labels"].items()


def test_pdb_never_blocks_a_drain_for_pods_that_are_not_ready(
    helm: str, tmp_path: Path, defaults: Rendered
) -> None:
    """Readiness fails while Amili is down or refuses the key: such pods are evicted regardless."""
    assert defaults.one("PodDisruptionBudget")["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    rendered = render(
        helm, tmp_path, {"podDisruptionBudget": {"unhealthyPodEvictionPolicy": "IfHealthyBudget"}}
    )
    assert rendered.one("PodDisruptionBudget")["spec"]["unhealthyPodEvictionPolicy"] == "IfHealthyBudget"


# --- checksums -------------------------------------------------------------------------------------


def _checksums(rendered: Rendered) -> tuple[str, str]:
    annotations = rendered.pod["metadata"]["annotations"]
    return annotations["checksum/config"], annotations["checksum/secret"]


def test_config_checksum_changes_with_a_config_value(helm: str, tmp_path: Path, defaults: Rendered) -> None:
    config, secret = _checksums(defaults)
    changed_config, same_secret = _checksums(render(helm, tmp_path, {"config": {"logLevel": "DEBUG"}}))
    assert changed_config != config
    assert same_secret == secret
    same_config, changed_secret = _checksums(render(helm, tmp_path, {"secrets": {"amiliApiKey": "rotated"}}))
    assert same_config == config
    assert changed_secret != secret
    assert _checksums(render(helm, tmp_path)) == (config, secret), "deterministic"


# --- every optional feature ------------------------------------------------------------------------


def test_all_features_render_the_optional_resources(all_features: Rendered) -> None:
    assert all_features.kinds == {
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "ScaledObject",
        "TriggerAuthentication",
        "NetworkPolicy",
        "Pod",  # the `helm test` hook
    }, "no chart-managed Secret with an existing one"


def test_existing_secret_is_referenced(all_features: Rendered) -> None:
    refs = [env["valueFrom"]["secretKeyRef"] for env in all_features.container["env"]]
    assert {ref["name"] for ref in refs} == {"amili-registrar-credentials"}
    _, secret_checksum = _checksums(all_features)
    assert secret_checksum


def test_scaled_object_scales_on_lag_within_the_partitions(all_features: Rendered) -> None:
    assert "replicas" not in all_features.one("Deployment")["spec"], "KEDA owns the replica count"
    scaled = all_features.one("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert spec["minReplicaCount"] == 2
    assert spec["maxReplicaCount"] == 12
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    assert metadata["topic"] == "invoice-created"
    assert metadata["consumerGroup"] == "amili-registrar"
    assert metadata["lagThreshold"] == "500"
    assert metadata["bootstrapServers"] == "kafka-0.kafka:9093,kafka-1.kafka:9093"
    assert metadata["sasl"] == "scram_sha512"
    assert metadata["tls"] == "enable"
    assert all(isinstance(value, str) for value in metadata.values()), "KEDA metadata values are strings"
    assert trigger["authenticationRef"] == {"name": FULLNAME}
    auth = all_features.one("TriggerAuthentication")
    assert auth["metadata"]["name"] == FULLNAME
    assert {(ref["parameter"], ref["name"], ref["key"]) for ref in auth["spec"]["secretTargetRef"]} == {
        ("username", "amili-registrar-credentials", "KAFKA_SASL_USERNAME"),
        ("password", "amili-registrar-credentials", "KAFKA_SASL_PASSWORD"),
    }


def test_service_monitor_scrapes_the_http_port(all_features: Rendered) -> None:
    monitor = all_features.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http"
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "30s"
    service_labels = all_features.one("Service")["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_network_policy_allows_scraping_and_the_needed_egress(all_features: Rendered) -> None:
    policy = all_features.one("NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert ingress["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    egress_ports = {port["port"] for rule in policy["egress"] for port in rule["ports"]}
    assert {53, 9092, 9093, 443, 5432} <= egress_ports


def test_all_features_use_the_digest(all_features: Rendered) -> None:
    assert all_features.container["image"] == "amili-registrar@sha256:" + "0" * 64


def test_all_features_take_the_ledger_url_from_the_existing_secret_only(all_features: Rendered) -> None:
    assert "LEDGER_URL" not in all_features.one("ConfigMap")["data"]
    refs = {env["name"]: env["valueFrom"]["secretKeyRef"] for env in all_features.container["env"]}
    assert refs["LEDGER_URL"] == {
        "name": "amili-registrar-credentials",
        "key": "LEDGER_URL",
        "optional": False,
    }
    assert all(ref["optional"] is True for name, ref in refs.items() if name != "LEDGER_URL")


# --- guards ----------------------------------------------------------------------------------------


def test_autoscaling_beyond_the_partitions_fails(helm: str, tmp_path: Path) -> None:
    stderr = render_fails(
        helm, tmp_path, {"kafka": {"partitions": 6}, "autoscaling": {"enabled": True, "maxReplicas": 7}}
    )
    assert "autoscaling.maxReplicas (7) is larger than kafka.partitions (6)" in stderr


def test_autoscaling_up_to_the_partitions_renders(helm: str, tmp_path: Path) -> None:
    rendered = render(
        helm,
        tmp_path,
        {
            "kafka": {"partitions": 6},
            "autoscaling": {"enabled": True, "maxReplicas": 6},
            "ledger": {"url": "postgresql://db/registrar"},
        },
    )
    assert rendered.one("ScaledObject")["spec"]["maxReplicaCount"] == 6
    assert "TriggerAuthentication" not in rendered.kinds, "no SASL: no credentials for KEDA"
    assert "sasl" not in rendered.one("ScaledObject")["spec"]["triggers"][0]["metadata"]


def test_grace_period_must_exceed_the_shutdown_grace(helm: str, tmp_path: Path) -> None:
    stderr = render_fails(
        helm, tmp_path, {"config": {"shutdownGraceSeconds": 30}, "terminationGracePeriodSeconds": 30}
    )
    assert "terminationGracePeriodSeconds" in stderr


def test_sasl_protocol_needs_a_mechanism(helm: str, tmp_path: Path) -> None:
    stderr = render_fails(helm, tmp_path, {"kafka": {"securityProtocol": "SASL_SSL"}})
    assert "saslMechanism" in stderr


# --- the SQLite ledger: one replica ---------------------------------------------------------------

POSTGRES = "postgresql://registrar@db:5432/registrar"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"replicaCount": 2},
            "replicaCount 2 with the SQLite ledger (ledger.url sqlite:////data/ledger.sqlite3)",
        ),
        ({"autoscaling": {"enabled": True}}, "autoscaling.maxReplicas 6 with the SQLite ledger"),
        (
            {"replicaCount": 3, "secrets": {"ledgerUrl": "sqlite:////data/other.sqlite3"}},
            "replicaCount 3 with the SQLite ledger (secrets.ledgerUrl",
        ),
        (
            # The existing Secret may hold a LEDGER_URL that wins, but the chart cannot know: it says
            # how to declare it (ledger.url "").
            {"replicaCount": 2, "secrets": {"existingSecret": "creds"}},
            "replicaCount 2 with the SQLite ledger",
        ),
        (
            {"replicaCount": 2, "ledger": {"url": "sqlite:///ledger.sqlite3"}},
            "replicaCount 2 with the SQLite ledger (ledger.url sqlite:///ledger.sqlite3)",
        ),
    ],
    ids=["replicas", "autoscaling", "chart-secret", "existing-secret", "relative-path"],
)
def test_several_replicas_with_the_sqlite_ledger_fail(
    helm: str, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    stderr = render_fails(helm, tmp_path, values)
    assert message in stderr
    assert "Use PostgreSQL for several replicas: ledger.url postgresql://" in stderr


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": 1},
        {"replicaCount": 0},
        {"autoscaling": {"enabled": True, "minReplicas": 0, "maxReplicas": 1}},
        {"replicaCount": 2, "ledger": {"url": POSTGRES}},
        {"replicaCount": 3, "secrets": {"ledgerUrl": "postgresql://u:p@db/registrar"}},
        {"autoscaling": {"enabled": True}, "ledger": {"url": ""}, "secrets": {"existingSecret": "creds"}},
        {
            "replicaCount": 5,
            "ledger": {"url": "postgres://db/registrar"},
            "dataVolume": {"existingClaim": "c"},
        },
    ],
    ids=[
        "one",
        "none",
        "autoscaling-to-one",
        "postgres",
        "chart-secret",
        "existing-secret",
        "postgres-claim",
    ],
)
def test_one_sqlite_replica_or_a_postgres_ledger_render(
    helm: str, tmp_path: Path, values: dict[str, Any]
) -> None:
    assert validate(render(helm, tmp_path, values).documents, KUBE_VERSION) == []


def test_an_empty_ledger_url_needs_a_secret(helm: str, tmp_path: Path) -> None:
    stderr = render_fails(helm, tmp_path, {"ledger": {"url": ""}})
    assert "neither secrets.ledgerUrl nor secrets.existingSecret is set" in stderr


# --- the update strategy ---------------------------------------------------------------------------


def test_a_claim_is_updated_by_recreating_the_pod(helm: str, tmp_path: Path) -> None:
    """A ReadWriteOnce claim cannot be attached to a surge pod: RollingUpdate would wait forever."""
    rendered = render(helm, tmp_path, None, SQLITE_CLAIM)
    assert rendered.one("Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    volumes = {volume["name"]: volume for volume in rendered.pod["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "amili-registrar-ledger"}


def test_an_emptydir_is_rolled(defaults: Rendered, all_features: Rendered) -> None:
    rolling = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert defaults.one("Deployment")["spec"]["strategy"] == rolling
    assert all_features.one("Deployment")["spec"]["strategy"] == rolling


def test_an_explicit_strategy_wins(helm: str, tmp_path: Path) -> None:
    """A ReadWriteMany claim may be rolled: the operator says so."""
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    rendered = render(helm, tmp_path, {"strategy": strategy}, SQLITE_CLAIM)
    assert rendered.one("Deployment")["spec"]["strategy"] == strategy


# --- spreading across nodes ------------------------------------------------------------------------


def test_pods_spread_across_nodes_by_default(defaults: Rendered) -> None:
    selector = defaults.one("Deployment")["spec"]["selector"]
    assert defaults.pod["spec"]["topologySpreadConstraints"] == [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": selector,
        }
    ]


def test_spreading_can_be_tuned_replaced_or_disabled(
    helm: str, tmp_path: Path, all_features: Rendered
) -> None:
    tuned = render(
        helm, tmp_path, {"topologySpread": {"enabled": True, "whenUnsatisfiable": "DoNotSchedule"}}
    )
    (constraint,) = tuned.pod["spec"]["topologySpreadConstraints"]
    assert constraint["whenUnsatisfiable"] == "DoNotSchedule"
    assert constraint["topologyKey"] == "kubernetes.io/hostname"

    disabled = render(helm, tmp_path, {"topologySpread": {"enabled": False}})
    assert "topologySpreadConstraints" not in disabled.pod["spec"]

    # ci/all-features replaces it with a zone constraint; the chart adds the pods' selector.
    selector = all_features.one("Deployment")["spec"]["selector"]
    assert all_features.pod["spec"]["topologySpreadConstraints"] == [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": selector,
        }
    ]
    own = {"matchLabels": {"team": "payments"}}
    constraint = {
        "maxSkew": 2,
        "topologyKey": "zone",
        "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": own,
    }
    replaced = render(helm, tmp_path, {"topologySpreadConstraints": [constraint]})
    assert replaced.pod["spec"]["topologySpreadConstraints"] == [constraint], "its own selector is kept"


# --- secrets come from Secrets only ----------------------------------------------------------------


def _chart_secret_keys(rendered: Rendered) -> set[str]:
    return {env["name"] for env in rendered.container["env"]}


def test_every_secret_setting_of_the_service_comes_from_the_secret(defaults: Rendered) -> None:
    assert {"AMILI_API_KEY", "AMILI_PRIVATE_KEY", "LEDGER_URL", "KAFKA_SASL_PASSWORD"} <= SECRET_SETTINGS
    assert _chart_secret_keys(defaults) >= SECRET_SETTINGS


@pytest.mark.parametrize("name", sorted(CHART_SECRET_KEYS))
def test_extra_env_refuses_a_secret_setting(helm: str, tmp_path: Path, name: str) -> None:
    stderr = render_fails(helm, tmp_path, {"config": {"extraEnv": {name: "s3cret"}}})
    assert f"config.extraEnv.{name}: secrets never go in the ConfigMap" in stderr
    assert "s3cret" not in stderr


@pytest.mark.parametrize("name", ["DB_PASSWORD", "CLIENT_SECRET", "VAULT_TOKEN", "AMILI_SIGNING_KEY"])
def test_extra_env_refuses_a_name_that_looks_secret(helm: str, tmp_path: Path, name: str) -> None:
    stderr = render_fails(helm, tmp_path, {"config": {"extraEnv": {name: "s3cret"}}})
    assert f"config.extraEnv.{name} looks like a secret" in stderr


def test_extra_env_takes_the_service_settings_that_are_no_secret(helm: str, tmp_path: Path) -> None:
    """Every setting of the service whose name holds a secret word but is no SecretStr
    (AMILI_PRIVATE_KEY_FILE, a path) is allowed, and so is any other setting the chart does not set."""
    looks_secret = {
        name.upper()
        for name in Settings.model_fields
        if any(word in name.upper() for word in SECRET_WORDS) and name.upper() not in CHART_SECRET_KEYS
    }
    assert "AMILI_PRIVATE_KEY_FILE" in looks_secret
    extra = {name: "/etc/amili/key.pem" for name in looks_secret} | {"UNAUTHORIZED_RETRY_SECONDS": "60"}
    rendered = render(helm, tmp_path, {"config": {"extraEnv": extra}})
    assert extra.items() <= rendered.one("ConfigMap")["data"].items()


@pytest.mark.parametrize(
    ("name", "value"), [("LOG_LEVEL", "config.logLevel"), ("HTTP_PORT", "config.httpPort")]
)
def test_extra_env_refuses_what_a_value_sets(helm: str, tmp_path: Path, name: str, value: str) -> None:
    """Else the ConfigMap would get the key twice."""
    stderr = render_fails(helm, tmp_path, {"config": {"extraEnv": {name: "1"}}})
    assert f"config.extraEnv.{name} is set by the chart from {value}: set that instead" in stderr


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://registrar:pa55word@db:5432/registrar",
        "postgres://registrar:@db/registrar",
        "postgresql://db/registrar?user=registrar&password=pa55word",
        "postgresql://db/registrar?sslmode=require&PASSWORD=pa55word",
    ],
    ids=["userinfo", "empty-password", "parameter", "parameter-upper-case"],
)
def test_ledger_url_refuses_a_password(helm: str, tmp_path: Path, url: str) -> None:
    stderr = render_fails(helm, tmp_path, {"ledger": {"url": url}})
    assert "ledger.url holds a password, which would land in the ConfigMap" in stderr
    assert "secrets.ledgerUrl" in stderr
    assert "pa55word" not in stderr


def test_chart_secret_ledger_url_is_checked_without_being_repeated(helm: str, tmp_path: Path) -> None:
    url = "postgresql+asyncpg://registrar:pa55word@db/registrar"
    stderr = render_fails(helm, tmp_path, {"secrets": {"ledgerUrl": url}})
    assert "secrets.ledgerUrl is neither sqlite:///path nor postgresql://" in stderr
    assert "pa55word" not in stderr


SENTINEL = "s3ntinel"
EVERY_SECRET = {
    "amiliApiKey": f"key-{SENTINEL}",
    "amiliPrivateKey": f"pem-{SENTINEL}",
    "ledgerUrl": f"postgresql://registrar:{SENTINEL}@db/registrar",
    "kafkaSaslUsername": f"user-{SENTINEL}",
    "kafkaSaslPassword": f"password-{SENTINEL}",
}
SASL = {"securityProtocol": "SASL_SSL", "saslMechanism": "SCRAM-SHA-256"}


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"secrets": EVERY_SECRET, "kafka": SASL, "amili": {"apiCode": "code-1"}},
        {"secrets": EVERY_SECRET | {"ledgerUrl": "sqlite:////data/ledger.sqlite3"}},
        {"secrets": EVERY_SECRET, "ledger": {"url": ""}, "replicaCount": 3},
        {"secrets": {"existingSecret": "creds"}, "ledger": {"url": ""}, "replicaCount": 2},
        {"secrets": {"existingSecret": "creds"}, "ledger": {"url": POSTGRES}},
        {"ledger": {"url": POSTGRES + "?sslmode=require"}, "replicaCount": 2},
        {"config": {"extraEnv": {"AMILI_PRIVATE_KEY_FILE": "/etc/amili/key.pem"}}, "amili": {"apiCode": "c"}},
    ],
    ids=[
        "defaults",
        "chart-secret-postgres",
        "chart-secret-sqlite",
        "chart-secret-empty-url",
        "existing-secret-empty-url",
        "existing-secret-postgres-url",
        "postgres-url",
        "private-key-file",
    ],
)
def test_the_configmap_never_holds_a_secret(helm: str, tmp_path: Path, values: dict[str, Any]) -> None:
    rendered = render(helm, tmp_path, values)
    data: dict[str, str] = rendered.one("ConfigMap")["data"]
    assert not (set(data) & CHART_SECRET_KEYS) - {"LEDGER_URL"}
    if "LEDGER_URL" in data:
        assert not URL_PASSWORD.search(data["LEDGER_URL"]), "only a URL without a password"
    assert SENTINEL not in json.dumps(data)
    assert _chart_secret_keys(rendered) == CHART_SECRET_KEYS, "every secret comes from the Secret"
    assert validate(rendered.documents, KUBE_VERSION) == []


def test_a_ledger_url_in_the_secret_is_not_in_the_configmap(helm: str, tmp_path: Path) -> None:
    rendered = render(
        helm, tmp_path, {"secrets": {"ledgerUrl": EVERY_SECRET["ledgerUrl"]}, "replicaCount": 2}
    )
    assert "LEDGER_URL" not in rendered.one("ConfigMap")["data"]
    refs = {env["name"]: env["valueFrom"]["secretKeyRef"] for env in rendered.container["env"]}
    assert refs["LEDGER_URL"] == {"name": FULLNAME, "key": "LEDGER_URL", "optional": False}
    stored = base64.b64decode(rendered.one("Secret")["data"]["LEDGER_URL"]).decode()
    assert stored == EVERY_SECRET["ledgerUrl"]


# --- helm test -------------------------------------------------------------------------------------


def test_helm_test_asks_readyz_through_the_service(defaults: Rendered) -> None:
    (hook,) = defaults.test_hooks
    assert hook["kind"] == "Pod"
    assert hook["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation"
    spec = hook["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    image = container["image"]
    assert re.fullmatch(r"curlimages/curl:\d+\.\d+\.\d+", image), f"a pinned tag: {image}"
    service = defaults.one("Service")
    port = service["spec"]["ports"][0]["port"]
    assert container["command"][0] == "curl"
    assert "--fail-with-body" in container["command"]
    assert container["command"][-1] == f"http://{service['metadata']['name']}:{port}/readyz"
    selector = service["spec"]["selector"]
    assert not selector.items() <= hook["metadata"]["labels"].items(), "the Service must not select it"


def test_helm_test_pod_runs_restricted(defaults: Rendered) -> None:
    (hook,) = defaults.test_hooks
    assert hook["spec"]["securityContext"] == defaults.pod["spec"]["securityContext"]
    (container,) = hook["spec"]["containers"]
    context = container["securityContext"]
    assert context == defaults.container["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert "memory" in container["resources"]["limits"]


def test_helm_test_follows_the_service_port_and_can_be_disabled(helm: str, tmp_path: Path) -> None:
    rendered = render(
        helm, tmp_path, {"service": {"port": 9100}, "tests": {"image": {"digest": "sha256:" + "1" * 64}}}
    )
    (hook,) = rendered.test_hooks
    (container,) = hook["spec"]["containers"]
    assert container["command"][-1] == f"http://{FULLNAME}:9100/readyz"
    assert container["image"] == "curlimages/curl@sha256:" + "1" * 64
    assert render(helm, tmp_path, {"tests": {"enabled": False}}).test_hooks == []


def test_the_network_policy_lets_the_test_pod_in(all_features: Rendered) -> None:
    (hook,) = all_features.test_hooks
    (ingress,) = all_features.one("NetworkPolicy")["spec"]["ingress"]
    selectors = [peer["podSelector"]["matchLabels"] for peer in ingress["from"] if "podSelector" in peer]
    assert any(labels.items() <= hook["metadata"]["labels"].items() for labels in selectors)


# --- NOTES.txt -------------------------------------------------------------------------------------


def _notes(helm: str, tmp_path: Path, values: Mapping[str, Any] | None, *files: Path) -> str:
    """NOTES.txt as `helm install` would print it (helm template skips it), its whitespace
    collapsed to single spaces (sentences wrap anywhere): a copy of the chart renders it into a
    ConfigMap."""
    work = tmp_path / f"notes-{len(list(tmp_path.glob('notes-*')))}"
    work.mkdir()
    chart = work / "chart"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text(encoding="utf-8")
    (chart / "templates" / "NOTES.txt").unlink()
    (chart / "templates" / "_notes_test.tpl").write_text(
        '{{- define "notes.test" -}}\n' + notes + "{{- end }}\n", encoding="utf-8"
    )
    (chart / "templates" / "notes_test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ include "notes.test" . | quote }}\n',
        encoding="utf-8",
    )
    args = [helm, "template", RELEASE, str(chart), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
    args += ["--show-only", "templates/notes_test.yaml"]
    for file in files:
        args += ["--values", str(file)]
    if values is not None:
        override = work / "values.json"
        override.write_text(json.dumps(values), encoding="utf-8")
        args += ["--values", str(override)]
    result = run(args)
    assert result.returncode == 0, result.stderr
    (document,) = load_yaml_documents(result.stdout)
    text: str = document["data"]["notes"]
    return " ".join(text.split())


def _refusal(**settings: Any) -> str:
    """The one line the service prints when it refuses to start for want of credentials."""
    base: dict[str, Any] = {"amili_api_key": SecretStr(""), "amili_api_code": None, "amili_private_key": None}
    with pytest.raises(ConfigurationError) as refused:
        amili_credentials(Settings(**(base | settings)))
    return f"amili-registrar: {refused.value}"


def test_notes_say_what_a_missing_key_does(helm: str, tmp_path: Path) -> None:
    notes = _notes(helm, tmp_path, None)
    assert f"kubectl --namespace {NAMESPACE} rollout status deployment/{FULLNAME}" in notes
    assert "neither secrets.amiliApiKey nor amili.apiCode is set: the pod will not start" in notes
    assert "the pod exits with code 2 after one line on stderr" in notes
    assert _refusal() in notes
    assert _refusal(amili_api_code="code-1").removeprefix("amili-registrar: ") in notes
    assert "CrashLoopBackOff" in notes
    assert f"kubectl --namespace {NAMESPACE} logs deployment/{FULLNAME} --previous" in notes
    assert "stays failing" not in notes, "the old claim: a missing key leaves the pod running"


def test_notes_say_how_to_check_readiness(helm: str, tmp_path: Path) -> None:
    notes = _notes(helm, tmp_path, {"secrets": {"amiliApiKey": "key-1"}})
    assert f"helm test {RELEASE} --namespace {NAMESPACE} --logs" in notes
    assert "/readyz answers 200 when every check passes" in notes
    assert '"credentials": "refused by Amili"' in notes
    assert "A node's drain evicts it all the same" in notes
    assert "WARNING" not in notes
    assert "SQLite at sqlite:////data/ledger.sqlite3, on an emptyDir, lost with the pod" in notes
    assert "One replica only" in notes
    assert "helm test" not in _notes(helm, tmp_path, {"tests": {"enabled": False}})


def test_notes_warn_about_an_api_code_without_a_key(helm: str, tmp_path: Path) -> None:
    notes = _notes(helm, tmp_path, {"amili": {"apiCode": "code-1"}})
    assert "amili.apiCode is set without secrets.amiliPrivateKey: the pod will not start" in notes
    with_file = {"amili": {"apiCode": "code-1"}, "config": {"extraEnv": {"AMILI_PRIVATE_KEY_FILE": "/k.pem"}}}
    assert "WARNING" not in _notes(helm, tmp_path, with_file)


def test_notes_with_a_claim(helm: str, tmp_path: Path) -> None:
    notes = _notes(helm, tmp_path, None, SQLITE_CLAIM)
    assert 'the volume claim "amili-registrar-ledger"' in notes
    assert "(Recreate)" in notes


def test_notes_with_every_feature(helm: str, tmp_path: Path) -> None:
    notes = _notes(helm, tmp_path, None, ALL_FEATURES)
    assert 'existing Secret "amili-registrar-credentials"' in notes
    assert 'LEDGER_URL from the existing Secret "amili-registrar-credentials" (required' in notes
    assert "KEDA scales the deployment between 2 and 12 replicas" in notes
    assert "WARNING" not in notes
