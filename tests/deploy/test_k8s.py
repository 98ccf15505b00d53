"""The Kubernetes manifests, validated against the Kubernetes API's own schemas (kubernetes-validate
bundles them: no cluster, no network), and the KServe InferenceService against a JSON schema
derived from KServe's v1beta1 types, with the Pod and Container parts taken from the same schemas.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33.0"  # the oldest release still supported upstream when this was written


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifests() -> dict[str, dict[str, Any]]:
    """kind -> manifest, for the files the kustomization lists."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    out = {}
    for name in kustomization["resources"]:
        for doc in _documents(K8S / name):
            out[doc["kind"]] = doc
    return out


MANIFESTS = _manifests()
INFERENCE_SERVICE = _documents(K8S / "kserve" / "inferenceservice.yaml")[0]


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_manifest_matches_the_kubernetes_api_schema(kind: str) -> None:
    # strict: unknown fields are errors too, as `kubectl apply --validate=strict` treats them
    kubernetes_validate.validate(MANIFESTS[kind], KUBERNETES_VERSION, strict=True)


def test_validation_catches_a_misspelt_field() -> None:
    broken = copy.deepcopy(MANIFESTS["Deployment"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_deployment_probes_health_limits_resources_and_runs_as_non_root() -> None:
    pod = MANIFESTS["Deployment"]["spec"]["template"]["spec"]
    (api,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert ports == {"http": 8000, "grpc": 8001}
    assert api["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert api["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert set(api["resources"]["requests"]) == set(api["resources"]["limits"]) == {"cpu", "memory"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's `app` user
    assert api["securityContext"]["allowPrivilegeEscalation"] is False
    (models,) = [m for m in api["volumeMounts"] if m["mountPath"] == "/models"]
    assert models["readOnly"] is True
    env = {e["name"]: e["value"] for e in api["env"]}
    assert env["MODEL_REPOSITORY"] == "/models"
    assert env["WORKERS"] == "1"  # one process per pod: auto cannot see the pod's CPU limit
    claim = next(v for v in pod["volumes"] if v["name"] == models["name"])
    assert (
        claim["persistentVolumeClaim"]["claimName"]
        == MANIFESTS["PersistentVolumeClaim"]["metadata"]["name"]
    )


def test_service_and_autoscaler_point_at_the_deployment() -> None:
    deployment, service, hpa = (
        MANIFESTS[k] for k in ("Deployment", "Service", "HorizontalPodAutoscaler")
    )
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http", "grpc"}
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"


# --- KServe ------------------------------------------------------------------------------------

# ComponentExtensionSpec (pkg/apis/serving/v1beta1/component.go), inlined into PredictorSpec
# beside the PodSpec (predictor.go); the framework specs are objects we don't use.
_EXTENSION: dict[str, Any] = {
    "minReplicas": {"type": "integer", "minimum": 0},
    "maxReplicas": {"type": "integer", "minimum": 0},
    "scaleTarget": {"type": "integer"},
    "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
    "scaleMetricType": {"enum": ["Utilization", "AverageValue", "Value"]},
    "containerConcurrency": {"type": "integer"},
    "timeout": {"type": "integer"},
    "canaryTrafficPercent": {"type": "integer"},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    "logger": {"type": "object"},
    "batcher": {"type": "object"},
    "deploymentStrategy": {"type": "object"},
    "autoScaling": {"type": "object"},
}
_FRAMEWORKS = (
    *("sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "huggingface", "pmml"),
    *("lightgbm", "paddle", "model", "workerSpec", "storageUris"),
)


def kserve_schema(definitions: dict[str, Any]) -> dict[str, Any]:
    """InferenceService v1beta1 with a predictor: the PodSpec's own properties (containers,
    securityContext, volumes... as the Kubernetes schema defines them), KServe's extension
    fields, nothing else."""
    pod_spec = definitions["$defs"]["io.k8s.api.core.v1.PodSpec"]
    predictor = {
        "type": "object",
        "properties": {
            **pod_spec["properties"],
            **_EXTENSION,
            **{name: {"type": ["object", "array"]} for name in _FRAMEWORKS},
        },
        "additionalProperties": False,
    }
    return {
        "$defs": definitions["$defs"],  # the PodSpec's "#/$defs/..." references resolve here
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "serving.kserve.io/v1beta1"},
            "kind": {"const": "InferenceService"},
            "metadata": {"$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
            "spec": {
                "type": "object",
                "required": ["predictor"],
                "additionalProperties": False,
                "properties": {
                    "predictor": predictor,
                    "transformer": {"type": "object"},
                    "explainer": {"type": "object"},
                },
            },
        },
    }


def _kserve_validator() -> jsonschema.Draft202012Validator:
    folder = f"kubernetes-json-schema/v{KUBERNETES_VERSION}-local-strict/_definitions.json"
    ref = resources.files("kubernetes_validate").joinpath(folder)
    return jsonschema.Draft202012Validator(kserve_schema(json.loads(ref.read_text())))


def test_inference_service_matches_the_derived_kserve_schema() -> None:
    _kserve_validator().validate(INFERENCE_SERVICE)
    broken = copy.deepcopy(INFERENCE_SERVICE)
    broken["spec"]["predictor"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    with pytest.raises(jsonschema.ValidationError):
        _kserve_validator().validate(broken)
    broken = copy.deepcopy(INFERENCE_SERVICE)
    broken["spec"]["predictor"]["minReplica"] = 1
    with pytest.raises(jsonschema.ValidationError):
        _kserve_validator().validate(broken)


def test_inference_service_is_our_image_speaking_v2() -> None:
    predictor = INFERENCE_SERVICE["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"  # KServe's name for the custom predictor
    deployment_api = MANIFESTS["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == deployment_api["image"]
    assert container["command"] == deployment_api["command"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PROTOCOL"] == "v2"
    assert env["MODEL_REPOSITORY"] == "/mnt/models"  # where KServe copies STORAGE_URI
    assert env["WORKERS"] == "1"
    assert env["STORAGE_URI"].startswith("pvc://")
    assert [p["containerPort"] for p in container["ports"]] == [8000]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert predictor["securityContext"]["runAsNonRoot"] is True
