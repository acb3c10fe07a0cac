"""The Helm chart: lint, render with default values and with every optional feature, validate every
manifest against Kubernetes' schemas, and check the guards (schema, partitions, grace period)."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.ops.support import CHART, import_optional, load_yaml, load_yaml_documents, run

KUBE_VERSIONS = ("1.30.0", "1.34.0")
KUBE_VERSION = KUBE_VERSIONS[-1]
ALL_FEATURES = CHART / "ci" / "all-features-values.yaml"
# Custom resources: kubernetes-validate has no schema for them; their fields are asserted instead.
CUSTOM_KINDS = {"ServiceMonitor", "ScaledObject", "TriggerAuthentication"}
RELEASE = "reg"
NAMESPACE = "payments"
FULLNAME = f"{RELEASE}-amili-registrar"


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


@pytest.mark.parametrize("values_file", [None, ALL_FEATURES], ids=["defaults", "all-features"])
def test_helm_lint_strict(helm: str, values_file: Path | None) -> None:
    args = [helm, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION]
    if values_file is not None:
        args += ["--values", str(values_file)]
    result = run(args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout
    assert "[ERROR]" not in result.stdout


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_file", [None, ALL_FEATURES], ids=["defaults", "all-features"])
def test_every_manifest_is_valid_kubernetes(
    helm: str, tmp_path: Path, values_file: Path | None, kube_version: str
) -> None:
    files = [values_file] if values_file is not None else []
    rendered = render(helm, tmp_path, None, *files)
    assert validate(rendered.documents, kube_version) == []
    for document in rendered.documents:
        assert document["metadata"]["namespace"] == NAMESPACE
        labels = document["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "amili-registrar"
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


# --- default values --------------------------------------------------------------------------------


def test_defaults_render_the_core_resources_only(defaults: Rendered) -> None:
    assert defaults.kinds == {
        "ServiceAccount",
        "Secret",
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
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
    secret_names = {
        "AMILI_API_KEY",
        "AMILI_PRIVATE_KEY",
        "LEDGER_URL",
        "KAFKA_SASL_USERNAME",
        "KAFKA_SASL_PASSWORD",
    }
    assert not secret_names & (set(config["data"]) - {"LEDGER_URL"}), "no secret in the ConfigMap"
    container = defaults.container
    assert container["envFrom"] == [{"configMapRef": {"name": FULLNAME}}]
    refs = {env["name"]: env["valueFrom"]["secretKeyRef"] for env in container["env"]}
    assert set(refs) == secret_names
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


def test_all_features_use_the_digest_and_the_claim(all_features: Rendered) -> None:
    assert all_features.container["image"] == "amili-registrar@sha256:" + "0" * 64
    volumes = {volume["name"]: volume for volume in all_features.pod["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "amili-registrar-ledger"}


# --- guards ----------------------------------------------------------------------------------------


def test_autoscaling_beyond_the_partitions_fails(helm: str, tmp_path: Path) -> None:
    stderr = render_fails(
        helm, tmp_path, {"kafka": {"partitions": 6}, "autoscaling": {"enabled": True, "maxReplicas": 7}}
    )
    assert "autoscaling.maxReplicas (7) is larger than kafka.partitions (6)" in stderr


def test_autoscaling_up_to_the_partitions_renders(helm: str, tmp_path: Path) -> None:
    rendered = render(
        helm, tmp_path, {"kafka": {"partitions": 6}, "autoscaling": {"enabled": True, "maxReplicas": 6}}
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


# --- NOTES.txt -------------------------------------------------------------------------------------


def _notes(helm: str, tmp_path: Path, values: Mapping[str, Any] | None, *files: Path) -> str:
    """NOTES.txt as `helm install` would print it (helm template skips it): a copy of the chart
    renders it into a ConfigMap."""
    chart = tmp_path / "chart"
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
        override = tmp_path / "notes-values.json"
        override.write_text(json.dumps(values), encoding="utf-8")
        args += ["--values", str(override)]
    result = run(args)
    assert result.returncode == 0, result.stderr
    (document,) = load_yaml_documents(result.stdout)
    text: str = document["data"]["notes"]
    return text


def test_notes_warn_about_missing_credentials_and_a_shared_sqlite_ledger(helm: str, tmp_path: Path) -> None:
    notes = _notes(helm, tmp_path, {"replicaCount": 2})
    assert f"kubectl --namespace {NAMESPACE} rollout status deployment/{FULLNAME}" in notes
    assert "neither secrets.amiliApiKey nor amili.apiCode is set" in notes
    assert "more than one replica with a SQLite ledger" in notes


def test_notes_with_every_feature(helm: str, tmp_path: Path) -> None:
    notes = _notes(helm, tmp_path, None, ALL_FEATURES)
    assert 'existing Secret "amili-registrar-credentials"' in notes
    assert "KEDA scales the deployment between 2 and 12 replicas" in notes
    assert "WARNING" not in notes
