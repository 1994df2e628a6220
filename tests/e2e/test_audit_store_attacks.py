"""Attacks on the store: the log stream deleted and rewritten through the JetStream API, its
block file edited or cut back on disk, appends that keep failing. Each is detected and
named; the audit service halts instead of building on a log it cannot trust, and drops
no fact."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import coincurve
import msgspec
import pytest
from nats.js.api import DiscardPolicy

from libs.audit import checkpoint as cp
from libs.audit import logread, merkle, records
from libs.audit.trail import Keys
from libs.audit.verify import missing_facts, verify
from libs.bus.permissions import AUDIT_ROLE, PROVISIONER
from libs.bus.provision import provision
from libs.client import CustodyClient
from proto import codec
from proto.audit import AuditCheckpoint, AuditRecord
from proto.subjects import AUDIT_CHAIN, AUDIT_SOURCE_STREAMS, DEAD_LETTERS
from tests.conftest import connect_client, fast_redelivery
from tests.e2e.test_audit import (
    at_rest,
    audit_cli,
    checkpoint_key,
    eventually,
    metric,
    pins,
    readiness,
    record_key,
    service_log,
)


def _fast(cfg):
    cfg = fast_redelivery(cfg)
    audit = msgspec.structs.replace(
        cfg.audit, checkpoint_interval_s=1.0, checkpoint_every=8, append_retry_s=3.0
    )
    return msgspec.structs.replace(cfg, audit=audit)


@pytest.fixture(scope="module")
def platform_options():
    return {"nodes": 2, "tweak": _fast}


async def _traffic(stack, trader_key, n: int = 40) -> CustodyClient:
    client = await connect_client(stack, trader_key)
    await client.create_key("desk-a-store", "secp256k1")
    requests = [
        client.sign_request("desk-a-store", hashlib.sha256(f"s-{i}".encode()).digest())
        for i in range(n)
    ]
    for r in requests:  # one at a time: many small records, many checkpoints
        assert (await client.send(r)).status == "signed"
    return client


class Attacker:
    """Whoever runs the NATS store: JetStream's admin API (the provisioner's identity) and
    the audit log's subjects (the audit service's identity, not its keys)."""

    def __init__(self, admin, writer) -> None:
        self.admin, self.writer = admin, writer
        self.js, self.publish = admin.jetstream(), writer.jetstream().publish

    @classmethod
    async def of(cls, stack) -> Attacker:
        return cls(await stack.connect_as(PROVISIONER), await stack.connect_as(AUDIT_ROLE))

    async def close(self) -> None:
        await self.admin.close()
        await self.writer.close()


async def _checkpointed(js, keys: Keys, at_least: int) -> None:
    """Wait for a trail at rest: at least ``at_least`` checkpoints, the last over every
    fact the sources held when asked."""
    expected = []
    for spec in AUDIT_SOURCE_STREAMS:
        last = (await js.stream_info(spec.name)).state.last_seq
        if last:
            expected.append((spec.name, last))

    async def done() -> bool:
        t = verify(await logread.read_all(js), keys).trail
        return t.checkpoints >= at_least and await at_rest(js, keys, expected)

    await eventually(done, 60)


def _block_files(stack) -> list[Path]:
    found = sorted(stack.nats.store_dir.rglob(f"streams/{AUDIT_CHAIN.name}/msgs/*.blk"))
    assert found, "no block file for the audit log"
    return found


async def test_the_log_stream_replaced_by_a_prefix_or_a_consistent_forgery_is_caught(
    fresh_platform, trader_key
):
    stack = fresh_platform
    client = await _traffic(stack, trader_key)
    attacker = await Attacker.of(stack)
    try:
        js = attacker.js
        keys = Keys(frozenset({record_key(stack)}), (await checkpoint_key(js),))
        await _checkpointed(js, keys, 4)
        saved = stack.run_dir / "saved-checkpoint.json"
        out = audit_cli(
            stack, "verify", *pins(stack, keys.checkpoint_keys[0]), "--save-checkpoint", str(saved)
        )
        assert out.returncode == 0, out.stdout
        items = await logread.read_all(js)
        raws = [(await js.get_msg(AUDIT_CHAIN.name, i.log_seq)) for i in items]

        # 1. Delete the stream (deny_delete stops message deletes, not this), recreate it
        #    and put back the entries up to the second checkpoint.
        second = [i.log_seq for i in items if isinstance(i.entry, AuditCheckpoint)][1]
        await js.delete_stream(AUDIT_CHAIN.name)
        await provision(js, stack.config.nats)
        for raw in raws[:second]:
            await attacker.publish(raw.subject, raw.data)
        alone = audit_cli(stack, "verify", *pins(stack, keys.checkpoint_keys[0]), "--no-sources")
        since = audit_cli(
            stack, "verify", *pins(stack, keys.checkpoint_keys[0]), "--since", str(saved)
        )
        assert since.returncode == 1 and "FAILED at log seq" in since.stdout, since.stdout
        assert "are gone (the log was truncated" in since.stdout
        witness = stack.config.audit.witness_files[0]
        witnessed = audit_cli(
            stack, "verify", *pins(stack, keys.checkpoint_keys[0]), "--witness", witness
        )
        assert witnessed.returncode == 1 and "are gone" in witnessed.stdout, witnessed.stdout
        assert alone.returncode in (
            0,
            1,
        )  # a prefix alone may look whole: that is why witnesses exist
        # The audit service notices and stops building on it.
        await eventually(lambda: metric(stack, "audit", "lantau_audit_halted") == 1)
        said = readiness(stack, "audit")
        print(f"\naudit /readyz: {said}")
        assert "halted: the log shrank" in said
        assert "AUDIT HALTED" in service_log(stack, "audit")

        # 2. Replace it with a complete, consistent log written with the attacker's keys.
        await js.delete_stream(AUDIT_CHAIN.name)
        await provision(js, stack.config.nats)
        attacker_records = records.RecordKey(os.urandom(32))
        attacker_cp = coincurve.PrivateKey(os.urandom(32))
        head, frontier, last_cp = records.GENESIS_HASH, merkle.Frontier(), 0
        for item in items:
            if isinstance(item.entry, AuditRecord):
                r = records.new_record(
                    seq=item.entry.seq,
                    prev_hash=head,
                    at_ms=item.entry.at_ms,
                    facts=item.entry.facts,
                    key=attacker_records,
                )
                head = r.hash
                frontier = merkle.append(frontier, records.leaf_hash(r))
                await attacker.publish("lantau.auditlog.record", codec.encode(r))
            elif isinstance(item.entry, AuditCheckpoint):
                c = msgspec.structs.replace(
                    item.entry,
                    root=merkle.frontier_root(frontier).hex(),
                    head_hash=head,
                    prev_tree_size=last_cp,
                    record_key=attacker_records.public_hex,
                )
                digest = cp.digest(c)
                sig = attacker_cp.sign_recoverable(digest, hasher=None)[:64]
                c = msgspec.structs.replace(c, signature=sig)
                last_cp = c.tree_size
                await attacker.publish("lantau.auditlog.checkpoint", codec.encode(c))
        forged = audit_cli(stack, "verify", *pins(stack, keys.checkpoint_keys[0]), "--no-sources")
        assert forged.returncode == 1 and "FAILED at log seq 1" in forged.stdout, forged.stdout
        assert "not a pinned record key" in forged.stdout
        only_hsm_key = audit_cli(stack, "verify", "--trusted-key", keys.checkpoint_keys[0].hex())
        assert only_hsm_key.returncode == 1 and "FAILED at log seq 1" in only_hsm_key.stdout
        witnessed = audit_cli(
            stack, "verify", *pins(stack, keys.checkpoint_keys[0]), "--witness", witness
        )
        assert witnessed.returncode == 1, witnessed.stdout
    finally:
        await attacker.close()
        await client.close()


async def test_a_block_file_cut_back_and_a_byte_edited_on_disk_are_named(
    fresh_platform, trader_key
):
    stack = fresh_platform
    client = await _traffic(stack, trader_key)
    attacker = await Attacker.of(stack)
    js = attacker.js
    keys = Keys(frozenset({record_key(stack)}), (await checkpoint_key(js),))
    await _checkpointed(js, keys, 4)
    saved = stack.run_dir / "saved-checkpoint.json"
    out = audit_cli(
        stack, "verify", *pins(stack, keys.checkpoint_keys[0]), "--save-checkpoint", str(saved)
    )
    assert out.returncode == 0, out.stdout
    items = await logread.read_all(js)
    checkpoints = [i for i in items if isinstance(i.entry, AuditCheckpoint)]
    cut_after = checkpoints[1]
    cut_raw = (await js.get_msg(AUDIT_CHAIN.name, cut_after.log_seq)).data
    victim = next(
        i
        for i in items
        if isinstance(i.entry, AuditRecord) and 3 < i.log_seq < cut_after.log_seq - 1
    )
    victim_raw = (await js.get_msg(AUDIT_CHAIN.name, victim.log_seq)).data
    await attacker.close()
    await client.close()

    # 1. Stop everything; cut the block file back to the second checkpoint, as if nothing
    #    came after it (the index goes too, so the server forgets the later sequences).
    await asyncio.to_thread(stack.procs.stop_all)
    await asyncio.to_thread(stack.nats.stop)
    blk = _block_files(stack)[0]
    data = blk.read_bytes()
    at = data.find(cut_raw)
    assert at > 0
    blk.write_bytes(data[: at + len(cut_raw) + 8])  # the message and its 8-byte checksum
    for extra in _block_files(stack)[1:]:
        extra.unlink()
    (blk.parent / "index.db").unlink(missing_ok=True)
    await asyncio.to_thread(stack.nats.start)
    alone = audit_cli(stack, "verify", *pins(stack, keys.checkpoint_keys[0]), "--no-sources")
    since = audit_cli(
        stack,
        "verify",
        *pins(stack, keys.checkpoint_keys[0]),
        "--no-sources",
        "--since",
        str(saved),
    )
    assert since.returncode == 1 and "are gone (the log was truncated" in since.stdout, since.stdout
    witness = stack.config.audit.witness_files[0]
    witnessed = audit_cli(
        stack, "verify", *pins(stack, keys.checkpoint_keys[0]), "--no-sources", "--witness", witness
    )
    assert witnessed.returncode == 1 and "are gone" in witnessed.stdout, witnessed.stdout
    assert alone.returncode in (0, 1)
    # The audit service, started on it, refuses to build on a log its witness outgrew.
    stack.service("audit").start()
    await eventually(lambda: _halted(stack), 60)
    said = readiness(stack, "audit")
    print(f"\naudit /readyz: {said}")
    assert "witnessed a checkpoint of" in said

    # 2. One byte of a record edited on disk: the verifier names it, no traceback.
    await asyncio.to_thread(stack.procs.stop_all)
    await asyncio.to_thread(stack.nats.stop)
    blk = _block_files(stack)[0]
    data = bytearray(blk.read_bytes())
    at = data.find(victim_raw)
    assert at > 0
    data[at + len(victim_raw) // 2] ^= 0x01
    blk.write_bytes(bytes(data))
    await asyncio.to_thread(stack.nats.start)
    edited = audit_cli(stack, "verify", *pins(stack, keys.checkpoint_keys[0]), "--no-sources")
    assert edited.returncode == 1, edited.stdout
    assert f"FAILED at log seq {victim.log_seq}" in edited.stdout, edited.stdout
    assert "Traceback" not in edited.stdout + edited.stderr

    # 3. The same edit with the index removed: the server, rebuilding, stops at the damaged
    #    message and forgets the rest. That is a truncation, caught by the saved checkpoint.
    await asyncio.to_thread(stack.nats.stop)
    (blk.parent / "index.db").unlink(missing_ok=True)
    await asyncio.to_thread(stack.nats.start)
    alone = audit_cli(stack, "verify", *pins(stack, keys.checkpoint_keys[0]), "--no-sources")
    since = audit_cli(
        stack,
        "verify",
        *pins(stack, keys.checkpoint_keys[0]),
        "--no-sources",
        "--since",
        str(saved),
    )
    assert since.returncode == 1 and "are gone" in since.stdout, since.stdout
    assert alone.returncode in (0, 1) and "Traceback" not in alone.stdout + alone.stderr


def _halted(stack) -> bool:
    try:
        return metric(stack, "audit", "lantau_audit_halted") == 1
    except OSError:
        return False


async def test_an_append_that_keeps_failing_halts_the_service_and_drops_no_fact(
    fresh_platform, trader_key
):
    stack = fresh_platform
    client = await _traffic(stack, trader_key, 10)
    attacker = await Attacker.of(stack)
    try:
        js = attacker.js
        keys = Keys(frozenset({record_key(stack)}), (await checkpoint_key(js),))
        await _checkpointed(js, keys, 1)
        # The log refuses every append (a full disk, a broken stream, a wrong permission).
        info = await js.stream_info(AUDIT_CHAIN.name)
        await js.update_stream(_full(info.config, info.state.messages))
        requests = [
            client.sign_request("desk-a-store", hashlib.sha256(f"h-{i}".encode()).digest())
            for i in range(20)
        ]
        results = await asyncio.gather(*(client.send(r) for r in requests))
        assert all(r.status == "signed" for r in results)  # signing goes on, fail closed
        await eventually(lambda: metric(stack, "audit", "lantau_audit_halted") == 1, 30)
        said = readiness(stack, "audit")
        print(f"\naudit /readyz: {said}")
        assert "halted: could not append record" in said
        halted = [ln for ln in service_log(stack, "audit").splitlines() if "AUDIT HALTED" in ln]
        print(f"audit log: {halted[0] if halted else None}")
        assert halted
        dlq = await js.stream_info(DEAD_LETTERS.name)
        assert dlq.state.messages == 0, "a fact was dead-lettered"
        # The runbook: provision the stream back to its settings (the provisioner's job:
        # no service manages streams), restart the audit service; every fact gets recorded.
        await provision(js, stack.config.nats)
        await stack.restart("audit")
        expected = []
        for spec in AUDIT_SOURCE_STREAMS:
            last = (await js.stream_info(spec.name)).state.last_seq
            if last:
                expected.append((spec.name, last))

        async def all_recorded() -> bool:
            report = verify(await logread.read_all(js), keys)
            return report.ok and not missing_facts(report.trail, expected)

        await eventually(all_recorded, 60)
        out = audit_cli(stack, "verify", *pins(stack, keys.checkpoint_keys[0]))
        assert out.returncode == 0, out.stdout
    finally:
        await attacker.close()
        await client.close()


def _full(config, messages: int):
    config.max_msgs = messages
    config.discard = DiscardPolicy.NEW
    return config
