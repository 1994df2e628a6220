"""The Helm chart, rendered by Helm's own engine and validated against Kubernetes schemas.

helm-python-sdk binds libhelm_c, Helm v4's Go SDK built as a C library and shipped in
the wheel: the same template engine as `helm template`, offline, no helm binary.
kubernetes-validate ships the OpenAPI-derived JSON schemas of each Kubernetes release.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from libs import config as config_mod
from libs import policy_file

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "lantau"
CI_VALUES = yaml.safe_load((CHART / "ci" / "test-values.yaml").read_text())
RELEASE, NAMESPACE = "lantau", "custody"
# The chart's kubeVersion floor and the newest release kubernetes-validate knows.
KUBE_VERSIONS = ("1.27.0", latest_version())
CRD_GROUPS = ("monitoring.coreos.com/",)
DEPLOYMENTS = ("policy", "signer", "backup", "audit")


def render(values: dict[str, Any] | None = None, *, release: str = RELEASE) -> list[dict]:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(
            {**CI_VALUES, **(values or {})}, name=release, namespace=NAMESPACE, is_install=True
        )
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]  # YAML after rendering
    return docs


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return render()


def test_helm_lint_is_clean() -> None:
    report = helm.lint(CHART, CI_VALUES, strict=True, kube_version=f"v{KUBE_VERSIONS[-1]}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_manifest_is_valid_kubernetes(docs: list[dict], version: str) -> None:
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        if doc["apiVersion"].startswith(CRD_GROUPS):
            continue  # CRDs: no schema in kubernetes-validate (checked below)
        kubernetes_validate.validate(doc, version, strict=True)
    assert {"Deployment", "StatefulSet", "PodDisruptionBudget", "Service"} <= kinds
    assert {"ConfigMap", "Secret", "ServiceAccount", "ServiceMonitor"} <= kinds


def test_deployments_are_replicated_spread_and_protected(docs: list[dict]) -> None:
    deployments = by_kind(docs, "Deployment")
    pdbs = list(by_kind(docs, "PodDisruptionBudget").values())
    assert sorted(deployments) == sorted(f"{RELEASE}-{c}" for c in DEPLOYMENTS)
    for name, d in deployments.items():
        spec = d["spec"]
        assert spec["replicas"] >= 2, name
        pod_labels = spec["template"]["metadata"]["labels"]
        assert selects(spec["selector"]["matchLabels"], pod_labels)
        anti = spec["template"]["spec"]["affinity"]["podAntiAffinity"]
        terms = anti.get("requiredDuringSchedulingIgnoredDuringExecution", []) + [
            t["podAffinityTerm"]
            for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])
        ]
        assert terms, f"{name} has no pod anti-affinity"
        assert all(selects(t["labelSelector"]["matchLabels"], pod_labels) for t in terms), name
        covering = [p for p in pdbs if selects(p["spec"]["selector"]["matchLabels"], pod_labels)]
        assert len(covering) == 1, f"{name}: {len(covering)} PodDisruptionBudgets"
        assert covering[0]["spec"]["minAvailable"] < spec["replicas"], "drains must proceed"
        (container,) = spec["template"]["spec"]["containers"]
        component = name.removeprefix(f"{RELEASE}-")
        assert container["args"] == ["serve", component, "--config", "/etc/lantau/lantau.toml"]
        env = {e["name"]: e for e in container["env"]}
        assert env[f"LANTAU__{component.upper()}__ID"]["valueFrom"]["fieldRef"] == {
            "fieldPath": "metadata.name"
        }


def test_hsm_node_is_a_statefulset_with_a_token_volume_per_pod(docs: list[dict]) -> None:
    (sts,) = by_kind(docs, "StatefulSet").values()
    assert sts["metadata"]["name"] == f"{RELEASE}-hsm-node"
    spec = sts["spec"]
    assert spec["replicas"] == 3
    (claim,) = spec["volumeClaimTemplates"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["lantau-hsm-node"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/var/lib/lantau/token"
    pod_labels = spec["template"]["metadata"]["labels"]
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert selects(anti[0]["labelSelector"]["matchLabels"], pod_labels)
    pdbs = [
        p
        for p in by_kind(docs, "PodDisruptionBudget").values()
        if selects(p["spec"]["selector"]["matchLabels"], pod_labels)
    ]
    assert [p["spec"].get("maxUnavailable") for p in pdbs] == [1]
    governing = by_kind(docs, "Service")[spec["serviceName"]]
    assert governing["spec"]["clusterIP"] == "None"


def test_config_map_is_a_valid_lantau_config(docs: list[dict], tmp_path: Path) -> None:
    cm = by_kind(docs, "ConfigMap")[f"{RELEASE}-config"]
    path = tmp_path / "lantau.toml"
    path.write_text(cm["data"]["lantau.toml"])
    cfg = config_mod.load(path, env={})
    (sts,) = by_kind(docs, "StatefulSet").values()
    assert [n.id for n in cfg.hsm_nodes] == [f"hsm-{i + 1}" for i in range(sts["spec"]["replicas"])]
    assert cfg.nats.servers and cfg.nats.stream_replicas == 3
    assert [r.name for r in cfg.requesters] == ["desk-a"]
    # PIN files are keys of the mounted Secret; the metrics port is the containers' port.
    pod = sts["spec"]["template"]["spec"]
    (pins,) = [v for v in pod["volumes"] if v["name"] == "pins"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == pins["name"]]
    secret = by_kind(docs, "Secret")[pins["secret"]["secretName"]]
    for node in cfg.hsm_nodes:
        pin_file = Path(node.pin_file or "")
        assert str(pin_file.parent) == mount["mountPath"]
        assert pin_file.name in secret["stringData"]
        assert f"{node.id}-so-pin" in secret["stringData"]
    ports = {
        p["containerPort"]
        for d in [*by_kind(docs, "Deployment").values(), sts]
        for p in d["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert ports == {cfg.signer.metrics_port} == {n.metrics_port for n in cfg.hsm_nodes}


def test_each_pod_connects_as_its_own_identity_over_tls(docs: list[dict], tmp_path: Path) -> None:
    """Every workload mounts the TLS Secret and only its own identity's seed, and the
    rendered config turns mutual TLS on (docs/security.md)."""
    cm = by_kind(docs, "ConfigMap")[f"{RELEASE}-config"]
    (tmp_path / "lantau.toml").write_text(cm["data"]["lantau.toml"])
    cfg = config_mod.load(tmp_path / "lantau.toml", env={})
    assert all(s.startswith("tls://") for s in cfg.nats.servers)
    assert cfg.nats.ca_file and cfg.nats.cert_file and cfg.nats.key_file
    assert [a.name for a in cfg.approvers] == ["alice"] and cfg.requesters[0].nkey

    def identity_of(workload: dict) -> tuple[set[str], dict[str, str], str]:
        pod = workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        container = pod["containers"][0]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert volumes["nats-tls"]["secret"]["secretName"] == CI_VALUES["nats"]["tlsSecret"]
        assert mounts["nats-tls"] == str(Path(cfg.nats.ca_file or "").parent)
        seeds = volumes["nats-identity"]["secret"]
        assert seeds["secretName"] == CI_VALUES["nats"]["identitiesSecret"]
        env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
        return {i["key"] for i in seeds["items"]}, env, mounts["nats-identity"]

    for name in DEPLOYMENTS:
        keys, env, where = identity_of(by_kind(docs, "Deployment")[f"{RELEASE}-{name}"])
        assert keys == {name}
        assert env["LANTAU__NATS__SEED_FILE"] == f"{where}/{name}.seed"
    (sts,) = by_kind(docs, "StatefulSet").values()
    keys, env, where = identity_of(sts)
    assert keys == {f"node-{n.id}" for n in cfg.hsm_nodes}
    assert env["LANTAU_NKEYS_DIR"] == where
    jobs = by_kind(docs, "Job")
    keys, env, where = identity_of(jobs[f"{RELEASE}-provision"])
    assert keys == {"provisioner"}
    assert jobs[f"{RELEASE}-provision"]["spec"]["template"]["spec"]["containers"][0]["args"][0] == (
        "provision"
    )
    hook = jobs[f"{RELEASE}-provision"]["metadata"]["annotations"]["helm.sh/hook"]
    assert "post-install" in hook and "post-upgrade" in hook


def test_rendering_without_nats_identities_or_tls_fails_clearly() -> None:
    for key, text in (
        ("tlsSecret", "nats.tlsSecret"),
        ("identitiesSecret", "nats.identitiesSecret"),
    ):
        with pytest.raises(Exception, match=text):
            render({"nats": {**CI_VALUES["nats"], key: ""}})


def test_service_monitors_scrape_every_component_as_the_alerts_expect(docs: list[dict]) -> None:
    services = by_kind(docs, "Service")
    monitors = by_kind(docs, "ServiceMonitor")
    assert len(monitors) == len(DEPLOYMENTS) + 1
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"] for j in prom["scrape_configs"] if j["job_name"].startswith("lantau-")}
    relabelled = set()
    for name, sm in monitors.items():
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        selector = sm["spec"]["selector"]["matchLabels"]
        matched = [s for s in services.values() if selects(selector, s["metadata"]["labels"])]
        assert len(matched) == 1, name
        port_names = {p["name"] for p in matched[0]["spec"]["ports"]}
        assert sm["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
        for endpoint in sm["spec"]["endpoints"]:
            assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
            assert endpoint["honorLabels"] is True  # keep lantau_results_total's `service`
            for r in endpoint["relabelings"]:
                if r.get("targetLabel") == "job":
                    relabelled.add(r["replacement"])
    assert relabelled == jobs, "the same job names as deploy/prometheus/prometheus.yml"


def test_every_workload_has_a_metrics_service(docs: list[dict]) -> None:
    services = list(by_kind(docs, "Service").values())
    for d in [*by_kind(docs, "Deployment").values(), *by_kind(docs, "StatefulSet").values()]:
        labels = d["spec"]["template"]["metadata"]["labels"]
        matched = [s for s in services if selects(s["spec"]["selector"], labels)]
        assert len(matched) == 1, d["metadata"]["name"]
        assert [p["targetPort"] for p in matched[0]["spec"]["ports"]] == ["metrics"]


def test_service_monitors_can_be_turned_off() -> None:
    docs = render({"serviceMonitor": {"enabled": False}})
    assert not by_kind(docs, "ServiceMonitor")
    assert by_kind(docs, "Deployment")


def test_other_settings_render_valid_manifests(tmp_path: Path) -> None:
    docs = render(
        {
            "podAntiAffinity": "hard",
            "zoneSpread": False,
            "hsmNode": {"softhsm": False, "module": "/opt/hsm/lib/pkcs11.so"},
            "imagePullSecrets": [{"name": "registry"}],
            "nodeSelector": {"kubernetes.io/os": "linux"},
        }
    )
    for doc in docs:
        if not doc["apiVersion"].startswith(CRD_GROUPS):
            kubernetes_validate.validate(doc, KUBE_VERSIONS[-1], strict=True)
    for d in by_kind(docs, "Deployment").values():
        pod = d["spec"]["template"]["spec"]
        assert (
            "requiredDuringSchedulingIgnoredDuringExecution" in pod["affinity"]["podAntiAffinity"]
        )
        assert "topologySpreadConstraints" not in pod
    cm = by_kind(docs, "ConfigMap")[f"{RELEASE}-config"]
    (tmp_path / "lantau.toml").write_text(cm["data"]["lantau.toml"])
    cfg = config_mod.load(tmp_path / "lantau.toml", env={})
    assert {(n.module, n.softhsm_conf) for n in cfg.hsm_nodes} == {("/opt/hsm/lib/pkcs11.so", None)}
    # The policy file the chart ships is one the policy service accepts.
    assert cfg.policy.rules_file == "/etc/lantau/policy.toml"
    assert policy_file.parse(cm["data"]["policy.toml"]).version.startswith("helm-1#")
    with pytest.raises(helm.HelmError, match="at least 1"):
        render({"hsmNode": {"replicas": 0}})


def test_existing_secret_replaces_pin_values() -> None:
    docs = render(
        {
            "pins": {"existingSecret": "hsm-pins", "values": {}},
            "audit": {**CI_VALUES["audit"], "recordKey": {"existingSecret": "audit-key"}},
        },
        release="prod",
    )
    assert not by_kind(docs, "Secret")
    (sts,) = by_kind(docs, "StatefulSet").values()
    assert sts["metadata"]["name"] == "prod-lantau-hsm-node"
    volumes = sts["spec"]["template"]["spec"]["volumes"]
    assert {"secretName": "hsm-pins", "defaultMode": 0o440} in [v.get("secret") for v in volumes]


def test_rendering_without_pins_fails_clearly() -> None:
    with pytest.raises(helm.HelmError, match=r"pins\.existingSecret"):
        render({"pins": {"existingSecret": "", "values": {}}})
    partial = {k: v for k, v in CI_VALUES["pins"]["values"].items() if k != "hsm-3-so-pin"}
    with pytest.raises(helm.HelmError, match="lacks hsm-3-so-pin"):
        render({"pins": {"values": partial}})


def test_audit_mounts_its_record_key_and_witness_volumes(docs: list[dict], tmp_path: Path) -> None:
    cm = by_kind(docs, "ConfigMap")[f"{RELEASE}-config"]
    (tmp_path / "lantau.toml").write_text(cm["data"]["lantau.toml"])
    cfg = config_mod.load(tmp_path / "lantau.toml", env={})
    audit = by_kind(docs, "Deployment")[f"{RELEASE}-audit"]["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in audit["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in audit["volumes"]}
    key_file = Path(cfg.audit.record_key_file or "")
    key_volume = volumes[mounts[str(key_file.parent)]]["secret"]
    assert key_volume["defaultMode"] == 0o400
    secret = by_kind(docs, "Secret")[key_volume["secretName"]]
    assert len(bytes.fromhex(secret["stringData"][key_file.name])) == 32
    assert cfg.audit.witness_files
    for sink in cfg.audit.witness_files:
        volume = volumes[mounts[str(Path(sink).parent)]]
        assert "persistentVolumeClaim" in volume, "a witness outlives its pod"
    with pytest.raises(helm.HelmError, match=r"audit\.recordKey"):
        render({"audit": {**CI_VALUES["audit"], "recordKey": {"existingSecret": "", "value": ""}}})


def test_key_ceremony_job_mounts_every_token_volume(tmp_path: Path) -> None:
    """The README's ceremony: hsm-nodes paused (volumes free), the Job mounts them all."""
    docs = render({"keyCeremony": {"enabled": True}, "hsmNode": {"paused": True}})
    for doc in docs:
        if not doc["apiVersion"].startswith(CRD_GROUPS):
            kubernetes_validate.validate(doc, KUBE_VERSIONS[-1], strict=True)
    job = by_kind(docs, "Job")[f"{RELEASE}-key-ceremony"]
    (sts,) = by_kind(docs, "StatefulSet").values()
    assert sts["spec"]["replicas"] == 0
    cm = by_kind(docs, "ConfigMap")[f"{RELEASE}-config"]
    (tmp_path / "ceremony.toml").write_text(cm["data"]["ceremony.toml"])
    cfg = config_mod.load(tmp_path / "ceremony.toml", env={})
    assert len(cfg.hsm_nodes) == 3, "paused nodes stay in the config"
    claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    expected = [f"{claim}-{sts['metadata']['name']}-{i}" for i in range(len(cfg.hsm_nodes))]
    pod = job["spec"]["template"]["spec"]
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == expected
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    for node in cfg.hsm_nodes:
        assert str(Path(node.softhsm_conf or "").parent) in mounts
    assert pod["containers"][0]["args"] == [n.id for n in cfg.hsm_nodes]
