"""deploy/kubernetes/: schema-valid for a pinned Kubernetes, and consistent with fnd itself."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from fnd.daemon.sandbox.privileges import CAPABILITIES

pytestmark = pytest.mark.unit  # no processes, no network, no root

MANIFESTS = Path(__file__).parents[2] / "deploy" / "kubernetes"
KUBERNETES = "1.33.0"  # the version the manifests are checked against


def _documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found.append((f"{path.name}:{document['kind']}", document))
    return found


def _one(kind: str) -> dict[str, Any]:
    [document] = [d for _name, d in _documents() if d["kind"] == kind]
    return document


@pytest.mark.parametrize(("name", "document"), _documents(), ids=[n for n, _ in _documents()])
def test_manifest_is_valid_for_the_pinned_kubernetes(name: str, document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_all_kinds_are_there() -> None:
    kinds = sorted(d["kind"] for _name, d in _documents())
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Secret", "Service"]


def test_container_has_exactly_the_capabilities_strict_mode_checks() -> None:
    [container] = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    wanted = {name.removeprefix("CAP_") for _bit, name, _why in CAPABILITIES}
    assert sorted(security["capabilities"]["add"]) == sorted(wanted)


def test_grace_period_outlasts_the_drain_and_probes_use_fnd_status() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    settings = tomllib.loads(_one("ConfigMap")["data"]["fnd.toml"])
    assert pod["terminationGracePeriodSeconds"] > settings["drain_timeout"]
    [container] = pod["containers"]
    assert container["readinessProbe"]["exec"]["command"] == ["fnd", "status"]
    assert "fnd status" in " ".join(container["livenessProbe"]["exec"]["command"])


def test_hpa_scales_the_deployment_on_cpu() -> None:
    hpa = _one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == _one("Deployment")["metadata"]["name"]
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
