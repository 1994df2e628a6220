"""The one interface every HSM backend implements.

Failures are LantauError when retrying cannot help (unknown key, bad input) and
TransientError when another attempt or another node may succeed.
"""

from __future__ import annotations

from typing import Protocol

from proto.common import Curve
from proto.hsm import HsmKey


class HsmBackend(Protocol):
    name: str

    async def generate(self, key_id: str, curve: Curve) -> HsmKey:
        """Create a key pair inside the HSM (idempotent: an existing key is returned)."""
        ...

    async def public_key(self, key_id: str) -> HsmKey: ...

    async def sign(self, key_id: str, curve: Curve, data: bytes) -> bytes:
        """Raw signature as the token returns it (r||s or the EdDSA signature)."""
        ...

    async def close(self) -> None: ...
