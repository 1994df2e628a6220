"""Breaking in through the bus: every identity against its allow-list, and the attacks of
docs/security.md, end to end on the dev stack (real nats-server with TLS and nkey users,
real SoftHSM, real service processes)."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator

import nacl.signing
import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.api import RePublish, StreamConfig

from devkit.stack import DevStack
from libs.bus import violations
from libs.bus.identity import tls_context, write_seed
from libs.bus.permissions import (
    AUDIT_ROLE,
    BACKUP,
    OPERATOR,
    POLICY,
    PROVISIONER,
    SIGNER,
    approver_identity,
    node_identity,
    requester_identity,
)
from libs.bus.publish import last_on_subject
from libs.bus.violations import subscribe_checked
from libs.client import CustodyClient
from libs.config import Config, RequesterConfig
from libs.hsm.remote import RemoteHsm
from proto import codec
from proto.errors import ErrorCode, LantauError
from proto.hsm import HsmPublicKey
from proto.orders import Decision
from proto.subjects import (
    ADMIN_POOL_STATUS,
    ORDERS,
    RESULTS,
    SIGN_ORDER,
    hsm_rpc_subject,
    result_subject,
)
from tests.conftest import TRADER, connect_client

OTHER = "desk-b"
NODE = "hsm-1"


@pytest.fixture(scope="module")
def other_key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey.generate()


@pytest.fixture(scope="module")
def requesters(trader_key, other_key) -> list[RequesterConfig]:
    return [
        RequesterConfig(
            name=name,
            public_key=key.verify_key.encode().hex(),
            keys=[f"{name}-*"],
            may_create_keys=True,
            blind_keys=[f"{name}-*"],
        )
        for name, key in ((TRADER, trader_key), (OTHER, other_key))
    ]


def _treasury_for_desk_a_only(cfg: Config) -> Config:
    """The demo group approves for both desks; here it approves for desk-a only, so
    approvers must not see desk-b's held requests."""
    assert cfg.policy.rules_file
    path = cfg.policy.rules_file
    text = open(path).read()
    text = text.replace(f'approves_for = ["{TRADER}", "{OTHER}"]', f'approves_for = ["{TRADER}"]')
    open(path, "w").write(text)
    return cfg


@pytest.fixture(scope="module")
def platform_options() -> dict[str, object]:
    return {"nodes": 1, "tweak": _treasury_for_desk_a_only}


@pytest.fixture(scope="module")
async def other(platform: DevStack, other_key) -> AsyncIterator[CustodyClient]:
    c = await connect_client(platform, other_key, OTHER)
    yield c
    await c.close()


async def publish_refused(nc: Client, subject: str, reply: str = "") -> bool:
    """Publish and wait a round trip: True if the server refused it."""
    record = violations.of(nc)
    assert record is not None
    started = time.monotonic()
    await nc.publish(subject, b"", reply=reply)
    await nc.flush(timeout=5)
    # The refusal can come after the flush's PONG: allow some slack on a loaded machine.
    return await record.wait(subject, started, 0.5) is not None


async def subscribe_refused(nc: Client, subject: str) -> bool:
    try:
        sub = await subscribe_checked(nc, subject)
    except LantauError as e:
        assert e.code == ErrorCode.PERMISSION_DENIED
        return True
    await sub.unsubscribe()
    return False


# identity -> (publish allowed, publish refused, subscribe allowed, subscribe refused)
MATRIX: dict[str, tuple[list[str], list[str], list[str], list[str]]] = {
    requester_identity(TRADER): (
        [f"$JS.API.DIRECT.GET.LANTAU_RESULTS.lantau.result.{TRADER}.nothing"],
        [
            SIGN_ORDER,
            hsm_rpc_subject(NODE, "sign"),
            f"lantau.request.sign.{OTHER}",
            "lantau.request.approval.alice",
            f"lantau.result.{TRADER}.forged",
            f"$JS.API.DIRECT.GET.LANTAU_RESULTS.lantau.result.{OTHER}.x",
            "$JS.API.DIRECT.GET.LANTAU_RESULTS",
            "$JS.API.STREAM.MSG.GET.LANTAU_RESULTS",
            "$JS.API.STREAM.INFO.LANTAU_RESULTS",
            "$JS.API.STREAM.DELETE.LANTAU_ORDERS",
            "$JS.API.CONSUMER.CREATE.LANTAU_RESULTS",
            "$KV.lantau_keys.desk-a-x",
            ADMIN_POOL_STATUS,
        ],
        [f"lantau.result.{TRADER}.>"],
        [
            f"lantau.result.{OTHER}.>",
            "lantau.result.>",
            "_INBOX.>",
            "_INBOX_signer.>",
            f"_INBOX_{requester_identity(OTHER)}.>",
            hsm_rpc_subject(NODE, ">"),
            "lantau.order.>",
            "lantau.event.>",
        ],
    ),
    approver_identity("alice"): (
        [
            "$JS.API.STREAM.INFO.KV_lantau_approvals",
            f"$JS.API.DIRECT.GET.KV_lantau_approvals.$KV.lantau_approvals.{TRADER}.x",
        ],
        [
            f"$JS.API.DIRECT.GET.KV_lantau_approvals.$KV.lantau_approvals.{OTHER}.x",
            "$JS.API.DIRECT.GET.KV_lantau_approvals",
            "lantau.request.approval.bob",
            f"lantau.request.sign.{TRADER}",
            f"$KV.lantau_approvals.{TRADER}.x",
            SIGN_ORDER,
        ],
        [f"lantau.event.approval.{TRADER}.>"],
        [f"lantau.event.approval.{OTHER}.>", "lantau.event.>", "lantau.result.>"],
    ),
    node_identity(NODE): (
        ["_INBOX_signer.probe", "_INBOX_operator.probe"],
        [
            "lantau.hsm.beat.hsm-2",
            SIGN_ORDER,
            f"_INBOX_{requester_identity(TRADER)}.x",
            "_INBOX.x",
            "$JS.API.STREAM.DELETE.LANTAU_ORDERS",
            f"lantau.result.{TRADER}.x",
        ],
        [],
        [hsm_rpc_subject("hsm-2", ">"), "_INBOX_signer.>", "lantau.hsm.beat.*"],
    ),
    SIGNER: (
        ["$JS.API.STREAM.INFO.KV_lantau_keys"],
        [
            SIGN_ORDER,
            f"lantau.request.sign.{TRADER}",
            "$JS.API.STREAM.CREATE.EVIL",
            "$JS.API.STREAM.UPDATE.LANTAU_ORDERS",
            "$JS.API.STREAM.PURGE.LANTAU_ORDERS",
            "$JS.API.CONSUMER.CREATE.LANTAU_ORDERS",
            "$JS.API.CONSUMER.DELETE.LANTAU_ORDERS.signer",
            "$KV.lantau_approvals.x",
            f"_INBOX_{requester_identity(TRADER)}.x",
        ],
        ["lantau.hsm.beat.*"],
        [hsm_rpc_subject(NODE, ">"), "lantau.result.>", "_INBOX_operator.>"],
    ),
    POLICY: (
        ["$JS.API.DIRECT.GET.KV_lantau_keys.$KV.lantau_keys.none"],
        [
            hsm_rpc_subject(NODE, "sign"),
            "$JS.API.STREAM.DELETE.LANTAU_ORDERS",
            "$KV.lantau_keys.x",
            "lantau.auditlog.record",
            "lantau.audit.intent.x",
        ],
        [],
        ["lantau.request.>", "lantau.hsm.beat.*"],
    ),
    AUDIT_ROLE: (
        ["$JS.API.STREAM.INFO.LANTAU_AUDIT_LOG"],
        [SIGN_ORDER, "$JS.API.STREAM.PURGE.LANTAU_AUDIT_LOG", "$JS.API.STREAM.DELETE.LANTAU_DLQ"],
        [],
        ["lantau.auditlog.>"],
    ),
    BACKUP: (
        [],
        [hsm_rpc_subject(NODE, "generate"), SIGN_ORDER, "$JS.API.STREAM.DELETE.KV_lantau_keys"],
        ["lantau.hsm.beat.*"],
        [],
    ),
    OPERATOR: (
        ["$JS.API.STREAM.INFO.LANTAU_ORDERS", "$JS.API.STREAM.MSG.GET.LANTAU_REQUESTS"],
        [
            "$JS.API.STREAM.DELETE.LANTAU_ORDERS",
            "$JS.API.STREAM.PURGE.LANTAU_AUDIT_LOG",
            "$JS.API.CONSUMER.CREATE.LANTAU_AUDIT_LOG",
            SIGN_ORDER,
            hsm_rpc_subject(NODE, "sign"),
            "$KV.lantau_keys.x",
        ],
        [],
        ["lantau.>", "_INBOX_signer.>"],
    ),
    PROVISIONER: (
        ["$JS.API.STREAM.INFO.LANTAU_ORDERS"],
        [SIGN_ORDER, hsm_rpc_subject(NODE, "sign"), f"lantau.request.sign.{TRADER}"],
        [],
        ["lantau.>", "$JS.API.>"],
    ),
}


@pytest.mark.parametrize("identity", list(MATRIX))
async def test_each_identity_gets_exactly_its_allow_list(platform, identity):
    allowed_pub, refused_pub, allowed_sub, refused_sub = MATRIX[identity]
    nc = await platform.connect_as(identity)
    try:
        for subject in allowed_pub:
            assert not await publish_refused(nc, subject), f"{identity} refused {subject}"
        for subject in refused_pub:
            assert await publish_refused(nc, subject), f"{identity} may publish {subject}"
        for subject in allowed_sub:
            assert not await subscribe_refused(nc, subject), f"{identity} refused sub {subject}"
        for subject in refused_sub:
            assert await subscribe_refused(nc, subject), f"{identity} may subscribe {subject}"
        assert nc.is_connected  # violations are refused, not fatal
    finally:
        await nc.close()


async def _refused_to_connect(platform: DevStack, **options: object) -> BaseException:
    try:
        nc = await nats.connect(
            platform.config.nats.servers,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            connect_timeout=3,
            **options,
        )
    except Exception as e:
        return e
    await nc.close()
    raise AssertionError(f"connected with {sorted(options)}")


async def test_anonymous_connections_are_refused(platform):
    error = await _refused_to_connect(platform, tls=tls_context(platform.config.nats))
    assert "Authorization Violation" in str(error)


async def test_an_unknown_seed_is_refused(platform, tmp_path):
    write_seed(tmp_path / "stranger.seed")
    error = await _refused_to_connect(
        platform,
        tls=tls_context(platform.config.nats),
        nkeys_seed=str(tmp_path / "stranger.seed"),
    )
    assert "Authorization Violation" in str(error)


async def test_plain_connections_are_refused(platform):
    """TLS is required: a client that does not speak it gets nowhere, seed or not."""
    seed = str(platform.seed_file(requester_identity(TRADER)))
    plain = [u.replace("tls://", "nats://") for u in platform.config.nats.servers]
    try:
        nc = await nats.connect(
            plain,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            connect_timeout=3,
            nkeys_seed=seed,
            tls_handshake_first=False,
        )
    except Exception:
        return
    await nc.close()
    raise AssertionError("a connection without TLS was accepted")


async def test_a_client_without_a_certificate_is_refused(platform):
    """Mutual TLS: the server's CA alone is not enough."""
    no_cert = ssl.create_default_context(cafile=platform.config.nats.ca_file)
    seed = str(platform.seed_file(requester_identity(TRADER)))
    await _refused_to_connect(platform, tls=no_cert, nkeys_seed=seed)


async def test_a_requester_cannot_call_an_hsm_node(platform):
    nc = await platform.connect_as(requester_identity(TRADER))
    try:
        with pytest.raises(LantauError) as refused:
            # Whatever the command says: the bus refuses the RPC before the node sees it
            # (what the node itself checks is tests/e2e of the HSM boundary).
            await RemoteHsm(nc, NODE, timeout_s=5).call("sign", HsmPublicKey(key_id="desk-a-x"))
        assert refused.value.code == ErrorCode.PERMISSION_DENIED
    finally:
        await nc.close()


async def test_a_requester_cannot_publish_an_order(platform):
    """Whatever the order says (what the signer and the node check is the HSM-boundary
    tests' business): the bus refuses it, typed and at once."""
    nc = await platform.connect_as(requester_identity(TRADER))
    forged = codec.encode(Decision(policy_version="forged", rule="forged", explanation="x"))
    try:
        started = time.monotonic()
        with pytest.raises(LantauError) as refused:
            await violations.guarded(nc, SIGN_ORDER, nc.jetstream().publish(SIGN_ORDER, forged))
        assert refused.value.code == ErrorCode.PERMISSION_DENIED
        assert time.monotonic() - started < 2, "a refusal must not wait out a timeout"
    finally:
        await nc.close()


async def test_a_requester_reads_only_its_own_results(platform, client, other):
    await other.create_key(f"{OTHER}-k", "secp256k1")
    theirs = await other.sign(f"{OTHER}-k", hashlib.sha256(b"private").digest())
    assert theirs.status == "signed"
    js = client.connection.jetstream()
    # Stored results: direct get of another requester's subject, by sequence, by API.
    with pytest.raises(LantauError) as refused:
        await last_on_subject(js, RESULTS.name, result_subject(OTHER, theirs.request_id))
    assert refused.value.code == ErrorCode.PERMISSION_DENIED
    for attempt in (
        js.get_msg(RESULTS.name, seq=1, direct=True),
        js.get_msg(RESULTS.name, seq=1),
        js.stream_info(RESULTS.name),
    ):
        with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
            await asyncio.wait_for(attempt, timeout=3)
    # Live results: the subscription is refused (the client's own still works).
    assert await subscribe_refused(client.connection, f"lantau.result.{OTHER}.>")
    assert await client.get_result(theirs.request_id) is None  # its own namespace: empty
    assert (await other.get_result(theirs.request_id)).signature == theirs.signature


async def test_no_stream_with_republish_into_the_orders(platform, nc):
    """Trap 1: a stream whose republish lands in lantau.order.> would forge orders; the
    server does not check republish destinations, so only the provisioner may make
    streams, and no running service or client can."""
    evil = StreamConfig(
        name="EVIL",
        subjects=["evil.>"],
        republish=RePublish(src=">", dest="lantau.order.sign"),
    )
    for identity in (requester_identity(TRADER), SIGNER, POLICY, OPERATOR):
        conn = await platform.connect_as(identity)
        try:
            started = time.monotonic()
            with pytest.raises(LantauError) as refused:
                await violations.guarded(
                    conn, "$JS.API.STREAM.CREATE.EVIL", conn.jetstream().add_stream(evil)
                )
            assert refused.value.code == ErrorCode.PERMISSION_DENIED, identity
            assert time.monotonic() - started < 2
        finally:
            await conn.close()
    admin = await platform.connect_as(PROVISIONER)  # the one identity that may look
    try:
        with pytest.raises(nats.js.errors.NotFoundError):
            await admin.jetstream().stream_info("EVIL")
    finally:
        await admin.close()


async def test_no_purge_or_delete_of_streams(platform, nc):
    for identity in (requester_identity(TRADER), SIGNER, POLICY, AUDIT_ROLE, OPERATOR):
        conn = await platform.connect_as(identity)
        js = conn.jetstream()
        try:
            for api, op in (
                (f"$JS.API.STREAM.PURGE.{ORDERS.name}", js.purge_stream(ORDERS.name)),
                (f"$JS.API.STREAM.DELETE.{ORDERS.name}", js.delete_stream(ORDERS.name)),
                (
                    f"$JS.API.CONSUMER.DELETE.{ORDERS.name}.signer",
                    js.delete_consumer(ORDERS.name, "signer"),
                ),
            ):
                with pytest.raises(LantauError) as refused:
                    await violations.guarded(conn, api, op)
                assert refused.value.code == ErrorCode.PERMISSION_DENIED, (identity, api)
        finally:
            await conn.close()
    info = await nc.jetstream().stream_info(ORDERS.name)
    assert info.config.name == ORDERS.name


def _violations_of(platform: DevStack, process: str) -> float:
    with urllib.request.urlopen(platform.url(process, "/metrics"), timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("lantau_bus_permission_violations_total{")
    )


async def test_a_reply_to_aimed_at_the_jetstream_api_goes_nowhere(platform, nc):
    """Trap 2: a caller allowed to ask an hsm-node (the signer) or a signer (the operator)
    sets the reply subject to the JetStream API; the responder may answer only on its
    callers' inbox prefixes, so its reply is refused and the stream stays."""
    target = f"$JS.API.STREAM.DELETE.{ORDERS.name}"
    before_node = _violations_of(platform, NODE)
    before_signer = _violations_of(platform, "signer")
    signer = await platform.connect_as(SIGNER)
    operator = await platform.connect_as(OPERATOR)
    try:
        await signer.publish(
            hsm_rpc_subject(NODE, "public_key"),
            codec.encode(HsmPublicKey(key_id="any")),
            reply=target,
        )
        await operator.publish(ADMIN_POOL_STATUS, b"", reply=target)
        await signer.flush()
        await operator.flush()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if (
                _violations_of(platform, NODE) > before_node
                and _violations_of(platform, "signer") > before_signer
            ):
                break
            await asyncio.sleep(0.2)
        assert _violations_of(platform, NODE) > before_node, "the node's reply was not refused"
        assert _violations_of(platform, "signer") > before_signer
    finally:
        await signer.close()
        await operator.close()
    info = await nc.jetstream().stream_info(ORDERS.name)
    assert info.config.name == ORDERS.name


async def test_another_requesters_signed_request_on_ones_own_subject_is_refused(
    platform, client, other, other_key
):
    """desk-a holds a request genuinely signed by desk-b (leaked, say) and sends it on the
    only subject it may use, its own: policy sees the subject name desk-a and the body
    desk-b, refuses it (SUBJECT_MISMATCH, dead-lettered) and writes no result for desk-b."""
    stolen = other.sign_request(f"{OTHER}-k", hashlib.sha256(b"stolen").digest())
    publish_as_desk_a = client.connection.jetstream()
    ack = await publish_as_desk_a.publish(f"lantau.request.sign.{TRADER}", codec.encode(stolen))
    admin = await platform.connect_as(PROVISIONER)
    try:
        sub = await admin.jetstream().subscribe("lantau.dlq.LANTAU_REQUESTS", ordered_consumer=True)
        record = None
        deadline = time.monotonic() + 15
        while record is None and time.monotonic() < deadline:
            try:
                msg = await sub.next_msg(timeout=1)
            except TimeoutError:
                continue
            found = codec.REJECTED.decode(msg.data)
            if found.stream_seq == ack.seq:
                record = found
        await sub.unsubscribe()
    finally:
        await admin.close()
    assert record is not None and record.code == ErrorCode.SUBJECT_MISMATCH
    assert await other.get_result(stolen.request_id) is None


async def test_legitimate_traffic_still_signs_after_the_attacks(platform, client):
    """The requester's own request, the legitimate way, still works after all of it."""
    await client.create_key("desk-a-after", "secp256k1")
    result = await client.sign("desk-a-after", hashlib.sha256(b"after the attacks").digest())
    assert result.status == "signed"


async def test_requesters_come_and_go_without_restarting_nats(platform):
    key = nacl.signing.SigningKey.generate()
    newcomer = RequesterConfig(
        name="desk-c",
        public_key=key.verify_key.encode().hex(),
        keys=["desk-c-*"],
        may_create_keys=True,
        blind_keys=["desk-c-*"],
    )
    nats_pid = platform.nats.proc.pid
    await asyncio.to_thread(platform.add_requester, newcomer)
    # Policy, the signer and the hsm-nodes read the requesters (and pin their keys) at
    # start; NATS applies the new user without a restart.
    for name in ("policy", "signer", NODE):
        await platform.restart(name)
    client = await connect_client(platform, key, "desk-c")
    lost = asyncio.Event()
    try:
        made = await client.create_key("desk-c-k", "secp256k1")
        assert made.status == "created"
        signed = await client.sign("desk-c-k", hashlib.sha256(b"newcomer").digest())
        assert signed.status == "signed"

        async def watch() -> None:
            while client.connection.is_connected:  # noqa: ASYNC110 (nats-py has no event)
                await asyncio.sleep(0.05)
            lost.set()

        watcher = asyncio.create_task(watch())
        await asyncio.to_thread(platform.remove_requester, "desk-c")
        await asyncio.wait_for(lost.wait(), timeout=10)
        watcher.cancel()
        # It keeps trying: every reconnect is refused.
        await asyncio.sleep(2)
        assert not client.connection.is_connected
        assert "Authorization" in str(client.connection.last_error)
    finally:
        await client.close()
        await client.connection.close()
    with pytest.raises(Exception, match="Authorization"):
        await platform.connect_as(requester_identity("desk-c"))
    assert platform.nats.proc.pid == nats_pid and platform.nats.proc.alive
