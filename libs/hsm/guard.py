"""The guard in front of one token: every operation only with its evidence, every
operation on the record.

This is what an hsm-node is (it holds the PIN, so it is the last line); the hsm-node
service is a NATS shell around it, and an in-process slot of a vendor module is guarded
the same way. Before the token signs, generates, wraps or unwraps anything, the guard
checks the evidence (libs/evidence.py) for exactly that key and those bytes; a request
signs once (the replay record) and every operation, done or refused, becomes a receipt.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable

from libs.audit import checkpoint as cp
from libs.clock import now_ms
from libs.evidence import (
    Pins,
    check_clone,
    check_create,
    check_sign_bytes,
    check_sign_parties,
    clone_check_message,
)
from libs.hsm.backend import Liveness
from libs.hsm.replay import ReplayLog, Signed, replay
from libs.hsm.token import Pkcs11Token
from proto.authorization import digest_of, statement_hash
from proto.common import Curve
from proto.errors import ErrorCode, LantauError
from proto.hsm import (
    HsmCapabilities,
    HsmCloneCheck,
    HsmGenerate,
    HsmKey,
    HsmReceipt,
    HsmSign,
    HsmSignCheckpoint,
    HsmUnwrap,
    HsmWrap,
)
from proto.requests import SignRequest
from proto.subjects import AUDIT_CHECKPOINT_KEY, request_key

log = logging.getLogger("lantau.hsm_node")

Receipts = Callable[[HsmReceipt], None]


class Guard:
    liveness: Liveness = "in_process"

    def __init__(
        self,
        token: Pkcs11Token,
        *,
        node_id: str,
        pins: Callable[[], Pins],
        replays: ReplayLog,
        on_receipt: Receipts | None = None,
    ) -> None:
        self.name = node_id
        self.token = token
        self._pins = pins
        self._replays = replays
        self._on_receipt = on_receipt or (lambda _r: None)
        self._public: dict[str, HsmKey] = {}
        # Requests being signed now: a concurrent repeat waits for the first.
        self._signing: dict[str, tuple[str, asyncio.Future[list[bytes]]]] = {}

    def _receipt(self, op: str, key_id: str, outcome: str, **kw: object) -> None:
        self._on_receipt(HsmReceipt(op=op, key_id=key_id, outcome=outcome, at_ms=now_ms(), **kw))  # type: ignore[arg-type]

    def _checked(self, op: str, key_id: str, check: Callable[[], object]) -> None:
        try:
            check()
        except LantauError as e:
            self._receipt(op, key_id, "refused", code=str(e.code))
            log.warning("refused %s of key %s: %s", op, key_id, e.message)
            raise

    async def public_key(self, key_id: str) -> HsmKey:
        cached = self._public.get(key_id)
        if cached is None:
            cached = await self.token.public_key(key_id)
            self._public[key_id] = cached
        return cached

    # -- operations ---------------------------------------------------------------

    async def generate(self, cmd: HsmGenerate) -> HsmKey:
        self._checked(
            "generate",
            cmd.key_id,
            lambda: check_create(
                cmd.request,
                cmd.authorization,
                key_id=cmd.key_id,
                curve=cmd.curve,
                node=self.name,
                pins=self._pins(),
                now_ms=now_ms(),
            ),
        )
        key = await self.token.generate(cmd.key_id, cmd.curve)
        a = cmd.authorization
        self._receipt(
            "generate",
            cmd.key_id,
            "done" if key.created else "replayed",
            request_key=request_key(a.requester, a.request_id) if a else "",
            authorization=statement_hash(a) if a else "",
        )
        return key

    async def sign(self, cmd: HsmSign) -> list[bytes]:
        """Sign a request's bytes, once: a repeat gets the signatures already made."""
        request: list[SignRequest] = []
        self._checked(
            "sign",
            cmd.key_id,
            lambda: request.append(
                check_sign_parties(
                    cmd.request,
                    cmd.authorization,
                    cmd.approvals,
                    key_id=cmd.key_id,
                    pins=self._pins(),
                    now_ms=now_ms(),
                )
            ),
        )
        public = (await self.public_key(cmd.key_id)).public_key
        data: list[bytes] = []
        self._checked(
            "sign",
            cmd.key_id,
            lambda: data.extend(check_sign_bytes(request[0], cmd.authorization, public)),
        )
        a = cmd.authorization
        key = request_key(a.requester, a.request_id)
        content = statement_hash(a)
        receipt = {"request_key": key, "authorization": content, "digests": a.digests}
        try:
            done = replay(self._replays.get(key), key, content)
        except LantauError as e:
            self._receipt("sign", cmd.key_id, "refused", code=str(e.code), **receipt)
            raise
        if done is not None:
            self._receipt("sign", cmd.key_id, "replayed", **receipt)
            return done
        if key in self._signing:
            running_content, running = self._signing[key]
            replay(Signed(running_content, []), key, content)  # refuses other content
            return await asyncio.shield(running)
        running = asyncio.get_running_loop().create_future()
        self._signing[key] = (content, running)
        try:
            signatures = [await self.token.sign(cmd.key_id, cmd.curve, d) for d in data]
            # Durable before it leaves the node: a repeat can never make a second one.
            await self._replays.record(key, Signed(content, signatures), a.not_after_ms)
            self._receipt("sign", cmd.key_id, "done", **receipt)
            log.info("signed request %s with key %s", key, cmd.key_id)
            running.set_result(signatures)
            return signatures
        except BaseException as e:
            running.set_exception(e)
            running.exception()  # retrieved: there may be no waiter
            raise
        finally:
            self._signing.pop(key, None)

    async def sign_checkpoint(self, cmd: HsmSignCheckpoint) -> bytes:
        """The audit key signs checkpoints only: the digest is computed here."""

        def check() -> None:
            if cmd.key_id != AUDIT_CHECKPOINT_KEY:
                raise LantauError(
                    ErrorCode.EVIDENCE_REFUSED, f"key {cmd.key_id} does not sign checkpoints"
                )

        self._checked("sign_checkpoint", cmd.key_id, check)
        digest = cp.digest(cmd.checkpoint)
        signature = await self.token.sign(cmd.key_id, "secp256k1", digest)
        self._receipt("sign_checkpoint", cmd.key_id, "done", digests=[digest_of(digest)])
        return signature

    async def clone_check(self, cmd: HsmCloneCheck) -> bytes:
        data = clone_check_bytes(cmd.curve, cmd.key_id, self.name)
        signature = await self.token.sign(cmd.key_id, cmd.curve, data)
        self._receipt("clone_check", cmd.key_id, "done", digests=[digest_of(data)])
        return signature

    def _clone_checked(self, op: str, cmd: HsmWrap | HsmUnwrap) -> None:
        self._checked(
            op,
            cmd.key_id,
            lambda: check_clone(
                cmd.clone,
                cmd.created,
                key_id=cmd.key_id,
                node=self.name,
                as_source=op == "wrap",
                pins=self._pins(),
                now_ms=now_ms(),
            ),
        )

    async def wrap(self, cmd: HsmWrap) -> bytes:
        self._clone_checked("wrap", cmd)
        wrapped = await self.token.wrap(cmd.key_id, cmd.kek_label)
        self._receipt("wrap", cmd.key_id, "done", authorization=statement_hash(cmd.clone))
        return wrapped

    async def unwrap(self, cmd: HsmUnwrap) -> HsmKey:
        self._clone_checked("unwrap", cmd)
        if cmd.public_key != cmd.clone.public_key:
            raise LantauError(ErrorCode.AUTHORIZATION_MISMATCH, "the clone is of another key")
        key = await self.token.unwrap(
            cmd.key_id, cmd.curve, cmd.kek_label, cmd.wrapped, cmd.public_key
        )
        self._receipt("unwrap", cmd.key_id, "done", authorization=statement_hash(cmd.clone))
        return key

    async def probe(self) -> None:
        await self.token.probe()

    async def capabilities(self) -> HsmCapabilities:
        return await self.token.capabilities()

    async def close(self) -> None:
        await self.token.close()


def clone_check_bytes(curve: Curve, key_id: str, node: str) -> bytes:
    """What a clone signs to prove it works: ECDSA signs the statement's SHA-256."""
    message = clone_check_message(key_id, node)
    return hashlib.sha256(message).digest() if curve == "secp256k1" else message
