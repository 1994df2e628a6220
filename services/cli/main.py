"""The ``lantau`` command: run services, the dev stack, and talk to the platform."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, get_args

import msgspec
import nats.errors
import uvloop

from libs import config as config_mod
from libs import logs, tracing
from libs.bus.permissions import requester_identity
from libs.client import CustodyClient, load_signing_key
from libs.config import NatsConfig
from libs.secret_files import write_secret
from libs.service import Runtime, ServiceEntry
from libs.service import run as run_service
from proto.common import Curve, HssShape
from proto.errors import ErrorCode, LantauError
from services.cli import payloads
from services.cli.usage import UsageError

KEY_TYPES = get_args(Curve)
DEFAULT_RUN_DIR = Path(os.environ.get("LANTAU_RUN_DIR", ".lantau/run"))


# -- serve -------------------------------------------------------------------


def _policy() -> ServiceEntry:
    from services.policy.service import ENTRY

    return ENTRY


def _signer() -> ServiceEntry:
    from services.signer.service import ENTRY

    return ENTRY


def _hsm_node() -> ServiceEntry:
    from services.hsm_node.service import ENTRY

    return ENTRY


def _backup() -> ServiceEntry:
    from services.backup.service import ENTRY

    return ENTRY


def _audit() -> ServiceEntry:
    from services.audit.service import ENTRY

    return ENTRY


def _console() -> ServiceEntry:
    from services.console.service import ENTRY

    return ENTRY


# Every service `lantau serve` runs; each imported only when it is the one served.
SERVICES: dict[str, Callable[[], ServiceEntry]] = {
    "policy": _policy,
    "signer": _signer,
    "hsm-node": _hsm_node,
    "backup": _backup,
    "audit": _audit,
    "console": _console,
}


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    entry = SERVICES[args.service]()
    if entry.per_node and not args.node:
        raise UsageError(f"serve {args.service} needs --node NODE_ID")
    name, port = entry.identity(cfg, args.node)
    entry.check_config(cfg, args.node)  # fail fast, before waiting for the bus
    logs.setup(cfg.logging, name)
    tracing.setup(name)
    runtime = Runtime(name, cfg, port, identity=entry.bus_identity(cfg, args.node))
    # uvloop: the services are CPU-bound on the event loop and socket writes (docs/benchmark.md).
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run_service(runtime, entry.body(cfg, args.node)))


# -- client commands -----------------------------------------------------------


def _client_config(args: argparse.Namespace) -> tuple[NatsConfig, str, Path]:
    run_dir = DEFAULT_RUN_DIR
    cfg_path = args.config or os.environ.get("LANTAU_CONFIG") or (run_dir / "lantau.toml")
    if Path(cfg_path).exists():
        nats_cfg = config_mod.load(cfg_path).nats
    elif args.nats:
        nats_cfg = NatsConfig(servers=[args.nats])
    else:
        raise UsageError(f"no config at {cfg_path}: start `lantau dev up` or pass --config/--nats")
    if args.nats:
        nats_cfg = msgspec.structs.replace(nats_cfg, servers=[args.nats])
    requester = args.requester or os.environ.get("LANTAU_REQUESTER") or "demo-trader"
    key_file = Path(
        args.key_file or os.environ.get("LANTAU_REQUESTER_KEY") or run_dir / f"{requester}.key"
    )
    if not key_file.exists():
        raise UsageError(f"no requester key file {key_file}: pass --key-file (see `lantau keygen`)")
    # The NATS identity: --seed-file, else the requester's seed beside the config (the dev
    # stack keeps them there). Never the request-signing key.
    seed = args.seed_file or os.environ.get("LANTAU_REQUESTER_SEED")
    if not seed:
        beside = Path(cfg_path).parent / "nkeys" / f"{requester_identity(requester)}.seed"
        seed = str(beside) if beside.exists() else None
    nats_cfg = msgspec.structs.replace(nats_cfg, seed_file=seed)
    return nats_cfg, requester, key_file


async def _with_client(
    args: argparse.Namespace, fn: Callable[[CustodyClient], Awaitable[int]]
) -> int:
    nats_cfg, requester, key_file = _client_config(args)
    client = await CustodyClient.connect(
        nats_cfg.servers,
        requester,
        load_signing_key(key_file),
        seed_file=nats_cfg.seed_file,
        ca_file=nats_cfg.ca_file,
        cert_file=nats_cfg.cert_file,
        key_file=nats_cfg.key_file,
    )
    try:
        return await fn(client)
    finally:
        await client.close()


def _print(result: msgspec.Struct) -> None:
    # Bytes stay bytes here so they print as hex (to_builtins alone makes them base64).
    print(json.dumps(_jsonable(msgspec.to_builtins(result, builtin_types=(bytes,))), indent=2))


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def cmd_sign(args: argparse.Namespace) -> int:
    payload, kind = payloads.payload(
        hex_text=args.hex, message=args.message, file=args.file, kind=args.kind
    )
    transfer = payloads.transfer(args.transfer)

    async def go(client: CustodyClient) -> int:
        result = await client.sign(
            args.key_id,
            payload,
            payload_kind=kind,
            chain=args.chain,
            transfer=transfer,
            request_id=args.request_id,
            timeout=args.timeout,
            path=args.path,
        )
        _print(result)
        return 0 if result.status == "signed" else 1

    return asyncio.run(_with_client(args, go))


def cmd_keys_create(args: argparse.Namespace) -> int:
    async def go(client: CustodyClient) -> int:
        result = await client.create_key(
            args.key_id,
            args.curve,
            region=args.region,
            request_id=args.request_id,
            timeout=args.timeout,
            hss=_hss_shape(args.hss),
        )
        _print(result)
        return 0 if result.status == "created" else 1

    return asyncio.run(_with_client(args, go))


def _hss_shape(text: str | None) -> HssShape | None:
    """``LEVELS/HEIGHT/W`` (e.g. 2/10/4) as an HSS shape."""
    if text is None:
        return None
    try:
        levels, height, w = (int(part) for part in text.split("/"))
        return msgspec.convert({"levels": levels, "height": height, "winternitz": w}, HssShape)
    except (ValueError, msgspec.ValidationError):
        raise UsageError(
            f"--hss {text!r}: write LEVELS/HEIGHT/W, levels 1..8, height 5/10/15/20/25, W 1/2/4/8"
        ) from None


def cmd_result(args: argparse.Namespace) -> int:
    async def go(client: CustodyClient) -> int:
        result = await client.get_result(args.request_id)
        if result is None:
            print(f"no result yet for {args.request_id}", file=sys.stderr)
            return 1
        _print(result)
        return 0

    return asyncio.run(_with_client(args, go))


def cmd_keygen(args: argparse.Namespace) -> int:
    import nacl.signing

    out = Path(args.out)
    if out.exists():
        raise UsageError(f"{out} exists; refusing to overwrite a key")
    key = nacl.signing.SigningKey.generate()
    write_secret(out, key.encode().hex() + "\n")
    print(key.verify_key.encode().hex())
    return 0


# -- parser ------------------------------------------------------------------


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="platform config (default: the dev stack's)")
    p.add_argument("--nats", help="NATS URL (overrides the config)")
    p.add_argument("--requester", help="requester name (default demo-trader)")
    p.add_argument("--key-file", help="requester's Ed25519 seed file")
    p.add_argument("--seed-file", help="requester's NATS identity (nkey seed file)")
    p.add_argument("--request-id", help="reuse an id to resend a request idempotently")
    p.add_argument("--timeout", type=float, default=30.0)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="lantau", description="Lantau custody signing platform")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run one service process")
    p.add_argument("service", choices=list(SERVICES))
    p.add_argument("--config", required=True)
    p.add_argument("--node", help="hsm-node: the [[hsm_nodes]] id to serve")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser(
        "sign",
        help="sign a payload with a key",
        description="A transaction kind is decoded and judged by policy on what it does; the "
        "result's signed_payload is what a wallet broadcasts. A digest or message is blind: "
        "signed only for keys the config lets the requester sign blind with.",
    )
    p.add_argument("key_id")
    p.add_argument("--hex", help="payload as hex (a 32-byte digest for secp256k1, a transaction)")
    p.add_argument("--message", help="payload as UTF-8 text (Ed25519)")
    p.add_argument("--file", help="payload from a file (a PSBT may be base64 text); needs --kind")
    p.add_argument("--kind", choices=payloads.KINDS, help="default: digest (--hex), message")
    p.add_argument("--chain", help="network the payload does not name: testnet, solana:devnet")
    p.add_argument(
        "--transfer", metavar="ASSET:AMOUNT:DEST", help="declare what it moves (minor units)"
    )
    p.add_argument("--path", help="HD keys: the derivation path of the child that signs")
    _client_args(p)
    p.set_defaults(fn=cmd_sign)

    keys = sub.add_parser("keys", help="keys").add_subparsers(dest="keys", required=True)
    p = keys.add_parser("create", help="create a key inside the HSMs")
    p.add_argument("key_id")
    p.add_argument(
        "--curve",
        "--type",
        dest="curve",
        choices=list(KEY_TYPES),
        required=True,
        help="key type (docs/keytypes.md)",
    )
    p.add_argument("--region")
    p.add_argument("--hss", metavar="LEVELS/HEIGHT/W", help="lms-hss: the tree shape")
    _client_args(p)
    p.set_defaults(fn=cmd_keys_create)

    p = sub.add_parser("result", help="show the stored result of a request")
    p.add_argument("request_id")
    _client_args(p)
    p.set_defaults(fn=cmd_result)

    hsm = sub.add_parser("hsm", help="HSM pool and key domain").add_subparsers(
        dest="hsm", required=True
    )
    from services.cli import hsm_admin

    hsm_admin.add_parsers(hsm)
    hsm_admin.add_view_parsers(hsm, keys)
    from services.cli import (
        approvals_cmd,
        audit_cmd,
        authority_cmd,
        backup_cmd,
        bus_cmd,
        credentials_cmd,
        keys_cmd,
    )

    keys_cmd.add_parsers(keys)

    backup_cmds = backup_cmd.add_parsers(sub)
    audit_cmd.add_parsers(sub)
    credentials_cmd.add_parsers(sub)
    authority_cmd.add_parsers(sub)
    approvals_cmd.add_parsers(sub)
    bus_cmd.add_parsers(sub)
    try:
        from devkit import commands as dev_commands
    except ImportError:  # an operator install: no dev stack, demo, chaos or bench
        pass
    else:
        dev_commands.add_parsers(sub, DEFAULT_RUN_DIR)
        dev_commands.add_backup_parsers(backup_cmds)

    p = sub.add_parser("keygen", help="make an Ed25519 requester/approver key file")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_keygen)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except LantauError as e:
        print(f"lantau: {e.code}: {e.message}", file=sys.stderr)
        return 2
    except (nats.errors.Error, TimeoutError, ConnectionError) as e:
        # The bus did not answer: say so in one line, never a traceback.
        what = type(e).__name__
        print(
            f"lantau: {ErrorCode.BUS_UNAVAILABLE}: the bus did not answer ({what})", file=sys.stderr
        )
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
