"""Attacks by someone who can publish on the audit log's subjects (only the audit
service's identity may: these tests hold its credentials, not its record key), against
the live platform: each is detected, named by its log sequence, and alerting; the trail
goes on."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import msgspec
import nats.errors
import nats.js.errors
import pytest

from devkit import auditrest
from libs.audit import logread, records
from libs.audit.trail import Keys
from libs.audit.verify import verify
from libs.bus import kv
from libs.bus.permissions import AUDIT_ROLE, node_identity
from proto import codec
from proto.audit import AuditCheckpoint, AuditFact, AuditRecord
from proto.hsm import HsmReceipt, HsmReceipts
from proto.subjects import (
    AUDIT_CHAIN,
    AUDIT_CHECKPOINT,
    AUDIT_CHECKPOINT_KEY,
    AUDIT_LOG,
    AUDIT_SOURCE_STREAMS,
    AUDIT_STATE_BUCKET,
    AUDIT_STATE_WITNESS,
    DEAD_LETTERS,
    RECEIPTS,
    receipt_subject,
    result_subject,
)
from tests.conftest import TRADER, connect_client, fast_redelivery
from tests.e2e.test_audit import (
    at_rest,
    audit_cli,
    checkpoint_key,
    eventually,
    metric,
    pins,
    record_key,
    service_log,
)


def _two_sinks_fast_checkpoints(cfg):
    cfg = fast_redelivery(cfg)
    first = Path(cfg.audit.witness_files[0])
    second = first.parent.parent / "witness-2" / "checkpoints.jsonl"
    second.parent.mkdir(parents=True, exist_ok=True)
    audit = msgspec.structs.replace(
        cfg.audit, witness_files=[str(first), str(second)], checkpoint_interval_s=1.0
    )
    return msgspec.structs.replace(cfg, audit=audit)


@pytest.fixture(scope="module")
def platform_options():
    return {"nodes": 2, "tweak": _two_sinks_fast_checkpoints}


@pytest.fixture(scope="module")
async def trader(platform, trader_key):
    c = await connect_client(platform, trader_key)
    await c.create_key("desk-a-bus", "secp256k1")
    yield c
    await c.close()


@pytest.fixture(scope="module")
async def forger(platform):
    """The audit service's bus credentials in the wrong hands (without its record key)."""
    conn = await platform.connect_as(AUDIT_ROLE)
    yield conn.jetstream()
    await conn.close()


@pytest.fixture(scope="module")
async def js(nc):
    """What an auditor reads with: the read-only operator identity."""
    return nc.jetstream()


async def _sign(client, n: int, tag: str, timeout_s: float = 30.0) -> list:
    requests = [
        client.sign_request("desk-a-bus", hashlib.sha256(f"{tag}-{i}".encode()).digest())
        for i in range(n)
    ]
    return list(await asyncio.gather(*(client.send(r, timeout=timeout_s) for r in requests)))


async def _wait_result(client, request_id: str, timeout_s: float = 30.0):
    found: list[object] = []

    async def done() -> bool:
        found[:] = [await client.get_result(request_id)]
        return found[0] is not None

    await eventually(done, timeout_s)
    return found[0]


async def _keys(platform, js) -> Keys:
    return Keys(frozenset({record_key(platform)}), (await checkpoint_key(js),))


async def _noted(js, keys: Keys, log_seq: int) -> bool:
    """True once a record the audit service wrote names ``log_seq`` as skipped."""
    report = verify(await logread.read_all(js), keys)
    return report.ok and any(s == log_seq for s, _ in report.trail.quarantined)


async def _quarantine_count(platform) -> float:
    return metric(platform, "audit", "lantau_audit_quarantined_total") or 0.0


async def test_an_idle_log_comes_to_rest_under_its_newest_checkpoint(platform, trader, js):
    """Not an attack, but first in this module while its platform is quiet. A checkpoint's
    own signature is a fact (the node's receipt); it must not call for a checkpoint of its
    own, or an idle log would grow by a record and a checkpoint every interval forever
    (1 s here) and its head would never be under a checkpoint."""
    assert all(r.status == "signed" for r in await _sign(trader, 3, "then-idle"))
    keys = await _keys(platform, js)
    await eventually(lambda: _quiet(js, keys))
    await asyncio.sleep(6)  # six checkpoint intervals
    # Every checkpoint was called for by news: a record since the one before that holds
    # more than checkpoint echoes (the platform may still be cloning its new keys).
    items = await logread.read_all(js)
    news, uncalled, checkpoints = False, [], 0
    for item in items:
        if isinstance(item.entry, AuditRecord):
            news = news or not await auditrest.echoes_only(js, item.entry)
        elif isinstance(item.entry, AuditCheckpoint):
            checkpoints += 1
            if not news:
                uncalled.append(item.entry.tree_size)
            news = False
    print(f"\n{checkpoints} checkpoints; called for by echoes only: {uncalled}")
    assert checkpoints and not uncalled
    # At rest again: at most the echo of the newest checkpoint is after it.
    await eventually(lambda: _quiet(js, keys))


async def _quiet(js, keys: Keys) -> bool:
    """At rest over everything the audit's sources hold now."""
    names = [s.name for s in AUDIT_SOURCE_STREAMS]
    return await at_rest(js, keys, [(n, (await js.stream_info(n)).state.last_seq) for n in names])


async def test_a_node_cannot_hide_news_behind_a_checkpoint_echo(platform, trader, js):
    """An hsm-node's identity (one compromised host) publishes receipts that look like
    the echo of a checkpoint, once alone and once with a signature receipt in the same
    batch. Both are recorded; the batch with news is under a checkpoint within the
    interval (1 s here), not checkpoint_idle_s (60 s): an echo never delays news."""
    keys = await _keys(platform, js)
    await eventually(lambda: _quiet(js, keys))  # nobody else's news to carry ours
    node = await platform.connect_as(node_identity("hsm-1"))
    try:
        node_js = node.jetstream()
        echo = HsmReceipt(
            op="sign_checkpoint", key_id=AUDIT_CHECKPOINT_KEY, outcome="done", at_ms=1
        )
        news = HsmReceipt(op="sign", key_id="desk-a-bus", outcome="done", at_ms=1)
        subject = receipt_subject("hsm-1")
        alone = await node_js.publish(
            subject, codec.encode(HsmReceipts(node="hsm-1", receipts=[echo]))
        )
        await eventually(lambda: at_rest(js, keys, [(RECEIPTS.name, alone.seq)]))
        mixed = await node_js.publish(
            subject, codec.encode(HsmReceipts(node="hsm-1", receipts=[echo, news]))
        )
    finally:
        await node.close()
    expected = [(RECEIPTS.name, alone.seq), (RECEIPTS.name, mixed.seq)]
    await eventually(lambda: at_rest(js, keys, expected), 15)
    c = verify(await logread.read_all(js), keys).trail.last_checkpoint
    assert c is not None and c.cursors.get(RECEIPTS.name, 0) >= mixed.seq


async def test_a_forged_record_chained_on_the_head_is_quarantined_never_certified(
    platform, trader, js, forger
):
    await _sign(trader, 3, "before-forgery")
    keys = await _keys(platform, js)
    before = await _quarantine_count(platform)
    # The attacker chains a correct-looking record on the real head: "alice signed".
    items = await logread.read_all(js)
    head = [i.entry for i in items if isinstance(i.entry, AuditRecord)][-1]
    attacker = records.RecordKey(os.urandom(32))
    fake = AuditFact(
        stream="LANTAU_REQUESTS",
        seq=10**6,
        sha256="ab" * 32,
        event_type="sign_request",
        actor="alice",
        request_id="alice-never-asked",
    )
    forged = records.new_record(
        seq=head.seq + 1, prev_hash=head.hash, at_ms=head.at_ms + 1, facts=[fake], key=attacker
    )
    ack = await forger.publish(AUDIT_LOG, codec.encode(forged))
    await eventually(lambda: _noted(js, keys, ack.seq))
    assert await _quarantine_count(platform) >= before + 1
    assert f"quarantined log seq {ack.seq}" in service_log(platform, "audit")
    await _sign(trader, 2, "after-forgery")  # the trail goes on
    out = audit_cli(platform, "verify", *pins(platform, keys.checkpoint_keys[0]))
    assert out.returncode == 0, out.stdout
    assert f"log seq {ack.seq}: a record signed by {attacker.public_hex[:16]}" in out.stdout
    shown = audit_cli(platform, "show", "--request", "alice-never-asked")
    assert shown.returncode == 1 and "no audit records" in shown.stdout
    # Never chained, so never certified: no checkpoint's tree has it as a leaf.
    reports = []

    async def certified_past_it() -> bool:
        reports[:] = [verify(await logread.read_all(js), keys)]
        return reports[0].ok and reports[0].trail.last_cp_size > head.seq

    await eventually(certified_past_it)
    assert records.leaf_hash(forged) not in reports[0].trail.leaves


async def test_sixteen_random_bytes_on_the_log_subject_are_skipped_and_named(
    platform, trader, js, forger
):
    keys = await _keys(platform, js)
    ack = await forger.publish(AUDIT_LOG, os.urandom(16))
    await eventually(lambda: _noted(js, keys, ack.seq))
    # The next real facts are chained, none is dead-lettered.
    results = await _sign(trader, 3, "after-garbage")
    assert all(r.status == "signed" for r in results)
    report = verify(await logread.read_all(js), keys)
    assert report.ok, report.summary()
    dlq = await js.stream_info(DEAD_LETTERS.name)
    assert dlq.state.messages == 0, "a fact was dead-lettered"
    out = audit_cli(platform, "verify", *pins(platform, keys.checkpoint_keys[0]))
    assert out.returncode == 0, out.stdout
    assert f"log seq {ack.seq}: not an audit entry (16 bytes" in out.stdout


async def test_a_replayed_checkpoint_is_quarantined(platform, trader, js, forger):
    keys = await _keys(platform, js)
    items = await logread.read_all(js)
    old = next(i for i in items if isinstance(i.entry, AuditCheckpoint))
    raw = (await js.get_msg(AUDIT_CHAIN.name, old.log_seq)).data
    ack = await forger.publish(AUDIT_CHECKPOINT, raw)
    await eventually(lambda: _noted(js, keys, ack.seq))
    out = audit_cli(platform, "verify", *pins(platform, keys.checkpoint_keys[0]))
    assert out.returncode == 0, out.stdout
    size = old.entry.tree_size
    assert f"log seq {ack.seq}: a copy of the checkpoint of tree size {size}" in out.stdout


async def _status(js):
    value, _ = await kv.read(await js.key_value(AUDIT_STATE_BUCKET), AUDIT_STATE_WITNESS)
    return codec.WITNESS_STATUS.decode(value) if value else None


async def test_a_lost_witness_sink_alerts_and_signing_goes_on(platform, trader, js, forger):
    sinks = platform.config.audit.witness_files
    lost = Path(sinks[1]).parent
    moved = lost.with_name(lost.name + ".away")
    lost.rename(moved)
    try:
        await eventually(
            lambda: metric(platform, "audit", "lantau_audit_witness_up", sink=sinks[1]) == 0
        )
        assert "witness sink" in service_log(platform, "audit")
        results = await _sign(trader, 3, "one-sink-lost")
        assert all(r.status == "signed" for r in results)
        assert metric(platform, "audit", "lantau_audit_witnessed") == 1
    finally:
        moved.rename(lost)
    await eventually(
        lambda: metric(platform, "audit", "lantau_audit_witness_up", sink=sinks[1]) == 1
    )
    keys = await _keys(platform, js)
    for sink in sinks:
        out = audit_cli(
            platform, "verify", *pins(platform, keys.checkpoint_keys[0]), "--witness", sink
        )
        assert out.returncode == 0, out.stdout


async def test_losing_every_witness_sink_pauses_signing_until_one_returns(
    platform, trader, js, forger
):
    dirs = [Path(s).parent for s in platform.config.audit.witness_files]
    for d in dirs:
        d.rename(d.with_name(d.name + ".away"))
    try:
        await eventually(lambda: metric(platform, "audit", "lantau_audit_witnessed") == 0)
        await eventually(lambda: metric(platform, "signer", "lantau_signing_paused") == 1)
        status = await _status(js)
        assert status is not None and not status.witnessed and "witness" in status.reason
        request = trader.sign_request("desk-a-bus", hashlib.sha256(b"while-unwitnessed").digest())
        await trader.submit(request)
        await asyncio.sleep(3)
        assert await trader.get_result(request.request_id) is None, "signed while unwitnessed"
        assert "signing paused" in service_log(platform, "signer")
    finally:
        for d in dirs:
            d.with_name(d.name + ".away").rename(d)
    result = await _wait_result(trader, request.request_id)
    assert result.status == "signed"
    assert metric(platform, "signer", "lantau_signing_paused") == 0
    assert metric(platform, "audit", "lantau_audit_witnessed") == 1


async def test_proofs_from_the_command_line_check_with_lantau_and_with_the_recipe(
    platform, trader, js, forger
):
    import json

    from tests.audit.test_merkle_doc_recipe import recipe

    keys = await _keys(platform, js)
    pinned = pins(platform, keys.checkpoint_keys[0])
    saved = platform.run_dir / "auditor-saved.json"
    assert audit_cli(platform, "verify", *pinned, "--save-checkpoint", str(saved)).returncode == 0
    results = await _sign(trader, 4, "after-saving")
    assert all(r.status == "signed" for r in results), results
    subject = result_subject(TRADER, results[-1].request_id)
    found: list[int] = []

    async def stored() -> bool:  # the client hears a result as the stream stores it
        try:
            found[:] = [(await js.get_last_msg("LANTAU_RESULTS", subject)).seq]
        except nats.js.errors.NotFoundError:
            return False
        return True

    await eventually(stored)
    subject_seq = found[0]

    await eventually(lambda: at_rest(js, keys, [("LANTAU_RESULTS", subject_seq)]))
    grew = platform.run_dir / "consistency.json"
    out = audit_cli(platform, "prove", *pinned, "--from", str(saved), "--out", str(grew))
    assert out.returncode == 0, out.stdout + out.stderr
    included = platform.run_dir / "inclusion.json"
    fact = f"LANTAU_RESULTS:{subject_seq}"
    out = audit_cli(platform, "prove", *pinned, "--fact", fact, "--out", str(included))
    assert out.returncode == 0, out.stdout + out.stderr
    for doc in (grew, included):
        said = lantau_check(doc, pinned, saved)
        assert said.returncode == 0 and said.stdout.startswith("OK:"), said.stdout
    # The same documents, checked with the page's own code (hashlib and json only).
    ns = recipe()
    c = json.loads(grew.read_text())
    assert ns["check_consistency"](json.dumps(c["proof"]), c["old"]["root"], c["new"]["root"])
    i = json.loads(included.read_text())
    assert any(
        f["stream"] == "LANTAU_RESULTS" and f["seq"] == subject_seq for f in i["record"]["facts"]
    )
    assert ns["check_inclusion"](json.dumps(i["proof"]), i["checkpoint"]["root"])
    # A proof doctored to another old root is refused.
    c["old"]["root"] = "00" * 32
    grew.write_text(json.dumps(c))
    said = lantau_check(grew, pinned, None)
    assert said.returncode == 1 and said.stdout.startswith("FAILED"), said.stdout


def lantau_check(doc, pinned, saved):
    from tests.e2e.helpers import lantau

    extra = ["--since", str(saved)] if saved is not None else []
    out = lantau("audit", "check-proof", str(doc), *pinned, *extra)
    print(
        f"\n$ lantau audit check-proof {doc.name}\n{out.stdout}{out.stderr}(exit {out.returncode})"
    )
    return out


async def test_acknowledging_ahead_with_the_audit_credentials_drops_no_fact(
    platform, trader, js, forger
):
    """The audit's durables acknowledge cumulatively (ack policy "all"): whoever holds its
    bus credentials can pull facts and acknowledge the newest, which acknowledges every
    earlier fact, including those in the audit service's hands. The audit still records
    each of them: it records each stream in order and reads a hole from the stream."""
    from libs.audit.verify import missing_facts
    from proto.subjects import AUDIT_SOURCES, REQUESTS

    spec = next(s for s in AUDIT_SOURCES if s.stream is REQUESTS)
    stolen = await forger.pull_subscribe_bind(spec.durable, spec.stream.name)
    taken: list[int] = []
    signed = asyncio.Event()

    async def steal() -> None:
        while not signed.is_set():
            try:
                msgs = await stolen.fetch(10, timeout=0.5)
            except nats.errors.TimeoutError:
                continue
            if msgs:
                taken.extend(m.metadata.sequence.stream for m in msgs)
                await msgs[-1].ack_sync()  # acknowledges every earlier fact too

    thief = asyncio.create_task(steal())
    results: list = []
    for n in range(5):  # the audit's own pulls may win every fact of a round
        results += await _sign(trader, 40, f"ack-ahead-{n}")
        if taken:
            break
    signed.set()
    await asyncio.wait_for(thief, 10)
    await stolen.unsubscribe()
    assert all(r.status == "signed" for r in results)
    assert taken, "the stolen credentials pulled nothing"
    last = (await js.stream_info(REQUESTS.name)).state.last_seq
    keys = await _keys(platform, js)

    async def all_recorded() -> bool:
        report = verify(await logread.read_all(js), keys)
        assert report.ok, report.summary()
        return not missing_facts(report.trail, [(REQUESTS.name, last)])

    await eventually(all_recorded, 60)
    trail = verify(await logread.read_all(js), keys).trail
    assert not [g for g in trail.gaps if g[0] == REQUESTS.name], "a stolen fact became a gap"
