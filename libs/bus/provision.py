"""Streams, consumers and KV buckets: created or updated by provisioning, not by services."""

from __future__ import annotations

import dataclasses
import logging

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from libs.config import NatsConfig
from proto.subjects import (
    ALL_BUCKETS,
    ALL_CONSUMERS,
    ALL_STREAMS,
    AUDIT_CHAIN,
    ConsumerSpec,
    kv_stream,
)

log = logging.getLogger("lantau.bus")

MAX_DELIVER = 8
ACK_WAIT_S = 30.0


async def provision(js: JetStreamContext, cfg: NatsConfig) -> None:
    """Create or update every stream, consumer and KV bucket; safe to run again."""
    for spec in ALL_STREAMS:
        is_audit_log = spec is AUDIT_CHAIN
        config = StreamConfig(
            name=spec.name,
            subjects=list(spec.subjects),
            description=spec.description,
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=cfg.stream_replicas,
            # The audit chain is kept forever and cannot be edited through the API.
            max_age=0 if is_audit_log else cfg.retention_days * 86400,
            duplicate_window=min(cfg.duplicate_window_s, cfg.retention_days * 86400),
            deny_delete=is_audit_log,
            deny_purge=is_audit_log,
            discard=DiscardPolicy.OLD,
            # Direct gets: how the audit reads the log and checks its sources by sequence
            # without creating a consumer, and reads that the bus can allow per subject
            # ($JS.API.DIRECT.GET.<stream>.<subject>: a requester's own results).
            allow_direct=True,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.update_stream(config)
    for consumer in ALL_CONSUMERS:
        await ensure_consumer(js, consumer, ack_wait_s=cfg.ack_wait_s)
    for bucket in ALL_BUCKETS:
        try:
            await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            await js.create_key_value(
                bucket=bucket,
                history=16,
                replicas=cfg.stream_replicas,
                storage=StorageType.FILE,
                direct=True,
            )
        await _allow_direct(js, kv_stream(bucket))


async def _allow_direct(js: JetStreamContext, stream: str) -> None:
    """KV reads by direct get, so that an identity can be allowed some keys only (nats-py
    creates buckets without it; buckets made by earlier releases are updated here)."""
    info = await js.stream_info(stream)
    if not info.config.allow_direct:
        await js.update_stream(dataclasses.replace(info.config, allow_direct=True))


async def ensure_consumer(
    js: JetStreamContext, spec: ConsumerSpec, *, ack_wait_s: float = ACK_WAIT_S
) -> None:
    config = ConsumerConfig(
        durable_name=spec.durable,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.ALL if spec.cumulative_acks else AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s,
        max_deliver=-1 if spec.unlimited_redelivery else MAX_DELIVER,
        max_ack_pending=4096,
        max_waiting=512,
        filter_subject=spec.filter_subject,
    )
    try:
        await js.add_consumer(spec.stream.name, config)
        return
    except nats.js.errors.APIError:  # a durable with settings that cannot be updated
        pass
    info = await js.consumer_info(spec.stream.name, spec.durable)
    if info.config.ack_policy == config.ack_policy:
        log.info(
            "consumer %s/%s exists with other settings; keeping it", spec.stream.name, spec.durable
        )
        return
    # An ack policy cannot be changed in place (a durable of an earlier release): replace
    # the durable, resuming after its acknowledged floor. Messages acknowledged above the
    # floor come again; the handlers of a durable are idempotent (consume.py).
    floor = info.ack_floor.stream_seq if info.ack_floor else 0
    if floor:
        config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = floor + 1
    await js.delete_consumer(spec.stream.name, spec.durable)
    await js.add_consumer(spec.stream.name, config)
    log.warning(
        "consumer %s/%s replaced to acknowledge %s, resuming after stream sequence %d",
        spec.stream.name,
        spec.durable,
        config.ack_policy.value if config.ack_policy else "?",
        floor,
    )
