"""Cumulative acknowledgements (ack policy "all", the audit's durables) on a real nats-server.

What must hold: messages finished together cost one acknowledgement; nothing above a
message still being handled is acknowledged; a durable made by an earlier release (ack
policy "explicit") is replaced by provisioning and resumes after its floor, and until it is,
a consumer acknowledging cumulatively still leaves nothing to be delivered forever.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from devkit.natsserver import NatsServer
from libs.bus.connect import connect
from libs.bus.consume import Consumer, Delivery
from libs.bus.provision import ensure_consumer
from libs.config import NatsConfig
from proto.subjects import ConsumerSpec, StreamSpec

STREAM = StreamSpec("T_FACTS", ("t.fact.>",), "facts for the test")
SPEC = ConsumerSpec(STREAM, "audit", unlimited_redelivery=True, cumulative_acks=True)


async def _bus(
    start: Callable[[], tuple[NatsServer, NatsConfig]],
) -> tuple[NatsServer, NatsConfig, Client]:
    server, cfg = start()
    nc = await connect(cfg, "cumulative-test")
    await nc.jetstream().add_stream(StreamConfig(name=STREAM.name, subjects=list(STREAM.subjects)))
    return server, cfg, nc


async def _publish(js: JetStreamContext, n: int) -> None:
    for i in range(n):
        await js.publish(f"t.fact.{i}", str(i).encode())


def _acks_from(server: NatsServer, name: str) -> int:
    """Messages the named connection published (pull requests and acknowledgements)."""
    with urllib.request.urlopen(f"{server.monitor_url}/connz?limit=100") as r:
        conns = json.load(r)["connections"]
    return sum(c["in_msgs"] for c in conns if c.get("name") == name)


async def _until(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_messages_finished_together_take_one_acknowledgement(nats_server) -> None:
    server, cfg, nc = await _bus(nats_server)
    js = nc.jetstream()
    try:
        await ensure_consumer(js, SPEC, ack_wait_s=30)
        info = await js.consumer_info(STREAM.name, SPEC.durable)
        assert info.config.ack_policy == AckPolicy.ALL
        await _publish(js, 40)
        reader = await connect(cfg, "cumulative-reader")
        seen: list[int] = []
        release = asyncio.Event()

        async def handle(_data: bytes, delivery: Delivery) -> None:
            seen.append(delivery.stream_seq)
            if len(seen) == 40:
                release.set()
            await release.wait()  # all finish in one step, as a record of the audit does

        consumer = Consumer(
            reader,
            reader.jetstream(),
            SPEC,
            bytes,
            handle,
            batch=64,
            concurrency=64,
            dead_letter=False,
        )
        stop = asyncio.Event()
        running = asyncio.create_task(consumer.run(stop))

        async def all_acked() -> bool:
            i = await js.consumer_info(STREAM.name, SPEC.durable)
            return i.num_ack_pending == 0 and i.ack_floor.stream_seq == 40

        await _until(all_acked)
        stop.set()
        await running
        await reader.close()
        # One pull request (maybe two) and one acknowledgement for the forty messages.
        assert _acks_from(server, "cumulative-reader") <= 4, "one acknowledgement per message"
        assert sorted(seen) == list(range(1, 41))
    finally:
        await nc.close()


async def test_nothing_above_a_message_still_handled_is_acknowledged(nats_server) -> None:
    """Message 3 is still in the handler (in order: 4 and 5 wait for it, as the audit's
    appender makes them); nothing is acknowledged until it is finished."""
    _, _, nc = await _bus(nats_server)
    js = nc.jetstream()
    try:
        await ensure_consumer(js, SPEC, ack_wait_s=30)
        await _publish(js, 5)
        done: dict[int, asyncio.Event] = {i: asyncio.Event() for i in range(1, 6)}

        async def handle(_data: bytes, delivery: Delivery) -> None:
            seq = delivery.stream_seq
            if seq > 1:
                await done[seq - 1].wait()  # recorded in order
            if seq == 3:
                await gate.wait()
            done[seq].set()

        gate = asyncio.Event()
        consumer = Consumer(nc, js, SPEC, bytes, handle, dead_letter=False)
        stop = asyncio.Event()
        running = asyncio.create_task(consumer.run(stop))
        await _until(lambda: _floor_is(js, 2))
        await asyncio.sleep(0.3)
        info = await js.consumer_info(STREAM.name, SPEC.durable)
        assert info.ack_floor.stream_seq == 2 and info.num_ack_pending == 3
        gate.set()
        await _until(lambda: _floor_is(js, 5))
        stop.set()
        await running
    finally:
        await nc.close()


async def _floor_is(js: JetStreamContext, seq: int) -> bool:
    info = await js.consumer_info(STREAM.name, SPEC.durable)
    return info.ack_floor.stream_seq == seq


async def test_provisioning_replaces_an_explicit_durable_after_its_floor(nats_server) -> None:
    _, _, nc = await _bus(nats_server)
    js = nc.jetstream()
    try:
        await js.add_consumer(
            STREAM.name,
            ConsumerConfig(durable_name=SPEC.durable, ack_policy=AckPolicy.EXPLICIT),
        )
        await _publish(js, 6)
        sub = await js.pull_subscribe_bind(SPEC.durable, STREAM.name)
        first = await sub.fetch(4)
        for m in first[:3]:
            await m.ack_sync()  # floor 3; message 4 delivered, never acknowledged
        await sub.unsubscribe()

        await ensure_consumer(js, SPEC, ack_wait_s=30)

        info = await js.consumer_info(STREAM.name, SPEC.durable)
        assert info.config.ack_policy == AckPolicy.ALL
        sub = await js.pull_subscribe_bind(SPEC.durable, STREAM.name)
        again = await sub.fetch(3)
        assert [m.metadata.sequence.stream for m in again] == [4, 5, 6]
        await sub.unsubscribe()
        # Provisioning again keeps the durable and its state.
        await ensure_consumer(js, SPEC, ack_wait_s=30)
        assert (await js.consumer_info(STREAM.name, SPEC.durable)).num_ack_pending == 3
    finally:
        await nc.close()


async def test_an_unreplaced_explicit_durable_is_still_acknowledged_in_full(nats_server) -> None:
    """Before provisioning replaces it, the explicit durable redelivers what the one
    cumulative acknowledgement did not cover; the redeliveries are acknowledged one by one."""
    _, _, nc = await _bus(nats_server)
    js = nc.jetstream()
    try:
        await js.add_consumer(
            STREAM.name,
            ConsumerConfig(durable_name=SPEC.durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=1),
        )
        await _publish(js, 10)
        handled: list[tuple[int, int]] = []

        async def handle(_data: bytes, delivery: Delivery) -> None:
            handled.append((delivery.stream_seq, delivery.count))

        consumer = Consumer(nc, js, SPEC, bytes, handle, dead_letter=False)
        stop = asyncio.Event()
        running = asyncio.create_task(consumer.run(stop))

        async def all_acked() -> bool:
            i = await js.consumer_info(STREAM.name, SPEC.durable)
            return i.num_ack_pending == 0 and i.num_pending == 0

        await _until(all_acked, timeout_s=15)
        await asyncio.sleep(1.5)  # past another ack wait: nothing comes again
        count = len(handled)
        await asyncio.sleep(1.5)
        assert len(handled) == count
        stop.set()
        await running
        assert {seq for seq, _ in handled} == set(range(1, 11))
    finally:
        await nc.close()
