"""SoftHSM2 tokens for development and tests, each an independent HSM.

Every token gets its own softhsm2.conf and token directory: SoftHSM reads its
configuration once per process, so one hsm-node process per token is one HSM that
can be killed on its own. PINs are random, written 0600, never printed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from libs.secret_files import write_secret

_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)


def find_module() -> str:
    override = os.environ.get("LANTAU_PKCS11_MODULE")
    for path in (override, *_CANDIDATES):
        if path and Path(path).exists():
            return path
    raise RuntimeError("SoftHSM2 module not found: apt-get install -y softhsm2")


@dataclass(frozen=True)
class SoftHsmToken:
    label: str
    conf_path: Path
    token_dir: Path
    pin_file: Path
    so_pin_file: Path


def init_token(workdir: Path, label: str) -> SoftHsmToken:
    return _init(workdir / label, label)


def init_slots(workdir: Path, labels: list[str]) -> list[SoftHsmToken]:
    """Several tokens behind one configuration: the slots of one in-process module."""
    return [_init(workdir, label) for label in labels]


def _init(home: Path, label: str) -> SoftHsmToken:
    tool = shutil.which("softhsm2-util")
    if tool is None:
        raise RuntimeError("softhsm2-util not found: apt-get install -y softhsm2")
    token_dir = home / "tokens"
    token_dir.mkdir(parents=True, exist_ok=True)
    conf = home / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {token_dir}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
    token = SoftHsmToken(label, conf, token_dir, home / f"{label}.pin", home / f"{label}.so-pin")
    write_secret(token.pin_file, pin + "\n", replace=True)
    write_secret(token.so_pin_file, so_pin + "\n", replace=True)
    proc = subprocess.run(
        [tool, "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", so_pin],
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        # The tool's output never contains the PINs; the command line does, so it is not shown.
        raise RuntimeError(
            f"softhsm2-util could not initialise {label}: {proc.stderr.decode().strip()}"
        )
    return token
