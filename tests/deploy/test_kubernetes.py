"""deploy/kubernetes/: schema-valid for a pinned Kubernetes, and consistent with fnd itself.

tests/image/kube.py (`scripts/image kube-test`) plays them under podman; this checks what a
real cluster reads that podman ignores (probes, preStop, grace period, PDB, Service, HPA)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from fnd.daemon.config import BY_NAME
from fnd.daemon.sandbox.privileges import CAPABILITIES

pytestmark = pytest.mark.unit  # no processes, no network, no root

MANIFESTS = Path(__file__).parents[2] / "deploy" / "kubernetes"
KUBERNETES = "1.33.0"  # the version the manifests are checked against
CUSTOM = {"ServiceMonitor"}  # the Prometheus operator's kind: no schema in kubernetes-validate


def _documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found.append((f"{path.relative_to(MANIFESTS)}:{document['kind']}", document))
    return found


def _one(kind: str) -> dict[str, Any]:
    [document] = [d for _name, d in _documents() if d["kind"] == kind]
    return document


def _container() -> dict[str, Any]:
    [container] = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _env() -> dict[str, str]:
    return {item["name"]: item["value"] for item in _container()["env"]}


@pytest.mark.parametrize(("name", "document"), _documents(), ids=[n for n, _ in _documents()])
def test_manifest_is_valid_for_the_pinned_kubernetes(name: str, document: dict[str, Any]) -> None:
    if document["kind"] in CUSTOM:
        assert document["apiVersion"] == "monitoring.coreos.com/v1", name
        return
    kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_all_kinds_are_there() -> None:
    kinds = sorted(d["kind"] for _name, d in _documents())
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret",
                     "Service", "ServiceMonitor"]


def test_container_has_exactly_the_capabilities_strict_mode_checks() -> None:
    security = _container()["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["capabilities"]["drop"] == ["ALL"]
    wanted = {name.removeprefix("CAP_") for _bit, name, _why in CAPABILITIES}
    assert sorted(security["capabilities"]["add"]) == sorted(wanted)
    assert "FND_SANDBOX" not in _env()  # strict, the default


def test_the_project_comes_from_the_image_and_the_env_from_a_secret_folder() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    container = _container()
    assert container["image"] == "localhost/fnd-project:latest"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert all("subPath" not in mount for mount in container["volumeMounts"])
    assert all("hostPath" not in volume and "configMap" not in volume
               for volume in pod["volumes"])
    [secret_volume] = [v for v in pod["volumes"] if "secret" in v]
    assert secret_volume["secret"]["secretName"] == _one("Secret")["metadata"]["name"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == secret_volume["name"]]
    env_file = _env()["FND_ENV_FILE"]
    assert "env_file" in BY_NAME and env_file == mount["mountPath"] + "/.env"
    assert ".env" in _one("Secret")["stringData"]


def test_probes_are_http_on_the_admin_port_fnd_serves() -> None:
    container = _container()
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 3000, "admin": int(_env()["FND_METRICS_PORT"])}
    assert _env()["FND_METRICS_HOST"] == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "admin"}
    assert container["startupProbe"]["httpGet"] == {"path": "/livez", "port": "admin"}


def test_grace_period_outlasts_the_pause_and_the_drain() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    command = _container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause, drain = float(command[1]), float(_env()["FND_DRAIN_TIMEOUT"])
    assert pause >= 5  # endpoint removal reaches the proxies first
    assert pod["terminationGracePeriodSeconds"] > pause + drain


def test_pdb_service_and_service_monitor_select_the_pods() -> None:
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == labels
    assert _one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    service = _one("Service")
    assert service["spec"]["selector"] == labels
    targets = {port["name"]: port["targetPort"] for port in service["spec"]["ports"]}
    assert targets == {"http": "http", "admin": "admin"}
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == _env()["FND_METRICS_PORT"]
    monitor = _one("ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [(e["port"], e["path"]) for e in monitor["endpoints"]] == [("admin", "/metrics")]


def test_hpa_scales_the_deployment_on_cpu() -> None:
    hpa = _one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == _one("Deployment")["metadata"]["name"]
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    assert hpa["minReplicas"] >= 2  # with the PDB, one pod serves while another drains
