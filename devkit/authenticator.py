"""A software security key for the headless demo and for tests of pure logic: it makes
WebAuthn registrations (attestation "none") and assertions the way a CTAP2 authenticator
and a browser would, with an ECDSA P-256 key (cryptography, CBOR by cbor2). It speaks the
console's JSON (PublicKeyCredential JSON, base64url), so the demo drives the same HTTP
path a browser does. Never a substitute for a real key: its private keys are in memory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

UP, UV, AT = 0x01, 0x04, 0x40


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class SoftAuthenticator:
    origin: str
    # Clear to make an assertion without user verification (a key without its PIN).
    verifies_user: bool = True
    # P-256 keys it made; Ed25519 keys may be loaded (a browser's virtual key exported).
    keys: dict[bytes, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey] = field(
        default_factory=dict
    )
    counter: int = 0

    def _flags(self) -> int:
        return UP | (UV if self.verifies_user else 0)

    def _client_data(self, kind: str, challenge: str) -> bytes:
        return json.dumps(
            {"type": kind, "challenge": challenge, "origin": self.origin, "crossOrigin": False}
        ).encode()

    def register(self, options: dict[str, Any]) -> dict[str, Any]:
        """navigator.credentials.create() for these options (the console's JSON)."""
        rp_id = options["rp"]["id"]
        key = ec.generate_private_key(ec.SECP256R1())
        credential_id = os.urandom(32)
        self.keys[credential_id] = key
        numbers = key.public_key().public_numbers()
        cose = {
            1: 2,
            3: -7,
            -1: 1,
            -2: numbers.x.to_bytes(32, "big"),
            -3: numbers.y.to_bytes(32, "big"),
        }
        attested = bytes(16) + struct.pack(">H", len(credential_id)) + credential_id
        auth_data = (
            hashlib.sha256(rp_id.encode()).digest()
            + bytes([self._flags() | AT])
            + struct.pack(">I", 0)
            + attested
            + cbor2.dumps(cose)
        )
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        client_data = self._client_data("webauthn.create", options["challenge"])
        return {
            "id": b64url(credential_id),
            "rawId": b64url(credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation),
                "transports": ["usb"],
            },
            "clientExtensionResults": {},
        }

    def assertion(self, options: dict[str, Any]) -> dict[str, Any]:
        """navigator.credentials.get() for these options, with the first allowed key
        this authenticator holds."""
        allowed = [unb64url(c["id"]) for c in options.get("allowCredentials", [])]
        credential_id = next((c for c in allowed if c in self.keys), None)
        if credential_id is None:
            raise LookupError("none of the allowed credentials is on this authenticator")
        self.counter += 1
        auth_data = (
            hashlib.sha256(options["rpId"].encode()).digest()
            + bytes([self._flags()])
            + struct.pack(">I", self.counter)
        )
        client_data = self._client_data("webauthn.get", options["challenge"])
        key = self.keys[credential_id]
        signed = auth_data + hashlib.sha256(client_data).digest()
        if isinstance(key, ed25519.Ed25519PrivateKey):
            signature = key.sign(signed)
        else:
            signature = key.sign(signed, ec.ECDSA(hashes.SHA256()))
        return {
            "id": b64url(credential_id),
            "rawId": b64url(credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data),
                "authenticatorData": b64url(auth_data),
                "signature": b64url(signature),
                "userHandle": None,
            },
            "clientExtensionResults": {},
        }
