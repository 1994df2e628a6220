"""The one interface every HSM backend implements: a guarded token in this process
(``libs.hsm.guard.Guard``) or an hsm-node reached over NATS (``libs.hsm.remote``).

Every operation that uses a private key carries the evidence that allows it (a
requester's signed request and policy's authorization, a clone authorization, a
checkpoint); the guard checks it before the token is asked. Failures are LantauError
when retrying cannot help (unknown key, refused evidence) and TransientError when
another attempt or another node may succeed. Callers ask a backend what it can do
(``capabilities``), never which kind it is.
"""

from __future__ import annotations

from typing import Literal, Protocol

from proto.hsm import (
    HsmCapabilities,
    HsmCloneCheck,
    HsmGenerate,
    HsmKey,
    HsmSign,
    HsmSignature,
    HsmSignCheckpoint,
    HsmUnwrap,
    HsmWrap,
)

# How the pool learns a backend is alive: health beats on the bus (an hsm-node process
# that can die on its own), or "in_process" (alive exactly as long as its caller).
Liveness = Literal["beats", "in_process"]


class HsmBackend(Protocol):
    name: str
    liveness: Liveness

    async def generate(self, cmd: HsmGenerate) -> HsmKey:
        """Create a key pair inside the HSM (idempotent: an existing key is returned)."""
        ...

    async def public_key(self, key_id: str, path: str | None = None) -> HsmKey:
        """The key's public key; an HD key's extended public key at ``path``."""
        ...

    async def sign(self, cmd: HsmSign) -> list[bytes]:
        """Raw signatures as the token returns them (r||s, or the EdDSA signature), one
        per byte string the evidence allows; a repeat returns the same signatures."""
        ...

    async def sign_reply(self, cmd: HsmSign) -> HsmSignature:
        """The same signatures with the public key that made them when it is not the
        key's own (an HD key's child at the request's path)."""
        ...

    async def sign_checkpoint(self, cmd: HsmSignCheckpoint) -> bytes: ...

    async def clone_check(self, cmd: HsmCloneCheck) -> bytes:
        """The key's signature over the fixed clone-check statement of this node."""
        ...

    async def wrap(self, cmd: HsmWrap) -> bytes:
        """The private key wrapped under the domain key-encryption key (never plaintext)."""
        ...

    async def unwrap(self, cmd: HsmUnwrap) -> HsmKey:
        """Store a wrapped private key (and its public half) in this HSM."""
        ...

    async def probe(self) -> None:
        """Return if the token serves requests; raise TransientError if it does not."""
        ...

    async def capabilities(self) -> HsmCapabilities: ...

    async def close(self) -> None: ...
