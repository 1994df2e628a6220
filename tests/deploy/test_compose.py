"""docker-compose.yml, its config file, NATS settings and entrypoint helpers.

No Docker engine is needed: `docker-compose config` validates and resolves the file,
nats-server checks its config, softhsm2-util initialises a token the way the
hsm-node entrypoint does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devkit.natsserver import binary as nats_server_binary
from libs import config as config_mod
from libs import policy_file

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKER = ROOT / "deploy" / "docker"
CONFIG_IN_CONTAINER = "/etc/lantau/lantau.toml"
SERVICES = ("policy", "backup", "audit")


@pytest.fixture(scope="module")
def resolved() -> dict:
    """The file as docker-compose resolves it (anchors merged, paths absolute)."""
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (Debian package docker-compose)")
    proc = subprocess.run(
        [tool, "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


@pytest.fixture(scope="module")
def cfg() -> config_mod.Config:
    return config_mod.load(DOCKER / "lantau.toml", env={})


def test_docker_compose_config_is_valid() -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (Debian package docker-compose)")
    proc = subprocess.run(
        [tool, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def _flags(command: list[str]) -> dict[str, str]:
    out = {}
    for arg in command:
        key, _, value = arg.partition("=")
        out[key] = value
    return out


def test_three_nats_servers_with_jetstream_in_one_cluster(resolved: dict) -> None:
    nats = {n: s for n, s in resolved["services"].items() if s.get("image", "").startswith("nats:")}
    assert sorted(nats) == ["nats-1", "nats-2", "nats-3"]
    for name, svc in nats.items():
        assert svc["image"] == "nats:2.10-alpine"
        flags = _flags(svc["command"])
        assert "-js" in flags, name
        assert flags["--server_name"] == name
        assert flags["--cluster_name"] == "lantau"
        routes = {r.split("//")[1].split(":")[0] for r in flags["--routes"].split(",")}
        assert routes == set(nats) - {name}, name
        assert all(r.startswith("nats-route://") for r in flags["--routes"].split(","))
        # --cluster would clear the route authorization nats.conf sets (nats-server's
        # overrideCluster empties the cluster user when the flag's URL has none).
        assert "--cluster" not in flags and "--cluster_listen" not in flags, name
        secrets = {s["source"] for s in svc["secrets"]}
        assert {"nats-route-ca", "nats-route-cert", "nats-route-key"} <= secrets, name
        store = [v for v in svc["volumes"] if v.split(":")[1] == flags["--store_dir"]]
        assert store and store[0].split(":")[0] in resolved["volumes"], f"{name}: named volume"
        assert "healthcheck" in svc


def _check_nats_config(conf_dir: Path, svc: dict) -> None:
    """nats-server -t on the mounted config with one server's flags, routes included."""
    args = [a for a in svc["command"] if not a.startswith("--config=")]
    proc = subprocess.run(
        [nats_server_binary(), "-c", str(conf_dir / "lantau.conf"), "-t", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    output = proc.stdout + proc.stderr
    # nats-server prints its usage and still exits 0 on an unknown flag: read the output.
    assert proc.returncode == 0 and "is valid" in output, output
    assert "flag provided but not defined" not in output, output


def _mounted_conf(resolved: dict) -> str:
    svc = resolved["services"]["nats-1"]
    conf = next(v.split(":")[0] for v in svc["volumes"] if v.endswith("/etc/nats/lantau.conf:ro"))
    return Path(conf).read_text()


@pytest.mark.parametrize("name", ["nats-1", "nats-2", "nats-3"])
def test_nats_config_is_valid_for_nats_server(resolved: dict, tmp_path: Path, name: str) -> None:
    """The mounted config plus each server's flags (its routes among them), checked by
    nats-server -t (with stand-in TLS files and users: the real ones come from
    make-secrets, tested below)."""
    from devkit.tls import make_pki

    text = _mounted_conf(resolved)
    assert "sync_interval: always" in text
    pki = make_pki(tmp_path / "tls")
    for secret, path in (
        ("nats-ca", pki.ca),
        ("nats-server-cert", pki.server.cert),
        ("nats-server-key", pki.server.key),
        ("nats-route-ca", pki.route_ca),
        ("nats-route-cert", pki.route.cert),
        ("nats-route-key", pki.route.key),
    ):
        text = text.replace(f"/run/secrets/{secret}", str(path))
    assert "/run/secrets/" not in text, "a secret the test does not stand in for"
    (tmp_path / "lantau.conf").write_text(text)
    (tmp_path / "authorization.conf").write_text("authorization { users = [] }\n")
    _check_nats_config(tmp_path, resolved["services"][name])


def test_routes_are_an_identity_of_their_own_as_in_the_dev_cluster(resolved: dict) -> None:
    """Compose and `lantau dev up --nats-cluster 3` secure routes the same way: mutual TLS
    with the route certificate, mapped to the route user (devkit/natsserver.py)."""
    from devkit.natsserver import Routes, render_config
    from devkit.tls import CertFiles

    def cluster_block(text: str) -> str:
        return text[text.index("cluster {") :]

    compose = cluster_block(_mounted_conf(resolved))
    files = CertFiles(Path("c"), Path("k"))
    dev = cluster_block(
        render_config(
            port=1,
            monitor_port=2,
            store_dir=Path("s"),
            routes=Routes(3, (4,), files, Path("ca"), "CN=nats-route,O=Lantau"),
        )
    )
    for setting in ("verify_and_map: true", 'user: "CN=nats-route,O=Lantau"', "authorization {"):
        assert setting in compose and setting in dev, setting
    # Its own CA, on both sides (a server dialing a peer checks the peer's certificate).
    assert 'ca_file: "/run/secrets/nats-route-ca"' in compose and 'ca_file: "ca"' in dev
    assert "nats-route-cert" in compose and "nats-server-cert" not in compose


def test_config_file_loads_with_libs_config(cfg: config_mod.Config) -> None:
    assert cfg.nats.servers == [f"tls://nats-{i}:4222" for i in (1, 2, 3)]
    assert cfg.nats.ca_file and cfg.nats.cert_file and cfg.nats.key_file
    assert cfg.nats.stream_replicas == 3
    assert [n.id for n in cfg.hsm_nodes] == ["hsm-1", "hsm-2", "hsm-3"]
    ports = {n.metrics_port for n in cfg.hsm_nodes}
    ports |= {s.metrics_port for s in (cfg.signer, cfg.policy, cfg.audit, cfg.backup)}
    assert ports == {9100}, "one port everywhere: the image's healthcheck and prometheus.yml"


def test_three_hsm_nodes_each_with_its_own_token_volume(
    resolved: dict, cfg: config_mod.Config
) -> None:
    services = resolved["services"]
    hsm = {n: s for n, s in services.items() if s.get("entrypoint") == ["lantau-hsm-node"]}
    assert sorted(hsm) == ["hsm-node-1", "hsm-node-2", "hsm-node-3"]
    token_volumes = set()
    for name, svc in hsm.items():
        node = cfg.hsm_node(svc["environment"]["LANTAU_HSM_NODE"])
        assert name == f"hsm-node-{node.id.removeprefix('hsm-')}"
        assert node.softhsm_conf and node.pin_file
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        volume = mounts[str(Path(node.softhsm_conf).parent)]
        assert volume in resolved["volumes"], f"{name}: token on a named volume"
        token_volumes.add(volume)
        assert mounts["/etc/lantau/lantau.toml"] == str(DOCKER / "lantau.toml")
        secrets = {s["source"] for s in svc["secrets"]}
        assert f"/run/secrets/{node.id}-pin" == node.pin_file
        tls = {"nats-ca", "nats-client-cert", "nats-client-key"}
        assert secrets == {f"{node.id}-pin", f"{node.id}-so-pin", f"nkey-node-{node.id}", *tls}
        assert svc["environment"]["LANTAU__NATS__SEED_FILE"] == f"/run/secrets/nkey-node-{node.id}"
    assert len(token_volumes) == 3


def test_every_service_runs_lantau_serve(resolved: dict) -> None:
    services = resolved["services"]
    signers = [n for n, s in services.items() if s.get("command", [])[:2] == ["serve", "signer"]]
    assert len(signers) >= 2
    ids = {services[n]["environment"]["LANTAU__SIGNER__ID"] for n in signers}
    assert len(ids) == len(signers), "each signer replica has its own id"
    for name in (*SERVICES, *signers):
        svc = services[name]
        role = name.split("-")[0]
        assert svc["command"] == ["serve", role, "--config", CONFIG_IN_CONTAINER]
        assert svc["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        assert f"{DOCKER / 'lantau.toml'}:{CONFIG_IN_CONTAINER}:ro" in svc["volumes"]
        # Streams exist before any service starts; services cannot make them.
        assert set(svc["depends_on"]) == {"nats-1", "nats-2", "nats-3", "provision"}
        assert svc["depends_on"]["provision"]["condition"] == "service_completed_successfully"
        # Its own identity and nobody else's.
        assert svc["environment"]["LANTAU__NATS__SEED_FILE"] == f"/run/secrets/nkey-{role}"
        nkeys = {s["source"] for s in svc["secrets"] if s["source"].startswith("nkey-")}
        assert nkeys == {f"nkey-{role}"}, name
    assert {"prometheus", "grafana"} <= set(services)


def test_key_ceremony_is_a_one_shot_profile(resolved: dict, cfg: config_mod.Config) -> None:
    svc = resolved["services"]["key-ceremony"]
    assert svc["profiles"] == ["ceremony"]
    assert svc["entrypoint"] == ["lantau-key-ceremony"]
    assert svc["command"] == [n.id for n in cfg.hsm_nodes]
    mounts = {v.split(":")[1] for v in svc["volumes"]}
    assert {str(Path(n.softhsm_conf or "").parent) for n in cfg.hsm_nodes} <= mounts
    secrets = {s["source"] for s in svc["secrets"]}
    pins = {f"{n.id}-{kind}" for n in cfg.hsm_nodes for kind in ("pin", "so-pin")}
    # Its AdminAction records go on the bus as the operator.
    tls = {"nats-ca", "nats-client-cert", "nats-client-key"}
    assert secrets == {*pins, "nkey-operator", *tls}
    assert svc["environment"]["LANTAU__NATS__SEED_FILE"] == "/run/secrets/nkey-operator"


def test_secrets_live_where_make_secrets_writes_them(resolved: dict) -> None:
    # That it writes each of them: test_make_secrets_writes_every_secret_and_nats_accepts_them.
    for name, secret in resolved["secrets"].items():
        assert Path(secret["file"]).parent == DOCKER / "secrets", name


def _run_make_secrets(tmp_path: Path) -> Path:
    """deploy/docker/make-secrets into a temporary directory, with `lantau` from this
    checkout on PATH (no Docker engine needed)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "lantau").write_text(
        f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -m services.cli.main "$@"\n'
    )
    (bin_dir / "lantau").chmod(0o755)
    secrets = tmp_path / "secrets"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "LANTAU_SECRETS_DIR": str(secrets),
    }
    proc = subprocess.run(
        [str(DOCKER / "make-secrets")], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return secrets


def test_make_secrets_writes_every_secret_and_nats_accepts_them(
    resolved: dict, cfg: config_mod.Config, tmp_path: Path
) -> None:
    from libs.bus.identity import public_key, tls_context

    secrets = _run_make_secrets(tmp_path)
    for name in resolved["secrets"]:
        assert (secrets / name).is_file(), f"make-secrets did not write {name}"
    auth = (secrets / "nats-authorization.conf").read_text()
    nodes = [f"nkey-node-{n.id}" for n in cfg.hsm_nodes]
    for name in ("policy", "signer", "backup", "audit", "operator", "provisioner", *nodes):
        seed = (secrets / (name if name.startswith("nkey-") else f"nkey-{name}")).read_bytes()
        assert public_key(seed) in auth, name  # every platform identity is a NATS user
    # The client side of the compose config loads (TLS files, paths as in the container).
    mapped = config_mod.load(
        DOCKER / "lantau.toml",
        env={
            "LANTAU__NATS__CA_FILE": str(secrets / "nats-ca"),
            "LANTAU__NATS__CERT_FILE": str(secrets / "nats-client-cert"),
            "LANTAU__NATS__KEY_FILE": str(secrets / "nats-client-key"),
        },
    )
    assert tls_context(mapped.nats) is not None
    # NATS's config with its TLS files and users, checked by nats-server -t.
    conf_dir = tmp_path / "nats"
    conf_dir.mkdir()
    text = (ROOT / "deploy" / "nats" / "nats.conf").read_text()
    assert "verify: true" in text and 'include "authorization.conf"' in text
    (conf_dir / "lantau.conf").write_text(text.replace("/run/secrets/", f"{secrets}/"))
    (conf_dir / "authorization.conf").write_text(auth)
    for name in ("nats-1", "nats-2", "nats-3"):
        _check_nats_config(conf_dir, resolved["services"][name])
    # Running it again keeps every key and seed (a token's PIN, an identity never change).
    before = {p.name: p.read_bytes() for p in secrets.iterdir() if p.is_file()}
    env = {**os.environ, "LANTAU_SECRETS_DIR": str(secrets)}
    env["PATH"] = f"{tmp_path / 'bin'}:{os.environ['PATH']}"
    again = subprocess.run(
        [str(DOCKER / "make-secrets")], env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
    for name, data in before.items():
        if name != "nats-authorization.conf":
            assert (secrets / name).read_bytes() == data, f"{name} was replaced"


def test_prometheus_scrapes_every_lantau_container(resolved: dict, cfg: config_mod.Config) -> None:
    prom = resolved["services"]["prometheus"]
    assert f"{ROOT / 'deploy' / 'prometheus'}:/etc/prometheus:ro" in prom["volumes"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t: job["job_name"]
        for job in config["scrape_configs"]
        for sc in job["static_configs"]
        for t in sc["targets"]
    }
    lantau = {
        n
        for n, s in resolved["services"].items()
        # One-shot jobs (provisioning, the ceremony, operator commands) are not scraped.
        if s.get("image") == "lantau:dev" and s.get("restart") != "no"
    }
    assert {t.split(":")[0] for t, job in targets.items() if job.startswith("lantau-")} == lantau
    for target, job in targets.items():
        if job.startswith("lantau-"):
            assert target.endswith(":9100") and job.removeprefix("lantau-") in target


def test_dockerfile() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines()]
    assert "FROM python:3.11-slim-bookworm" in lines
    assert "softhsm2" in text and "pip install ." in text
    user = [ln for ln in lines if ln.startswith("USER ")]
    assert user and user[-1] not in ("USER root", "USER 0"), "runs as a non-root user"
    assert 'ENTRYPOINT ["lantau"]' in lines
    healthcheck = text[text.index("\nHEALTHCHECK ") :].split("\n\n")[0]
    assert "/healthz" in healthcheck and "LANTAU_HEALTH_PORT" in healthcheck
    # Every COPY source exists in the build context (the repository root) and is let
    # through by Dockerfile.dockerignore (which BuildKit reads: "*", then "!" exceptions).
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = [ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")]
    assert "*" in ignore
    for ln in lines:
        if ln.startswith("COPY "):
            for src in ln.split()[1:-1]:
                assert (ROOT / src).exists(), src
                assert any(src.rstrip("/") == a or src.startswith(a + "/") for a in allowed), src


def test_entrypoint_scripts_parse() -> None:
    for name in ("lantau-hsm-node", "lantau-key-ceremony", "make-secrets"):
        proc = subprocess.run(["sh", "-n", str(DOCKER / name)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
        assert os.access(DOCKER / name, os.X_OK), f"{name} is not executable"


def test_token_init_initialises_once(tmp_path: Path) -> None:
    """lantau-token-init against the compose config, pointed at a temporary volume."""
    if shutil.which("softhsm2-util") is None:
        pytest.fail("softhsm2-util not found: apt-get install softhsm2 (make setup does)")
    (tmp_path / "hsm-2-pin").write_text("2468\n")
    (tmp_path / "hsm-2-so-pin").write_text("13579\n")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LANTAU__HSM_NODES__1__SOFTHSM_CONF": str(tmp_path / "hsm-2" / "softhsm2.conf"),
        "LANTAU__HSM_NODES__1__PIN_FILE": str(tmp_path / "hsm-2-pin"),
    }
    argv = [sys.executable, str(DOCKER / "lantau_token_init.py")]
    argv += ["--config", str(DOCKER / "lantau.toml"), "--node", "hsm-2"]
    outputs = []
    for _ in range(2):
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout.strip())
    assert outputs == [
        "lantau-token-init: token of hsm-2: initialised",
        "lantau-token-init: token of hsm-2: exists",
    ]
    conf = tmp_path / "hsm-2" / "softhsm2.conf"
    slots = subprocess.run(
        ["softhsm2-util", "--show-slots"],
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        capture_output=True,
        text=True,
    )
    assert "lantau-hsm-2" in slots.stdout
    assert "2468" not in "".join(outputs) and "13579" not in "".join(outputs)


def test_the_policy_file_is_mounted_and_accepted(resolved: dict) -> None:
    policy = resolved["services"]["policy"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in policy["volumes"]}
    cfg = config_mod.load(DOCKER / "lantau.toml", env={})
    assert cfg.policy.rules_file in mounts
    text = Path(mounts[cfg.policy.rules_file]).read_text()
    assert policy_file.parse(text).version.startswith("compose-1#")


def test_audit_keeps_its_record_key_and_witness_on_their_own_volumes(
    resolved: dict, cfg: config_mod.Config
) -> None:
    svc = resolved["services"]["audit"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
    assert cfg.audit.record_key_file and cfg.audit.witness_files
    key_volume = mounts[str(Path(cfg.audit.record_key_file).parent)]
    sink_volumes = {mounts[str(Path(s).parent)] for s in cfg.audit.witness_files}
    assert key_volume in resolved["volumes"] and sink_volumes <= set(resolved["volumes"])
    assert key_volume not in sink_volumes, "the witness is not where the key is"
    nats_volumes = {
        v.split(":")[0]
        for n, s in resolved["services"].items()
        if n.startswith("nats-")
        for v in s["volumes"]
    }
    assert not sink_volumes & nats_volumes, "the witness is out of the bus's reach"
    dockerfile = (DOCKER / "Dockerfile").read_text()
    for path in (
        Path(cfg.audit.record_key_file).parent,
        *(Path(s).parent for s in cfg.audit.witness_files),
    ):
        assert str(path) in dockerfile, f"{path}: a mount point the service user owns"


def _loopback_flags(svc: dict, store: Path, ports: dict[str, tuple[int, int, int]]) -> list[str]:
    """One compose server's flags with its names and ports moved to this machine: the
    client and monitoring ports and its peers' route ports from ``ports`` (name ->
    (client, http, route))."""
    flags = [a for a in svc["command"] if not a.startswith("--config=")]
    name = _flags(flags)["--server_name"]
    client, http, _ = ports[name]
    routes = ",".join(f"nats-route://127.0.0.1:{p[2]}" for n, p in ports.items() if n != name)
    moved = []
    for arg in flags:
        key = arg.partition("=")[0]
        if key == "--store_dir":
            arg = f"--store_dir={store}"
        elif key == "--routes":
            arg = f"--routes={routes}"
        moved.append(arg)
    return [*moved, "-a", "127.0.0.1", "-p", str(client), "-m", str(http)]


def test_the_compose_cluster_forms_with_the_files_make_secrets_writes(
    resolved: dict, tmp_path: Path
) -> None:
    """The three servers as compose runs them (its config, each one's flags, the
    certificates and users make-secrets writes), started here with names and ports moved
    to loopback: the routes form over TLS and a meta leader is elected. A fourth server
    presenting the servers' certificate on its routes is refused."""
    import json
    import time
    import urllib.request

    from devkit.natsserver import free_port, healthy
    from devkit.procs import ManagedProcess

    secrets = _run_make_secrets(tmp_path)
    text = _mounted_conf(resolved).replace("/run/secrets/", f"{secrets}/")
    auth = (secrets / "nats-authorization.conf").read_text()
    names = ["nats-1", "nats-2", "nats-3"]
    ports = {n: (free_port(), free_port(), free_port()) for n in [*names, "nats-4"]}
    procs: dict[str, ManagedProcess] = {}

    def launch(name: str, conf_text: str, svc: dict) -> None:
        home = tmp_path / name
        home.mkdir()
        # Each server's route port in the config (as compose does), moved to loopback.
        route_listen = f"listen: 127.0.0.1:{ports[name][2]}"
        (home / "lantau.conf").write_text(conf_text.replace("listen: 0.0.0.0:6222", route_listen))
        (home / "authorization.conf").write_text(auth)
        flags = _loopback_flags(svc, home / "data", ports)
        argv = [nats_server_binary(), "-c", str(home / "lantau.conf"), *flags]
        procs[name] = ManagedProcess(name, argv, log_path=home / "nats.log").start()

    def peers(name: str) -> set[str]:
        url = f"http://127.0.0.1:{ports[name][1]}/routez"
        with urllib.request.urlopen(url, timeout=2) as r:
            return {x.get("remote_name", "") for x in json.load(r).get("routes") or ()}

    try:
        for name in names:
            launch(name, text, resolved["services"][name])
        deadline = time.monotonic() + 60
        while not all(healthy(f"http://127.0.0.1:{ports[n][1]}") for n in names):
            assert time.monotonic() < deadline, "\n".join(p.log_tail() for p in procs.values())
            assert all(p.alive for p in procs.values()), [p.log_tail() for p in procs.values()]
            time.sleep(0.2)
        for name in names:
            assert peers(name) >= set(names) - {name}, name
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['nats-1'][1]}/jsz", timeout=2) as r:
            assert json.load(r)["meta_cluster"]["leader"] in names

        # nats-4: the same config but the servers' certificate on its routes.
        intruder = dict(resolved["services"]["nats-1"])
        intruder["command"] = [
            "--server_name=nats-4" if a.startswith("--server_name=") else a
            for a in intruder["command"]
        ]
        launch(
            "nats-4",
            text.replace("nats-route-cert", "nats-server-cert").replace(
                "nats-route-key", "nats-server-key"
            ),
            intruder,
        )
        time.sleep(4)
        assert procs["nats-4"].alive, procs["nats-4"].log_tail()
        for name in names:
            assert "nats-4" not in peers(name), f"{name} took a route from the servers' cert"
        assert not peers("nats-4")
    finally:
        for proc in procs.values():
            proc.terminate()
