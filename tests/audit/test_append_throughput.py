"""Batched appends against a real nats-server (fsync on every write): one record per batch
must carry many times the facts per second of one record per fact; and a restart resumes
from the saved frontier instead of re-reading the log. Prints what it measured."""

from __future__ import annotations

import asyncio
import os
import time

import coincurve

from libs import curves
from libs.audit import merkle
from libs.audit.records import RecordKey
from libs.bus.connect import connect
from libs.bus.provision import provision
from libs.config import AuditConfig
from services.audit.appender import Appender
from services.audit.sinks import Sinks
from services.audit.state import StateStore, WriterState
from services.audit.writer import LogWriter

CP_KEY = coincurve.PrivateKey(b"\x03" * 32)


async def _sign(checkpoint) -> tuple[bytes, bytes]:
    """A software stand-in for the HSM: what is measured here is the log."""
    from libs.audit import checkpoint as cp

    digest = cp.digest(checkpoint)
    pub = CP_KEY.public_key.format()
    raw = CP_KEY.sign_recoverable(digest, hasher=None)[:64]
    return pub, curves.finalize("secp256k1", pub, digest, raw).signature


async def _append(js, writer: LogWriter, facts: int, batch: int, tmp) -> float:
    cfg = AuditConfig(batch_max_facts=batch, batch_wait_ms=2.0, checkpoint_every=100)
    appender = Appender(
        js,
        writer,
        cfg,
        sign_checkpoint=_sign,
        sinks=Sinks([str(tmp / "w.jsonl")]),
        state=await StateStore.open(js),
        sources=[],
        on_halt=lambda reason: None,
    )
    stop = asyncio.Event()
    loop = asyncio.create_task(appender.run(stop))
    start = writer.trail.cursors.get("LANTAU_REQUESTS", 0)
    slots = asyncio.Semaphore(256)  # what one audit consumer keeps in flight

    async def one(seq: int) -> None:
        async with slots:
            await appender.offer("LANTAU_REQUESTS", seq, os.urandom(120))

    t0 = time.perf_counter()
    await asyncio.gather(*(one(start + i) for i in range(1, facts + 1)))
    elapsed = time.perf_counter() - t0
    stop.set()
    await loop
    assert writer.trail.cursors["LANTAU_REQUESTS"] == start + facts
    return facts / elapsed


async def test_batches_multiply_append_throughput_and_restarts_resume(nats_server, tmp_path):
    _, cfg = nats_server()
    nc = await connect(cfg, "audit-throughput", identity="tester")
    try:
        js = nc.jetstream()
        await provision(js, cfg)
        writer = LogWriter(js, RecordKey(b"\x05" * 32))
        await writer.load(None)
        single = await _append(js, writer, 1500, 1, tmp_path)
        batched = await _append(js, writer, 20000, 256, tmp_path)
        records = writer.trail.head_seq
        print(
            f"\nappend throughput, fsync'd: one record per fact {single:.0f} facts/s; "
            f"batches of up to 256 {batched:.0f} facts/s ({batched / single:.1f}x); "
            f"{records} records"
        )
        assert batched > 5 * single

        # A restart: reading the whole log again, against resuming from the saved state.
        pub = CP_KEY.public_key.format()
        full = LogWriter(js, RecordKey(b"\x05" * 32), checkpoint_key=pub)
        t0 = time.perf_counter()
        assert await full.load(None) == "read the whole log"
        read_all = time.perf_counter() - t0
        assert full.trail.head_seq == records and full.trail.frontier == writer.trail.frontier
        state = await (await StateStore.open(js)).writer()
        assert state is not None
        resumed = LogWriter(js, RecordKey(b"\x05" * 32), checkpoint_key=pub)
        t0 = time.perf_counter()
        assert await resumed.load(state) == "resumed from the saved state"
        resume = time.perf_counter() - t0
        assert resumed.trail.frontier == writer.trail.frontier
        assert resumed.trail.cursors == writer.trail.cursors
        print(
            f"restart: reading and verifying all {records} records took {read_all:.2f} s "
            f"({records / read_all:.0f} records/s); resuming from the saved frontier {resume:.3f} s"
        )
        # A tampered state is refused, never trusted: the whole log is read instead.
        forged = WriterState(
            checkpoint_log_seq=state.checkpoint_log_seq,
            head_log_seq=state.head_log_seq,
            frontier=merkle.append(state.frontier, b"\x00" * 32),
        )
        again = LogWriter(js, RecordKey(b"\x05" * 32), checkpoint_key=pub)
        assert await again.load(forged) == "read the whole log"
        assert again.trail.frontier == writer.trail.frontier
    finally:
        await nc.close()
