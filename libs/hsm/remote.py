"""HsmBackend that talks to an hsm-node process over NATS request/reply."""

from __future__ import annotations

from typing import TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client

from libs import tracing
from libs.bus.violations import guarded
from libs.hsm.backend import Liveness
from proto import codec
from proto.errors import ErrorCode, LantauError, TransientError
from proto.hsm import (
    HsmCapabilities,
    HsmCapabilitiesQuery,
    HsmCloneCheck,
    HsmCommand,
    HsmFailure,
    HsmGenerate,
    HsmKey,
    HsmPublicKey,
    HsmReply,
    HsmSign,
    HsmSignature,
    HsmSignCheckpoint,
    HsmUnwrap,
    HsmWrap,
    HsmWrapped,
)
from proto.subjects import hsm_rpc_subject

R = TypeVar("R", bound=msgspec.Struct)


# A probe asks for a key that cannot exist: any answer proves the node serves requests.
_PROBE = HsmPublicKey(key_id="lantau-probe")


class RemoteHsm:
    """An hsm-node process reached over NATS; alive as long as its health beats say so."""

    liveness: Liveness = "beats"

    def __init__(self, nc: Client, node_id: str, *, timeout_s: float) -> None:
        self.name = node_id
        self._nc = nc
        self._timeout_s = timeout_s

    async def call(self, op: str, command: HsmCommand, timeout_s: float | None = None) -> HsmReply:
        subject = hsm_rpc_subject(self.name, op)
        with tracing.span(f"hsm {op}", kind=tracing.SpanKind.CLIENT, node=self.name):
            return await self._call(op, subject, command, timeout_s)

    async def _call(
        self, op: str, subject: str, command: HsmCommand, timeout_s: float | None
    ) -> HsmReply:
        try:
            msg = await guarded(
                self._nc,
                subject,
                self._nc.request(
                    subject,
                    codec.encode(command),
                    timeout=timeout_s or self._timeout_s,
                    headers=tracing.inject({}),
                ),
            )
        except nats.errors.NoRespondersError:
            raise TransientError(
                ErrorCode.HSM_UNAVAILABLE,
                f"hsm node {self.name} is not serving",
                delivered=False,
            ) from None
        except (nats.errors.TimeoutError, TimeoutError):
            raise TransientError(
                ErrorCode.DEADLINE_EXCEEDED, f"hsm node {self.name} did not answer {op} in time"
            ) from None
        try:
            reply = codec.HSM_REPLY.decode(msg.data)
        except LantauError as e:
            raise TransientError(
                ErrorCode.HSM_ERROR, f"hsm node {self.name}: bad reply: {e.message}"
            ) from None
        if isinstance(reply, HsmFailure):
            if reply.retryable:
                raise TransientError(
                    ErrorCode(reply.code), f"hsm node {self.name}: {reply.message}"
                )
            raise LantauError(ErrorCode(reply.code), reply.message)
        return reply

    async def generate(self, cmd: HsmGenerate) -> HsmKey:
        return _expect(await self.call("generate", cmd), HsmKey)

    async def public_key(self, key_id: str, path: str | None = None) -> HsmKey:
        return _expect(
            await self.call("public_key", HsmPublicKey(key_id=key_id, path=path)), HsmKey
        )

    async def sign(self, cmd: HsmSign) -> list[bytes]:
        return (await self.sign_reply(cmd)).signatures

    async def sign_reply(self, cmd: HsmSign) -> HsmSignature:
        return _expect(await self.call("sign", cmd), HsmSignature)

    async def sign_checkpoint(self, cmd: HsmSignCheckpoint) -> bytes:
        return _one(_expect(await self.call("sign_checkpoint", cmd), HsmSignature))

    async def clone_check(self, cmd: HsmCloneCheck) -> bytes:
        return _one(_expect(await self.call("clone_check", cmd), HsmSignature))

    async def wrap(self, cmd: HsmWrap) -> bytes:
        return _expect(await self.call("wrap", cmd), HsmWrapped).wrapped

    async def unwrap(self, cmd: HsmUnwrap) -> HsmKey:
        return _expect(await self.call("unwrap", cmd), HsmKey)

    async def probe(self) -> None:
        try:
            await self.call("public_key", _PROBE)
        except LantauError:
            return  # the node answered (the probe key does not exist): it serves

    async def capabilities(self) -> HsmCapabilities:
        return _expect(await self.call("capabilities", HsmCapabilitiesQuery()), HsmCapabilities)

    async def close(self) -> None:
        return None


def _one(reply: HsmSignature) -> bytes:
    if len(reply.signatures) != 1:
        raise TransientError(ErrorCode.HSM_ERROR, "expected one signature")
    return reply.signatures[0]


def _expect(reply: HsmReply, kind: type[R]) -> R:
    if not isinstance(reply, kind):
        raise TransientError(ErrorCode.HSM_ERROR, f"unexpected reply {type(reply).__name__}")
    return reply
