"""backup: follows key creation events to replicate keys across the HSM domain.

This first cut keeps a durable subscription to key events (so no creation is missed
while replication is being built) and records each key it has seen.
"""

from __future__ import annotations

import logging

from nats.aio.msg import Msg

from libs.bus import Consumer
from libs.service import Runtime
from proto import codec
from proto.errors import ErrorCode, LantauError
from proto.events import KeyCreated
from proto.subjects import BACKUP_KEY_EVENTS

log = logging.getLogger("lantau.backup")


class Backup:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.seen: set[str] = set()

    async def handle(self, msg: Msg) -> None:
        event = codec.EVENT.decode(msg.data)
        if not isinstance(event, KeyCreated):
            raise LantauError(
                ErrorCode.WRONG_MESSAGE_TYPE, f"expected key_created, got {type(event).__name__}"
            )
        if event.key_id not in self.seen:
            self.seen.add(event.key_id)
            log.info("key %s (%s) created on %s", event.key_id, event.curve, event.node)


async def serve(rt: Runtime) -> None:
    backup = Backup(rt)
    consumer = Consumer(rt.nc, rt.js, BACKUP_KEY_EVENTS, backup.handle, name="backup")
    rt.set_ready("startup", True)
    await consumer.run(rt.stopping)
