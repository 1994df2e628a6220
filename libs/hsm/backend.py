"""The one interface every HSM backend implements, whether the token is in this process
(PKCS#11) or behind an hsm-node (NATS request/reply).

Failures are LantauError when retrying cannot help (unknown key, bad input) and
TransientError when another attempt or another node may succeed. Callers ask a
backend what it can do (``capabilities``), never which kind it is.
"""

from __future__ import annotations

from typing import Literal, Protocol

from proto.common import Curve
from proto.hsm import HsmCapabilities, HsmKey

# How the pool learns a backend is alive: health beats on the bus (an hsm-node process
# that can die on its own), or "in_process" (alive exactly as long as its caller).
Liveness = Literal["beats", "in_process"]


class HsmBackend(Protocol):
    name: str
    liveness: Liveness

    async def generate(self, key_id: str, curve: Curve) -> HsmKey:
        """Create a key pair inside the HSM (idempotent: an existing key is returned)."""
        ...

    async def public_key(self, key_id: str) -> HsmKey: ...

    async def sign(
        self, key_id: str, curve: Curve, data: bytes, *, request_key: str = "", deadline_ms: int = 0
    ) -> bytes:
        """Raw signature as the token returns it (r||s or the EdDSA signature).

        ``request_key`` names the request being signed: an hsm-node signs one request once
        and answers a repeat with the same signature (its replay record)."""
        ...

    async def wrap(self, key_id: str, kek_label: str) -> bytes:
        """The private key wrapped under the domain key-encryption key (never plaintext)."""
        ...

    async def unwrap(
        self, key_id: str, curve: Curve, kek_label: str, wrapped: bytes, public_key: bytes
    ) -> HsmKey:
        """Store a wrapped private key (and its public half) in this HSM."""
        ...

    async def probe(self) -> None:
        """Return if the token serves requests; raise TransientError if it does not."""
        ...

    async def capabilities(self) -> HsmCapabilities: ...

    async def close(self) -> None: ...
