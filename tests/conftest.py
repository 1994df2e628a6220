"""Shared fixtures: real nats-server, real SoftHSM tokens, real service processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nacl.signing
import nats
import pytest

from devkit.natsserver import NatsServer
from devkit.stack import DevStack, start_platform
from libs.client import CustodyClient
from libs.config import Config, RequesterConfig

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


@pytest.fixture(scope="module")
async def client(
    platform: DevStack, trader_key: nacl.signing.SigningKey
) -> AsyncIterator[CustodyClient]:
    c = await CustodyClient.connect(platform.config.nats.servers, TRADER, trader_key)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture(scope="module")
async def nc(platform: DevStack) -> AsyncIterator[nats.aio.client.Client]:
    conn = await nats.connect(platform.config.nats.servers)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def nats_server(tmp_path: Path) -> Callable[[], NatsServer]:
    started: list[NatsServer] = []

    def start() -> NatsServer:
        server = NatsServer(tmp_path / f"nats-{len(started)}").start()
        started.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in started:
        server.stop()
