"""Shared fixtures: real nats-server, real SoftHSM tokens, real service processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import nacl.signing
import pytest
from nats.aio.client import Client

from devkit.natsserver import NatsServer
from devkit.stack import DevStack, start_platform
from devkit.tls import make_pki
from libs.bus.identity import write_seed
from libs.bus.permissions import OPERATOR, Grant, Identity, render_authorization
from libs.client import CustodyClient
from libs.config import Config, NatsConfig, RequesterConfig

TRADER = "desk-a"


@pytest.fixture(scope="module")
def trader_key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey.generate()


@pytest.fixture(scope="module")
def requesters(trader_key: nacl.signing.SigningKey) -> list[RequesterConfig]:
    return [
        RequesterConfig(
            name=TRADER,
            public_key=trader_key.verify_key.encode().hex(),
            keys=["desk-a-*"],
            may_create_keys=True,
            blind_keys=["desk-a-*"],
        )
    ]


def fast_redelivery(cfg: Config) -> Config:
    """Tests kill processes: redeliver unacked work after 4 s instead of 30 s."""
    import msgspec

    return msgspec.structs.replace(cfg, nats=msgspec.structs.replace(cfg.nats, ack_wait_s=4.0))


@pytest.fixture(scope="module")
def platform_options() -> dict[str, object]:
    """Override in a test module to change the stack (nodes, signers, tweak)."""
    return {"nodes": 2}


async def _start(
    tmp: Path, requesters: list[RequesterConfig], options: dict[str, object]
) -> DevStack:
    merged = {"tweak": fast_redelivery, **options}
    return await start_platform(tmp / "run", requesters=requesters, **merged)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
async def platform(
    tmp_path_factory: pytest.TempPathFactory,
    requesters: list[RequesterConfig],
    platform_options: dict[str, object],
) -> AsyncIterator[DevStack]:
    """One platform shared by the tests of a module: use distinct key and request ids."""
    stack = await _start(tmp_path_factory.mktemp("platform"), requesters, platform_options)
    try:
        yield stack
    finally:
        await stack.stop()


@pytest.fixture
async def fresh_platform(
    tmp_path: Path, requesters: list[RequesterConfig], platform_options: dict[str, object]
) -> AsyncIterator[DevStack]:
    """A platform of its own, for tests that kill or stop processes."""
    stack = await _start(tmp_path, requesters, platform_options)
    try:
        yield stack
    finally:
        await stack.stop()


async def connect_client(
    stack: DevStack, key: nacl.signing.SigningKey, requester: str = TRADER
) -> CustodyClient:
    """A trading system's client as ``requester``: its own NATS identity, over TLS."""
    return await CustodyClient.connect(
        stack.config.nats.servers, requester, key, **stack.requester_options(requester)
    )


@pytest.fixture(scope="module")
async def client(
    platform: DevStack, trader_key: nacl.signing.SigningKey
) -> AsyncIterator[CustodyClient]:
    c = await connect_client(platform, trader_key)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture(scope="module")
async def nc(platform: DevStack) -> AsyncIterator[Client]:
    """A connection as the operator: read-only views of streams and buckets."""
    conn = await platform.connect_as(OPERATOR)
    try:
        yield conn
    finally:
        await conn.close()


def secured_server(workdir: Path) -> tuple[NatsServer, NatsConfig]:
    """A nats-server with TLS and nkey users only, and the config of its one user
    ``tester``, allowed everything: for tests of one library against the bus."""
    pki = make_pki(workdir / "tls")
    nkey = write_seed(workdir / "tester.seed")
    server = NatsServer(workdir / "nats", pki=pki, authorized=True)
    server.workdir.mkdir(parents=True, exist_ok=True)
    everything = Identity("tester", "test", nkey, Grant(publish=(">",), subscribe=(">",)))
    server.auth_path.write_text(render_authorization([everything]))
    server.start()
    cfg = NatsConfig(
        servers=[server.url],
        seed_file=str(workdir / "tester.seed"),
        ca_file=str(pki.ca),
        cert_file=str(pki.client.cert),
        key_file=str(pki.client.key),
    )
    return server, cfg


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[Callable[[], tuple[NatsServer, NatsConfig]]]:
    """Secured nats-servers (TLS, one identity) for tests of a library against the bus."""
    started: list[NatsServer] = []

    def start() -> tuple[NatsServer, NatsConfig]:
        server, cfg = secured_server(tmp_path / f"nats-{len(started)}")
        started.append(server)
        return server, cfg

    yield start
    for server in started:
        server.stop()
