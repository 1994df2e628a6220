"""The dev cluster's routes: they form, they are mutual TLS, and only the route identity
may join (routes ignore client permissions, so an outsider on a route would bypass every
allow-list), in both directions: an impostor can neither open a route to the cluster nor
be dialed into it. Leaders read from /jsz agree with what JetStream itself says."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from nats.js.api import StreamConfig

from devkit.natscluster import NatsCluster
from devkit.natsserver import AUTH_FILE, NatsServer, Routes, binary, free_port, render_config
from devkit.tls import DevPki, make_pki
from libs.bus.connect import connect
from libs.bus.identity import write_seed
from libs.bus.permissions import Grant, Identity, render_authorization
from libs.config import NatsConfig


def _routez(server: NatsServer) -> dict:
    with urllib.request.urlopen(f"{server.monitor_url}/routez", timeout=2) as r:
        return json.load(r)


def _peers(server: NatsServer) -> set[str]:
    return {r.get("remote_name", "") for r in _routez(server).get("routes") or ()}


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> DevPki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, pki):
    """Three servers with TLS, nkey users (one ``tester`` allowed everything) and routes."""
    root = tmp_path_factory.mktemp("cluster")
    nkey = write_seed(root / "tester.seed")
    made = NatsCluster(root, 3, pki=pki)
    everything = Identity("tester", "test", nkey, Grant(publish=(">",), subscribe=(">",)))
    for server in made:
        server.workdir.mkdir(parents=True, exist_ok=True)
        server.auth_path.write_text(render_authorization([everything]))
    made.start()
    cfg = NatsConfig(
        servers=made.urls,
        seed_file=str(root / "tester.seed"),
        ca_file=str(pki.ca),
        cert_file=str(pki.client.cert),
        key_file=str(pki.client.key),
    )
    yield made, cfg
    made.stop()


def test_a_cluster_member_config_is_valid_for_nats_server(tmp_path, pki):
    text = render_config(
        port=free_port(),
        monitor_port=free_port(),
        store_dir=tmp_path / "js",
        pki=pki,
        authorized=True,
        server_name="nats-1",
        routes=Routes(
            free_port(), (free_port(), free_port()), pki.route, pki.route_ca, pki.route_user()
        ),
    )
    (tmp_path / "nats.conf").write_text(text)
    (tmp_path / AUTH_FILE).write_text("authorization { users = [] }\n")
    out = subprocess.run(
        [binary(), "-c", str(tmp_path / "nats.conf"), "-t"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "is valid" in out.stdout + out.stderr, out.stderr
    assert "sync_interval: always" in text and "verify_and_map: true" in text
    # The route user is the route certificate's own subject, read from the certificate.
    assert pki.route_user().startswith("CN=nats-route")


def test_every_server_routes_to_every_other(cluster):
    made, _ = cluster
    for server in made:
        others = {s.name for s in made if s is not server}
        assert _peers(server) >= others, server.name
        assert all(r.get("tls_required", True) for r in _routez(server).get("routes") or ())


def _intruder(tmp_path: Path, made: NatsCluster, routes: Routes, *, tls: bool = True) -> NatsServer:
    server = NatsServer(tmp_path / "intruder", server_name="intruder", routes=routes)
    server.workdir.mkdir(parents=True, exist_ok=True)
    text = server.config_text()
    if not tls:  # a plaintext route: the cluster block without its tls map
        start = text.index("  tls {", text.index("cluster {"))
        text = text[:start] + text[text.index("  }\n", start) + 4 :]
    server.config_path.write_text(text)
    server.proc.start()
    return server


def _refused(made: NatsCluster, intruder: NatsServer, seconds: float = 4.0) -> None:
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            assert intruder.proc.alive, intruder.proc.log_tail()
            for server in made:
                assert "intruder" not in _peers(server), f"{server.name} took the intruder's route"
            time.sleep(0.25)
        assert not _peers(intruder), "the intruder holds routes"
    finally:
        intruder.kill()


@pytest.mark.parametrize("cert", ["client", "server"])
def test_a_certificate_of_the_same_ca_but_not_the_route_identity_cannot_join(
    tmp_path, cluster, pki, cert
):
    made, _ = cluster
    peers = tuple(s.routes.port for s in made if s.routes)
    wrong = pki.client if cert == "client" else pki.server
    # It trusts the route CA and maps the route user like a member: only its own
    # certificate, of the clients' and servers' CA, is wrong.
    routes = Routes(free_port(), peers, wrong, pki.route_ca, pki.route_user())
    _refused(made, _intruder(tmp_path, made, routes))
    log = "\n".join(s.proc.log_tail(200) for s in made).lower()
    assert "tls route handshake error" in log or "authentication error" in log


def test_a_route_certificate_from_another_ca_cannot_join(tmp_path, cluster):
    made, _ = cluster
    other = make_pki(tmp_path / "other-ca")
    peers = tuple(s.routes.port for s in made if s.routes)
    routes = Routes(free_port(), peers, other.route, other.route_ca, other.route_user())
    _refused(made, _intruder(tmp_path, made, routes))


def test_a_plaintext_route_cannot_join(tmp_path, cluster, pki):
    made, _ = cluster
    peers = tuple(s.routes.port for s in made if s.routes)
    routes = Routes(free_port(), peers, pki.route, pki.route_ca, pki.route_user())
    _refused(made, _intruder(tmp_path, made, routes, tls=False))


def test_a_member_told_to_dial_an_impostor_drops_that_route(tmp_path, cluster, pki):
    """The other direction: nats-1 dials a server that shows the servers' certificate (of
    the clients' CA, with the right address in it) and would accept nats-1's route."""
    made, _ = cluster
    member = made.servers[0]
    # Its own routes lead nowhere (JetStream wants one): only nats-1 dials.
    routes = Routes(free_port(), (free_port(),), pki.server, pki.route_ca, pki.route_user())
    impostor = _intruder(tmp_path, made, routes)
    assert member.routes and impostor.routes
    original = member.routes
    member.routes = dataclasses.replace(original, peers=(*original.peers, impostor.routes.port))
    member.config_path.write_text(member.config_text())
    member.reload()
    try:
        _refused(made, impostor)
        # It did dial, and dropped the route at the TLS handshake.
        log = member.proc.log_tail(400)
        assert f"127.0.0.1:{impostor.routes.port}" in log, log
    finally:
        member.routes = original
        member.config_path.write_text(member.config_text())
        member.reload()


async def test_leaders_read_from_the_monitoring_endpoint_match_jetstream(cluster):
    made, cfg = cluster
    nc = await connect(cfg, "t", identity="tester", patient=False)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="R3", subjects=["r3.>"], num_replicas=3))
        await js.publish("r3.x", b"1")
        # Compared once the cluster is settled (an earlier test reloaded nats-1's routes):
        # every server names the same meta leader, and /jsz the leader JetStream reports.
        seen: list[object] = []
        for _ in range(50):
            info = await js.stream_info("R3")
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2
            leader = await asyncio.to_thread(made.stream_leader, "R3")
            metas = {s.name: made.jsz(s).get("meta_cluster", {}).get("leader") for s in made}
            seen = [leader, info.cluster.leader, metas]
            if leader == info.cluster.leader and set(metas.values()) == {made.meta_leader()}:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"monitoring and JetStream disagree: {seen}")
    finally:
        await nc.close()


def test_killing_the_meta_leader_elects_another(cluster):
    made, _ = cluster
    old = made.wait_meta_leader(10)
    made.kill(old)
    try:
        deadline = time.monotonic() + 30
        new = None
        while time.monotonic() < deadline:
            new = made.meta_leader()
            if new and new != old:
                break
            time.sleep(0.2)
        assert new and new != old, "no new meta leader"
    finally:
        made.start_server(old)
    assert made.server(old).proc.alive
