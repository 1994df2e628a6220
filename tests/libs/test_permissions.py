"""The allow-lists as pure data: what each identity may and may not touch, and a
rendering nats-server accepts. (The same lists enforced by a real server:
tests/e2e/test_bus_security.py.)"""

from __future__ import annotations

import subprocess

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devkit.natsserver import binary
from libs.bus import permissions as P
from libs.bus.identity import new_seed, public_key
from libs.bus.violations import parse
from libs.config import (
    ApproverConfig,
    Config,
    ConfigError,
    HsmNodeConfig,
    NatsConfig,
    RequesterConfig,
    ServiceNkeys,
)
from proto.subjects import ALL_CONSUMERS, ALL_STREAMS, AUDIT_SOURCES, inbox_prefix

NAME = st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)


def matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` one token, ``>`` one or more at the end."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def allows(patterns: tuple[str, ...], subject: str) -> bool:
    return any(matches(p, subject) for p in patterns)


def nkey() -> str:
    return public_key(new_seed())


def config(**extra: object) -> Config:
    return Config(
        nats=NatsConfig(
            nkeys=ServiceNkeys(
                policy=nkey(),
                signer=nkey(),
                backup=nkey(),
                audit=nkey(),
                operator=nkey(),
                provisioner=nkey(),
                console=nkey(),
            )
        ),
        hsm_nodes=[HsmNodeConfig(id=f"hsm-{i}", token_label=f"t{i}", nkey=nkey()) for i in (1, 2)],
        requesters=[
            RequesterConfig(name=n, public_key="00" * 32, nkey=nkey()) for n in ("desk-a", "desk-b")
        ],
        approvers=[ApproverConfig(name=n, nkey=nkey()) for n in ("alice", "bob")],
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def found() -> dict[str, P.Identity]:
    return {i.name: i for i in P.identities(config(), {"alice": ["desk-a"]})}


MANAGEMENT = [
    f"$JS.API.STREAM.{op}.{s.name}"
    for s in ALL_STREAMS
    for op in ("CREATE", "UPDATE", "DELETE", "PURGE", "MSG.DELETE")
] + [
    f"$JS.API.CONSUMER.{op}.{c.stream.name}.x" for c in ALL_CONSUMERS for op in ("CREATE", "DELETE")
]


def test_every_configured_identity_is_a_user(found):
    assert set(found) == {
        "policy",
        "signer",
        "backup",
        "audit",
        "operator",
        "provisioner",
        "console",
        "node-hsm-1",
        "node-hsm-2",
        "requester-desk-a",
        "requester-desk-b",
        "approver-alice",
        "approver-bob",
    }


def test_only_the_provisioner_may_manage_streams_and_consumers(found):
    for name, ident in found.items():
        refused = [s for s in MANAGEMENT if allows(ident.permissions.publish, s)]
        if name == P.PROVISIONER:
            assert refused == MANAGEMENT
        else:
            assert refused == [], name


def test_every_durable_reader_gets_both_ack_forms(found):
    for role in P.SERVICE_ROLES:
        publish = found[role].permissions.publish
        for spec in ALL_CONSUMERS:
            if allows(publish, f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream.name}.{spec.durable}"):
                assert allows(publish, f"$JS.ACK.{spec.stream.name}.{spec.durable}.1.2.3.4.5")
                assert allows(
                    publish, f"$JS.ACK.dom.acc.{spec.stream.name}.{spec.durable}.1.2.3.4.5.6.7"
                )


def test_only_the_audit_may_acknowledge_the_audits_durables(found):
    """One acknowledgement on an audit durable (ack policy "all") acknowledges every
    earlier fact: nobody but the audit service may send one, or pull from them. (The
    provisioner manages every stream and consumer: it may delete them outright.)"""
    for name, ident in found.items():
        if name == P.PROVISIONER:
            continue
        publish = ident.permissions.publish
        for spec in AUDIT_SOURCES:
            ack = f"$JS.ACK.{spec.stream.name}.{spec.durable}.1.2.3.4.5"
            nxt = f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream.name}.{spec.durable}"
            allowed = allows(publish, ack) or allows(publish, nxt)
            assert allowed == (name == P.AUDIT_ROLE), (name, spec.stream.name)


def test_inboxes_are_private_and_responders_answer_only_their_callers(found):
    for name, ident in found.items():
        subscribe = ident.permissions.subscribe
        assert allows(subscribe, f"{inbox_prefix(name)}.x.y")
        for other in found:
            if other != name:
                assert not allows(subscribe, f"{inbox_prefix(other)}.x.y"), (name, other)
        assert not allows(subscribe, "_INBOX.x.y"), name
        # Nobody may publish into a requester's or approver's inbox: no reply steering.
        for other in ("requester-desk-a", "approver-alice"):
            if other != name:
                assert not allows(ident.permissions.publish, f"{inbox_prefix(other)}.x"), name
    node = found["node-hsm-1"].permissions.publish
    assert {p for p in node if p.startswith("_INBOX")} == {
        "_INBOX_signer.>",
        "_INBOX_backup.>",
        "_INBOX_audit.>",
        "_INBOX_operator.>",
    }
    assert not allows(node, "$JS.API.STREAM.DELETE.LANTAU_ORDERS")


def test_only_policy_issues_orders_and_only_the_signer_and_policy_write_results(found):
    for name, ident in found.items():
        may_order = allows(ident.permissions.publish, "lantau.order.sign.desk.r1")
        assert may_order == (name == "policy"), name
        may_result = allows(ident.permissions.publish, "lantau.result.desk-a.r1")
        assert may_result == (name in ("policy", "signer")), name


def test_hsm_rpc_is_for_the_services_that_use_it(found):
    for name, ident in found.items():

        def may(op: str) -> bool:
            return allows(ident.permissions.publish, f"lantau.hsm.rpc.hsm-1.{op}")  # noqa: B023

        # Only the signer asks for signatures over requests; backup checks clones and
        # audit signs checkpoints through operations that sign nothing else.
        assert may("sign") == (name == "signer"), name
        assert may("wrap") == may("unwrap") == may("clone_check") == (name == "backup"), name
        assert may("sign_checkpoint") == (name == "audit"), name
    assert allows(found["node-hsm-1"].permissions.subscribe, "lantau.hsm.rpc.hsm-1.sign")
    assert allows(found["node-hsm-1"].permissions.publish, "lantau.receipt.hsm-1")
    assert not allows(found["node-hsm-1"].permissions.publish, "lantau.receipt.hsm-2")
    assert not allows(found["node-hsm-1"].permissions.subscribe, "lantau.hsm.rpc.hsm-2.sign")


def test_approvers_read_only_what_their_groups_approve(found):
    alice, bob = found["approver-alice"].permissions, found["approver-bob"].permissions
    held = "$JS.API.DIRECT.GET.KV_lantau_approvals.$KV.lantau_approvals.{}.r1"
    assert allows(alice.publish, held.format("desk-a"))
    assert not allows(alice.publish, held.format("desk-b"))
    assert not allows(bob.publish, held.format("desk-a"))  # in no group
    assert allows(alice.subscribe, "lantau.event.approval.desk-a.r1")
    assert not allows(alice.subscribe, "lantau.event.approval.desk-b.r1")
    assert allows(alice.publish, "lantau.request.approval.alice")
    assert not allows(alice.publish, "lantau.request.approval.bob")


CREDENTIAL_WRITE = "$KV.lantau_credentials.alice.0123456789abcdef0123456789abcdef"
CREDENTIAL_READ = (
    "$JS.API.DIRECT.GET.KV_lantau_credentials.$KV.lantau_credentials.alice."
    "0123456789abcdef0123456789abcdef"
)


def test_only_policy_writes_credentials_and_their_checkers_read_them(found):
    writers = [n for n, i in found.items() if allows(i.permissions.publish, CREDENTIAL_WRITE)]
    assert writers == ["policy"]
    for reader in ("policy", "console", "node-hsm-1", "approver-alice", "operator"):
        assert allows(found[reader].permissions.publish, CREDENTIAL_READ), reader
    for other in ("signer", "backup", "audit", "requester-desk-a"):
        assert not allows(found[other].permissions.publish, CREDENTIAL_READ), other


def test_the_console_votes_and_proposes_but_signs_and_writes_nothing(found):
    console = found["console"].permissions
    for subject in (
        "lantau.request.approval.alice",
        "lantau.request.approval.bob",
        "lantau.request.credential.console",
        "lantau.event.console",
        "$JS.API.DIRECT.GET.KV_lantau_approvals.$KV.lantau_approvals.desk-a.r1",
    ):
        assert allows(console.publish, subject), subject
    for subject in (
        "lantau.request.sign.desk-a",
        "lantau.request.credential.alice",  # endorsements are the approvers' own
        "lantau.order.sign",
        "lantau.result.desk-a.r1",
        "lantau.event.approval.desk-a.r1",  # outcomes are policy's
        "$KV.lantau_approvals.desk-a.r1",
        CREDENTIAL_WRITE,
        "lantau.hsm.rpc.hsm-1.sign",
        "lantau.reply.totp.alice",
    ):
        assert not allows(console.publish, subject), subject
    assert allows(console.subscribe, "lantau.event.approval.desk-a.r1")
    assert not allows(console.subscribe, "lantau.reply.totp.alice")


def test_approvers_send_their_own_credential_requests_and_read_only_their_totp(found):
    alice = found["approver-alice"].permissions
    assert allows(alice.publish, "lantau.request.credential.alice")
    assert not allows(alice.publish, "lantau.request.credential.bob")
    assert not allows(alice.publish, "lantau.request.credential.console")
    assert allows(alice.subscribe, "lantau.reply.totp.alice")
    assert not allows(alice.subscribe, "lantau.reply.totp.bob")
    assert allows(found["policy"].permissions.publish, "lantau.reply.totp.alice")


@settings(max_examples=100, deadline=None)
@given(NAME, NAME)
def test_a_requester_touches_only_its_own_subjects(me, other):
    if me == other:
        return
    grant = P.requester_grant(me)
    assert allows(grant.publish, f"lantau.request.sign.{me}")
    assert allows(grant.subscribe, f"lantau.result.{me}.r")
    for subject in (
        f"lantau.request.sign.{other}",
        f"lantau.request.create_key.{other}",
        f"$JS.API.DIRECT.GET.LANTAU_RESULTS.lantau.result.{other}.r",
        f"lantau.result.{me}.r",  # nobody forges its own result either
        "lantau.order.sign.desk.r1",
    ):
        assert not allows(grant.publish, subject), subject
    assert not allows(grant.subscribe, f"lantau.result.{other}.r")


def test_one_nkey_for_two_identities_is_refused():
    cfg = config()
    same = cfg.requesters[0].nkey
    twice = msgspec.structs.replace(cfg, approvers=[ApproverConfig(name="alice", nkey=same or "")])
    with pytest.raises(ConfigError, match="same nkey"):
        P.identities(twice, {})


def test_names_that_would_widen_a_subject_are_refused():
    for bad in ("a.b", "*", ">", "a b", ""):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"requesters": [{"name": bad, "public_key": "00" * 32}]}, Config)


def test_the_rendering_is_accepted_by_nats_server(tmp_path, found):
    (tmp_path / "auth.conf").write_text(P.render_authorization(list(found.values())))
    (tmp_path / "nats.conf").write_text('listen: 127.0.0.1:4222\ninclude "auth.conf"\n')
    out = subprocess.run(
        [binary(), "-c", str(tmp_path / "nats.conf"), "-t"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0 and "is valid" in out.stdout + out.stderr, out.stderr


def test_violation_messages_as_nats_py_reports_them():
    # nats-py lowercases the server's -ERR line.
    assert parse('nats: permissions violation for publish to "$js.api.stream.info.x"') == (
        "publish",
        "$js.api.stream.info.x",
    )
    assert parse('nats: permissions violation for subscription to "lantau.>"') == (
        "subscribe",
        "lantau.>",
    )
    assert parse("nats: 'Authorization Violation'") is None
