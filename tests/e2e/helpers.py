"""Assertions shared by end-to-end tests."""

from __future__ import annotations

import subprocess
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, utils
from nats.js import JetStreamContext

from proto.results import SignResult
from proto.subjects import RESULTS, result_subject


def verify_independently(result: SignResult, payload: bytes) -> None:
    """OpenSSL (via cryptography), not the libraries the signer used; raises if invalid."""
    assert result.signature is not None and result.public_key is not None
    if result.curve in ("secp256k1", "bip32-secp256k1"):  # an HD child: its own public key
        r = int.from_bytes(result.signature[:32], "big")
        s = int.from_bytes(result.signature[32:], "big")
        pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), result.public_key)
        pub.verify(
            utils.encode_dss_signature(r, s), payload, ec.ECDSA(utils.Prehashed(hashes.SHA256()))
        )
    else:
        ed25519.Ed25519PublicKey.from_public_bytes(result.public_key).verify(
            result.signature, payload
        )


async def results_on_subject(js: JetStreamContext, requester: str, request_id: str) -> int:
    """How many results the stream holds for one request (must be exactly one)."""
    subject = result_subject(requester, request_id)
    info = await js.stream_info(RESULTS.name, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def count_subjects(js: JetStreamContext, stream: str, subject_filter: str) -> dict[str, int]:
    info = await js.stream_info(stream, subjects_filter=subject_filter)
    return dict(info.state.subjects or {})


def lantau(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``lantau`` command line, as an operator would."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
