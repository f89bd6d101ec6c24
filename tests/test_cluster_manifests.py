"""deploy/kubernetes/redis/: the cluster-mode Deployment, its PodDisruptionBudget and the
try-it Redis, validated offline like the StatefulSet (strict OpenAPI schemas, 1.28 and latest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from qqbot_gateway.config import load_settings

from .test_kubernetes_manifests import K8S, MIN_VERSION, _by_kind, _documents, _latest_version

CLUSTER = K8S / "redis"


def _docs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}:{doc['kind']}:{doc['metadata']['name']}", doc)
        for path in sorted(CLUSTER.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in _documents(path)
    ]


def _one(kind: str, name: str = "qqbot-gateway") -> dict[str, Any]:
    (doc,) = [d for _, d in _docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


@pytest.mark.parametrize("version", [MIN_VERSION, "latest"])
@pytest.mark.parametrize("name,doc", _docs(), ids=[n for n, _ in _docs()])
def test_cluster_manifests_validate_strictly(name: str, doc: dict[str, Any], version: str) -> None:
    target = _latest_version() if version == "latest" else version
    assert kubernetes_validate.validate(doc, target, strict=True)


def test_kustomization_lists_the_gateway_not_the_try_it_redis() -> None:
    k = yaml.safe_load((CLUSTER / "kustomization.yaml").read_text(encoding="utf-8"))
    for resource in k["resources"]:
        assert (CLUSTER / resource).resolve().exists(), resource
    assert "deployment.yaml" in k["resources"] and "pdb.yaml" in k["resources"]
    assert "redis.yaml" not in k["resources"]  # bring your own Redis


def test_deployment_runs_replicas_that_fail_over_without_kubernetes() -> None:
    dep = _one("Deployment")
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    assert spec["replicas"] >= 2, "one owner and at least one standby"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    tolerations = {t["key"]: t for t in pod["tolerations"]}
    for key in ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"):
        assert tolerations[key]["effect"] == "NoExecute"
        assert 0 < tolerations[key]["tolerationSeconds"] <= 60, "shorter than the 300 s default"
    assert not pod.get("volumes") or all("persistentVolumeClaim" not in v for v in pod["volumes"])
    # The labels the base Service and ServiceMonitor select.
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert _by_kind("Service")["spec"]["selector"].items() <= labels.items()
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] == 1


def test_the_env_is_a_valid_cluster_configuration(tmp_path: Path) -> None:
    (container,) = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    env.pop("QQBOT_CLIENT_SECRET_FILE")  # a path inside the pod: replaced by a real file
    url = env["QQBOT_REDIS_URL"]
    assert "value" not in url and url["valueFrom"]["secretKeyRef"]["key"] == "url"
    assert "QQBOT_SHARD_ID" not in env, "every replica offers every shard"
    assert "QQBOT_STATE_DIR" not in env
    plain = {name: e["value"] for name, e in env.items() if "value" in e}
    (tmp_path / "s").write_text("secret")
    settings = load_settings(
        env=plain
        | {
            "QQBOT_APP_ID": "1",
            "QQBOT_CLIENT_SECRET_FILE": str(tmp_path / "s"),
            "QQBOT_REDIS_URL": "redis://:pw@qqbot-redis:6379/0",
        },
        warn=pytest.fail,
    )
    assert settings.redis_url is not None and settings.lease_ttl == 10
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_try_it_redis_persists_with_aof_and_a_password() -> None:
    redis = _one("Deployment", "qqbot-redis")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert "--requirepass" in args
    assert redis["spec"]["replicas"] == 1 and redis["spec"]["strategy"]["type"] == "Recreate"
    service = _one("Service", "qqbot-redis")
    assert service["spec"]["selector"] == redis["spec"]["template"]["metadata"]["labels"]
