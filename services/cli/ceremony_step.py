"""One step of an SO key-domain ceremony, in a process of its own bound to one token.

SoftHSM (like one HSM per host) reads its configuration once per process, at
C_Initialize, so ``hsm_admin.ceremony_step`` runs each step as
``python -m services.cli.ceremony_step STEP --config F --node N --so-pin-file F``, with
the step's input on stdin and its output on stdout: only the transport public key and
wrapped keys pass. This module imports only what a step needs (not the whole CLI): a
two-node key domain takes nine steps.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import msgspec

from libs import config as config_mod
from libs.config import Config, HsmNodeConfig
from libs.hsm import ceremony
from proto.errors import LantauError

STEPS = (
    "init",
    "has",
    "transport",
    "export",
    "import",
    "seal-init",
    "seal-has",
    "seal-export",
    "seal-import",
)


def read_secret(path: str, what: str) -> str:
    """A PIN or passphrase file's one line; a CeremonyError naming the file, never its text."""
    try:
        value = Path(path).read_text().strip()
    except OSError as e:
        raise ceremony.CeremonyError(f"cannot read {what} {path}: {e.strerror}") from None
    if not value:
        raise ceremony.CeremonyError(f"{what} {path} is empty")
    return value


def _bind(node: HsmNodeConfig) -> None:
    if node.softhsm_conf:
        os.environ["SOFTHSM2_CONF"] = node.softhsm_conf


def run_step(cfg: Config, node_id: str, step: str, so_pin_file: str, data: bytes) -> bytes:
    """One ceremony step on one token, in this process. Input and output are opaque bytes."""
    node = cfg.hsm_node(node_id)
    _bind(node)
    pin = read_secret(so_pin_file, "SO PIN file")
    kek = cfg.backup.kek_label
    if step == "init":
        return (
            b"created"
            if ceremony.init_domain(node.module, node.token_label, pin, kek)
            else b"exists"
        )
    if step == "has":
        return b"yes" if ceremony.has_domain_key(node.module, node.token_label, pin, kek) else b"no"
    if step == "transport":
        return msgspec.msgpack.encode(
            ceremony.make_transport_key(node.module, node.token_label, pin)
        )
    if step == "export":
        transport = msgspec.msgpack.decode(data, type=ceremony.TransportKey)
        return ceremony.export_domain_key(node.module, node.token_label, pin, kek, transport)
    if step == "import":
        ceremony.import_domain_key(node.module, node.token_label, pin, kek, data)
        return b"imported"
    # The sealing key is a private object: these steps open a user session with the
    # node's own PIN (the SO PIN file only proves the administrator runs the ceremony).
    user_pin = config_mod.read_pin(node)
    if step == "seal-init":
        created = ceremony.init_sealing_key(node.module, node.token_label, user_pin, kek)
        return b"created" if created else b"exists"
    if step == "seal-has":
        has = ceremony.has_sealing_key(node.module, node.token_label, user_pin, kek)
        return b"yes" if has else b"no"
    if step == "seal-export":
        return ceremony.export_sealing_key(node.module, node.token_label, user_pin, kek)
    if step == "seal-import":
        ceremony.import_sealing_key(node.module, node.token_label, user_pin, kek, data)
        return b"imported"
    raise ceremony.CeremonyError(f"unknown ceremony step {step!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.cli.ceremony_step")
    p.add_argument("step", choices=STEPS)
    p.add_argument("--config", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--so-pin-file", required=True)
    args = p.parse_args(argv)
    try:
        cfg = config_mod.load(args.config)
        out = run_step(cfg, args.node, args.step, args.so_pin_file, sys.stdin.buffer.read())
    except LantauError as e:
        print(f"{e.code}: {e.message}", file=sys.stderr)
        return 2
    except Exception as e:  # the token refused (PKCS#11): its name, never a traceback
        print(f"the token refused: {type(e).__name__}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
