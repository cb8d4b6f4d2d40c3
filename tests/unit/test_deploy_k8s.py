"""deploy/k8s rendered offline (kustomize) and checked as a platform team would: kubernetes-validate on
every built-in kind, kube-score with no finding, Pod Security "restricted" on every pod, and the custom
resources (PodMonitor, PrometheusRule, KEDA, Strimzi) against what they must agree with.

kustomize and kube-score are built from their Go modules by scripts/install_deploy_tools.sh (make test
runs it); kubernetes-validate comes with the test extra. No cluster exists here: nothing is applied.
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from oncostream.cli import build_parser
from oncostream.settings import REPO_ROOT, Settings

K8S = REPO_ROOT / "deploy" / "k8s"
TOOLS = REPO_ROOT / ".cache" / "deploy-tools" / "bin"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSION = "1.32.0"
# kinds without a schema in kubernetes-validate: checked by the tests below instead
CUSTOM_KINDS = {"PodMonitor", "PrometheusRule", "ScaledObject", "TriggerAuthentication", "KafkaTopic", "KafkaUser"}


def _tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: scripts/install_deploy_tools.sh builds it (make test runs it)")
    return str(path)


@functools.cache
def _rendered_text(overlay: str) -> str:
    result = subprocess.run([_tool("kustomize"), "build", str(K8S / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def rendered(overlay: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(_rendered_text(overlay)) if doc]


def _of(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _pod_specs(docs):
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            yield doc["metadata"]["name"], doc["spec"]["template"]


def _containers(pod_spec):
    return pod_spec.get("initContainers", []) + pod_spec.get("containers", [])


overlays = pytest.mark.parametrize("overlay", OVERLAYS)


@overlays
def test_builtin_kinds_validate(overlay, tmp_path):
    import kubernetes_validate

    docs = rendered(overlay)
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy",
                                         "ConfigMap", "Namespace"} | CUSTOM_KINDS
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # raises with the offending path


def test_validation_rejects_a_broken_deployment():
    import kubernetes_validate

    (worker,) = [d for d in rendered("cpu") if d["metadata"]["name"] == "oncostream-worker"
                 and d["kind"] == "Deployment"]
    broken = json.loads(json.dumps(worker))
    broken["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = {"cores": 4}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@overlays
def test_kube_score_has_no_findings(overlay, tmp_path):
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(_rendered_text(overlay))
    result = subprocess.run([_tool("kube-score"), "score", str(manifest), "--output-format", "ci"],
                            capture_output=True, text=True, timeout=120)
    findings = [line for line in result.stdout.splitlines()
                if line.startswith(("[CRITICAL]", "[WARNING]"))]
    assert not findings and result.returncode == 0, "\n".join(findings) + result.stderr


def test_kube_score_flags_what_it_should(tmp_path):
    """The check above can fail: the worker without its securityContext and probes is critical."""
    (worker,) = [d for d in rendered("cpu") if d["metadata"]["name"] == "oncostream-worker"
                 and d["kind"] == "Deployment"]
    for container in worker["spec"]["template"]["spec"]["containers"]:
        container.pop("securityContext")
        container.pop("resources")
    manifest = tmp_path / "broken.yaml"
    manifest.write_text(yaml.safe_dump(worker))
    result = subprocess.run([_tool("kube-score"), "score", str(manifest), "--output-format", "ci"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "[CRITICAL]" in result.stdout


@overlays
def test_pods_meet_pod_security_restricted(overlay):
    """The "restricted" profile (kubernetes.io/docs/concepts/security/pod-security-standards) that the
    namespace label enforces, checked here because no admission controller runs offline."""
    docs = rendered(overlay)
    (namespace,) = _of(docs, "Namespace").values()
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}
    for name, template in _pod_specs(docs):
        spec = template["spec"]
        pod_security = spec.get("securityContext", {})
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), name
        for volume in spec.get("volumes", []):
            assert set(volume) - {"name"} <= allowed_volumes, f"{name}: volume {volume}"
        for container in _containers(spec):
            context = {**pod_security, **container.get("securityContext", {})}
            where = f"{name}/{container['name']}"
            assert context.get("runAsNonRoot") is True and context.get("runAsUser", 1) != 0, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert not context.get("privileged"), where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            assert set(context.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}, where
            assert context.get("seccompProfile", {}).get("type") in {"RuntimeDefault", "Localhost"}, where
            assert context.get("readOnlyRootFilesystem") is True, where
            resources = container.get("resources", {})
            for kind in ("cpu", "memory", "ephemeral-storage"):
                assert kind in resources.get("requests", {}) and kind in resources.get("limits", {}), (where, kind)


@overlays
def test_every_pod_has_ingress_and_egress_policies(overlay):
    docs = rendered(overlay)
    policies = list(_of(docs, "NetworkPolicy").values())
    for name, template in _pod_specs(docs):
        labels = template["metadata"]["labels"]
        covering = [p for p in policies
                    if all(labels.get(k) == v for k, v in p["spec"]["podSelector"].get("matchLabels", {}).items())]
        types = {t for p in covering for t in p["spec"]["policyTypes"]}
        assert types >= {"Ingress", "Egress"}, f"{name}: not covered by a NetworkPolicy for {types}"
    assert any(not p["spec"]["podSelector"] and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
               and not p["spec"].get("ingress") and not p["spec"].get("egress") for p in policies), "no default deny"


def test_worker_liveness_comes_from_its_loop_not_the_metrics_thread():
    deployment = _of(rendered("cpu"), "Deployment")["oncostream-worker"]
    (worker,) = deployment["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args(worker["command"][1:])
    assert args.health_file is not None
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        command = worker[probe]["exec"]["command"]
        probe_args = build_parser().parse_args(command[1:])
        assert probe_args.command == "health" and probe_args.file == args.health_file, probe
    mounted = [m["mountPath"] for m in worker["volumeMounts"]]
    assert any(str(args.health_file).startswith(path + "/") for path in mounted), "heartbeat not on a writable mount"


@overlays
def test_every_oncostream_command_parses_with_the_cli(overlay):
    seen = 0
    for _name, template in _pod_specs(rendered(overlay)):
        for container in _containers(template["spec"]):
            command = container.get("command", [])
            if command and command[0] == "oncostream":
                build_parser().parse_args(command[1:])
                seen += 1
    assert seen >= 2


def test_gpu_engine_build_uses_the_cli_and_a_keyed_cache():
    deployment = _of(rendered("gpu"), "Deployment")["oncostream-triton"]
    spec = deployment["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    script = init["command"][-1]
    for line in script.splitlines():
        if line.strip().startswith("oncostream "):
            build_parser().parse_args(line.split()[1:])
    assert "nvidia-smi --query-gpu=name" in script and "tensorrt.__version__" in script
    volumes = {v["name"]: v for v in spec["volumes"]}
    claim = volumes["engine-cache"]["persistentVolumeClaim"]["claimName"]
    assert claim in _of(rendered("gpu"), "PersistentVolumeClaim")
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


@overlays
def test_triton_shm_probes_replicas_and_no_deprecated_flag(overlay):
    docs = rendered(overlay)
    deployment = _of(docs, "Deployment")["oncostream-triton"]
    spec = deployment["spec"]["template"]["spec"]
    (triton,) = spec["containers"]
    shm = [m for m in triton["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert shm, "no /dev/shm: Kubernetes gives 64 MB"
    (volume,) = [v for v in spec["volumes"] if v["name"] == shm[0]["name"]]
    assert volume["emptyDir"]["medium"] == "Memory"
    size = volume["emptyDir"]["sizeLimit"]
    assert size.endswith("Gi") and float(size[:-2]) >= 1, "one full LDCT volume in float32 is ~170 MB, x in flight"
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert deployment["spec"]["replicas"] >= 2 and "oncostream-triton" in _of(docs, "PodDisruptionBudget")
    assert "--strict-model-config" not in json.dumps(deployment)


@overlays
def test_settings_and_secrets_are_real_settings(overlay):
    docs = rendered(overlay)
    fields = {f"ONCOSTREAM_{name.upper()}" for name in Settings.model_fields}
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "oncostream-settings"]
    assert set(configmap["data"]) <= fields, sorted(set(configmap["data"]) - fields)
    assert configmap["data"]["ONCOSTREAM_CLAIM_CHECK_URL"].startswith("s3://"), "claim checks shared by every pod"
    Settings.model_validate({k.removeprefix("ONCOSTREAM_").lower(): v for k, v in configmap["data"].items()}
                            | {"kafka_sasl_password": "from-the-secret"})
    for name, template in _pod_specs(docs):
        for container in _containers(template["spec"]):
            for variable in container.get("env", []):
                assert variable["name"] in fields or not variable["name"].startswith("ONCOSTREAM_"), variable
                if "secretKeyRef" in variable.get("valueFrom", {}):
                    assert variable["name"] in fields, f"{name}: secret into unknown setting {variable['name']}"
    worker = _of(docs, "Deployment")["oncostream-worker"]["spec"]["template"]["spec"]["containers"][0]
    from_secrets = {v["name"] for v in worker["env"] if "secretKeyRef" in v.get("valueFrom", {})}
    assert {"ONCOSTREAM_KAFKA_SASL_PASSWORD", "ONCOSTREAM_STOW_RS_PASSWORD",
            "ONCOSTREAM_CLAIM_CHECK_S3_SECRET_ACCESS_KEY", "ONCOSTREAM_STORE_URL"} <= from_secrets


@overlays
def test_pod_monitors_select_pods_and_name_the_jobs_the_alerts_use(overlay):
    docs = rendered(overlay)
    rules = (REPO_ROOT / "deploy" / "prometheus" / "rules.yml").read_text()
    pods = {name: t for name, t in _pod_specs(docs)}
    for name, monitor in _of(docs, "PodMonitor").items():
        selector = monitor["spec"]["selector"]["matchLabels"]
        (target,) = [t for t in pods.values() if all(t["metadata"]["labels"].get(k) == v for k, v in selector.items())]
        ports = {p["name"] for c in target["spec"]["containers"] for p in c.get("ports", [])}
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in ports
            (job,) = [r["replacement"] for r in endpoint["relabelings"] if r["targetLabel"] == "job"]
            assert f'up{{job="{job}"}}' in rules, f"no down alert for job {job}"


@overlays
def test_prometheus_rule_and_dashboard_hold_the_deploy_files(overlay):
    docs = rendered(overlay)
    (rule,) = _of(docs, "PrometheusRule").values()
    prometheus = REPO_ROOT / "deploy" / "prometheus"
    expected = [g for f in ("rules.yml", "slo_rules.yml") for g in yaml.safe_load((prometheus / f).read_text())["groups"]]
    assert rule["spec"]["groups"] == expected
    (board,) = [d for d in docs if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"].get("labels", {})]
    assert json.loads(board["data"]["oncostream.json"]) == json.loads(
        (REPO_ROOT / "deploy" / "grafana" / "oncostream.json").read_text())


def test_generated_monitoring_files_are_current():
    result = subprocess.run([__import__("sys").executable, str(REPO_ROOT / "deploy" / "generate.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@overlays
def test_keda_scales_the_worker_on_the_topic_it_reads(overlay):
    from oncostream.services.kafka import TOPIC_CONFIGS

    docs = rendered(overlay)
    (scaled,) = _of(docs, "ScaledObject").values()
    assert scaled["spec"]["scaleTargetRef"]["name"] in _of(docs, "Deployment")
    (trigger,) = scaled["spec"]["triggers"]
    settings = Settings()
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["topic"] == settings.topic_dicom
    assert trigger["metadata"]["consumerGroup"] == settings.consumer_group
    assert trigger["authenticationRef"]["name"] in _of(docs, "TriggerAuthentication")
    topics = _of(docs, "KafkaTopic")
    assert set(topics) == {settings.topic_dicom, settings.topic_triage, settings.topic_results, settings.topic_dlq}
    assert scaled["spec"]["maxReplicaCount"] == topics[settings.topic_dicom]["spec"]["partitions"]
    for topic in topics.values():
        assert topic["metadata"]["namespace"] == "kafka" and topic["metadata"]["labels"]["strimzi.io/cluster"]
        for key, value in TOPIC_CONFIGS.items():
            if key != "retention.ms":  # triage and dead letters are kept longer on purpose
                assert str(topic["spec"]["config"][key]) == value, (topic["metadata"]["name"], key)
