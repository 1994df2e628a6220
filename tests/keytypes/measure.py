"""Throughput of the key types on this machine (not a test: run by hand, one core).

    python -m tests.keytypes.measure

Figures go to docs/keytypes.md.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import coincurve
import pkcs11

from devkit.softhsm import find_module, init_token
from libs.keytypes import hd, lms, mldsa, sealed


def rate(fn: Callable[[], object], seconds: float = 2.0) -> float:
    """Calls per second of ``fn`` over about ``seconds``."""
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        n += 1
    return n / elapsed


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_sealing() -> None:
    token = init_token(Path(tempfile.mkdtemp()), "measure")
    os.environ["SOFTHSM2_CONF"] = str(token.conf_path)
    session = (
        pkcs11.lib(find_module())
        .get_token(token_label="measure")
        .open(rw=True, user_pin=token.pin_file.read_text().strip())
    )
    key = sealed.ensure_sealing_key(session, "sealing")
    aad = sealed.material_aad("k", "ml-dsa-65")
    blob = sealed.seal(key, os.urandom(32), aad)

    def open_once() -> None:
        with sealed.unsealed(key, blob, aad):
            pass

    print(
        f"SoftHSM sealing: seal {rate(lambda: sealed.seal(key, os.urandom(32), aad)):.0f}/s, "
        f"unseal+wipe {rate(open_once):.0f}/s, token random 32 B "
        f"{rate(lambda: sealed.random_bytes(session, 32)):.0f}/s"
    )


def main() -> None:
    measure_sealing()
    seed = os.urandom(32)
    digest = hashlib.sha256(b"m").digest()

    def hd_sign() -> object:
        key = hd.derive_private(seed, "m/44'/60'/0'/0/7", "secp256k1")
        return coincurve.PrivateKey(key.private_key).sign(digest, hasher=None)

    print(f"HD secp256k1: derive m/44'/60'/0'/0/7 from the seed and sign: {rate(hd_sign):.0f}/s")
    for p in ("ML-DSA-44", "ML-DSA-65", "ML-DSA-87"):
        public = mldsa.public_key(seed, p)
        sig = mldsa.sign(seed, b"m", p)
        signs = rate(lambda p=p: mldsa.sign(seed, b"m", p))  # type: ignore[misc]
        verifies = rate(lambda p=p, pk=public, s=sig: mldsa.verify(pk, b"m", s, p))  # type: ignore[misc]
        print(f"{p}: sign (keygen from seed included)/s {signs:.0f}, verify/s {verifies:.0f}")
    material = os.urandom(48)
    for params in (
        lms.HssParameters(levels=1, height=5, winternitz=8),
        lms.HssParameters(levels=2, height=5, winternitz=8),
        lms.HssParameters(levels=2, height=5, winternitz=4),
        lms.HssParameters(levels=2, height=10, winternitz=8),
    ):
        keygen = timed(lambda params=params: lms.public_key(params, material))  # type: ignore[misc]
        public = lms.public_key(params, material)
        # One lease: a whole top-level subtree, or 32 indices of a single-level key.
        align = max(lms.lease_alignment(params), min(32, lms.total_signatures(params)))
        opened = timed(
            lambda params=params, align=align: lms.HssSigner(  # type: ignore[misc]
                params, material, 0, align, os.urandom
            )
        )
        signer = lms.HssSigner(params, material, 0, align, os.urandom)
        first = timed(lambda signer=signer: signer.sign(0, b"m"))  # type: ignore[misc]
        n = min(align - 1, 30)
        start = time.perf_counter()
        for i in range(1, n + 1):
            sig = signer.sign(i, b"m")
        steady = n / (time.perf_counter() - start)
        verifies = rate(lambda pk=public, s=sig: lms.verify(pk, b"m", s))  # type: ignore[misc]
        print(
            f"HSS L={params.levels} H{params.height} W{params.winternitz}: "
            f"total {lms.total_signatures(params)}, keygen {keygen:.2f} s, "
            f"open lease {opened:.2f} s, first signature {first:.2f} s, "
            f"then {steady:.0f} signs/s, {verifies:.0f} verifies/s, {len(sig)} bytes"
        )


if __name__ == "__main__":
    main()
