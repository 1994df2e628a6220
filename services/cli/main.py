"""The ``lantau`` command: run services, the dev stack, and talk to the platform."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from libs import config as config_mod
from libs import logs, tracing
from libs.client import CustodyClient, CustodyError, load_signing_key
from libs.config import ConfigError
from libs.hsm.ceremony import CeremonyError
from libs.service import Runtime
from libs.service import run as run_service
from proto.common import PayloadKind
from proto.errors import LantauError
from services.policy.rules import PolicyFileError

DEFAULT_RUN_DIR = Path(os.environ.get("LANTAU_RUN_DIR", ".lantau/run"))
SERVICES = ("policy", "signer", "hsm-node", "backup", "audit")


class UsageError(Exception):
    pass


# -- serve -------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    body: Callable[[Runtime], Awaitable[None]]
    if args.service == "hsm-node":
        if not args.node:
            raise UsageError("serve hsm-node needs --node NODE_ID")
        node = cfg.hsm_node(args.node)
        from services.hsm_node.service import serve as hsm_serve

        name, port, provision = f"hsm-node-{node.id}", node.metrics_port, False

        async def body(rt: Runtime) -> None:
            await hsm_serve(rt, node)
    else:
        module = __import__(f"services.{args.service}.service", fromlist=["serve"])
        if hasattr(module, "check"):
            module.check(cfg)  # fail fast, before waiting for the bus
        section = getattr(cfg, args.service)
        name, port, provision, body = section.id, section.metrics_port, True, module.serve
    logs.setup(cfg.logging, name)
    tracing.setup(name)
    return asyncio.run(run_service(Runtime(name, cfg, port, provision=provision), body))


# -- dev stack ---------------------------------------------------------------


def cmd_dev_up(args: argparse.Namespace) -> int:
    from services.cli.demo import dev_up_with_demo

    return asyncio.run(
        dev_up_with_demo(
            Path(args.dir),
            nodes=args.nodes,
            demo=args.demo,
            keep_running=not args.exit,
            prometheus=args.prometheus,
        )
    )


# -- client commands -----------------------------------------------------------


def _client_config(args: argparse.Namespace) -> tuple[list[str], str, Path]:
    run_dir = DEFAULT_RUN_DIR
    cfg_path = args.config or os.environ.get("LANTAU_CONFIG") or (run_dir / "lantau.toml")
    if args.nats:
        servers = [args.nats]
    else:
        if not Path(cfg_path).exists():
            raise UsageError(
                f"no config at {cfg_path}: start `lantau dev up` or pass --config/--nats"
            )
        servers = config_mod.load(cfg_path).nats.servers
    requester = args.requester or os.environ.get("LANTAU_REQUESTER") or "demo-trader"
    key_file = Path(
        args.key_file or os.environ.get("LANTAU_REQUESTER_KEY") or run_dir / f"{requester}.key"
    )
    if not key_file.exists():
        raise UsageError(f"no requester key file {key_file}: pass --key-file (see `lantau keygen`)")
    return servers, requester, key_file


async def _with_client(
    args: argparse.Namespace, fn: Callable[[CustodyClient], Awaitable[int]]
) -> int:
    servers, requester, key_file = _client_config(args)
    client = await CustodyClient.connect(servers, requester, load_signing_key(key_file))
    try:
        return await fn(client)
    finally:
        await client.close()


def _print(result: msgspec.Struct) -> None:
    print(json.dumps(_jsonable(msgspec.to_builtins(result)), indent=2))


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _payload(args: argparse.Namespace) -> tuple[bytes, PayloadKind]:
    if args.hex is not None:
        try:
            return bytes.fromhex(args.hex), args.kind or "digest"
        except ValueError:
            raise UsageError("--hex is not valid hexadecimal") from None
    if args.message is not None:
        return args.message.encode(), args.kind or "message"
    raise UsageError("give the payload with --hex (a digest) or --message (text)")


def cmd_sign(args: argparse.Namespace) -> int:
    payload, kind = _payload(args)

    async def go(client: CustodyClient) -> int:
        result = await client.sign(
            args.key_id,
            payload,
            payload_kind=kind,
            request_id=args.request_id,
            timeout=args.timeout,
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
        )
        _print(result)
        return 0 if result.status == "created" else 1

    return asyncio.run(_with_client(args, go))


def cmd_result(args: argparse.Namespace) -> int:
    async def go(client: CustodyClient) -> int:
        result = await client.get_result(args.request_id)
        if result is None:
            print(f"no result yet for {args.request_id}", file=sys.stderr)
            return 1
        _print(result)
        return 0

    return asyncio.run(_with_client(args, go))


def cmd_chaos(args: argparse.Namespace) -> int:
    import shutil

    from services.cli.chaos import chaos_demo

    shutil.rmtree(args.dir, ignore_errors=True)
    return asyncio.run(chaos_demo(Path(args.dir), duration_s=args.seconds))


def cmd_keygen(args: argparse.Namespace) -> int:
    import nacl.signing

    out = Path(args.out)
    if out.exists():
        raise UsageError(f"{out} exists; refusing to overwrite a key")
    key = nacl.signing.SigningKey.generate()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.encode().hex() + "\n")
    print(key.verify_key.encode().hex())
    return 0


# -- parser ------------------------------------------------------------------


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="platform config (default: the dev stack's)")
    p.add_argument("--nats", help="NATS URL (overrides the config)")
    p.add_argument("--requester", help="requester name (default demo-trader)")
    p.add_argument("--key-file", help="requester's Ed25519 seed file")
    p.add_argument("--request-id", help="reuse an id to resend a request idempotently")
    p.add_argument("--timeout", type=float, default=30.0)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="lantau", description="Lantau custody signing platform")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run one service process")
    p.add_argument("service", choices=SERVICES)
    p.add_argument("--config", required=True)
    p.add_argument("--node", help="hsm-node: the [[hsm_nodes]] id to serve")
    p.set_defaults(fn=cmd_serve)

    dev = sub.add_parser("dev", help="embedded dev stack").add_subparsers(dest="dev", required=True)
    p = dev.add_parser("up", help="start nats-server, SoftHSM tokens, hsm-nodes and services")
    p.add_argument("--dir", default=str(DEFAULT_RUN_DIR))
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--demo", action="store_true", help="send demo requests once ready")
    p.add_argument("--exit", action="store_true", help="stop after the demo instead of serving")
    p.add_argument(
        "--prometheus", action="store_true", help="also run Prometheus scraping the stack"
    )
    p.set_defaults(fn=cmd_dev_up)

    p = sub.add_parser("sign", help="sign a payload with a key")
    p.add_argument("key_id")
    p.add_argument("--hex", help="payload as hex (a 32-byte digest for secp256k1)")
    p.add_argument("--message", help="payload as UTF-8 text (Ed25519)")
    p.add_argument("--kind", choices=["digest", "message"])
    _client_args(p)
    p.set_defaults(fn=cmd_sign)

    keys = sub.add_parser("keys", help="keys").add_subparsers(dest="keys", required=True)
    p = keys.add_parser("create", help="create a key inside the HSMs")
    p.add_argument("key_id")
    p.add_argument("--curve", choices=["secp256k1", "ed25519"], required=True)
    p.add_argument("--region")
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

    from services.cli import approvals_cmd, audit_cmd, bench

    audit_cmd.add_parsers(sub)
    approvals_cmd.add_parsers(sub)
    bench.add_parsers(sub)

    p = sub.add_parser("chaos", help="watch failover live: load on a dev stack while HSM nodes die")
    p.add_argument("--dir", default=".lantau/chaos")
    p.add_argument("--seconds", type=float, default=18.0)
    p.set_defaults(fn=cmd_chaos)

    p = sub.add_parser("keygen", help="make an Ed25519 requester/approver key file")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_keygen)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except (ConfigError, UsageError, CustodyError, CeremonyError, PolicyFileError) as e:
        print(f"lantau: {e}", file=sys.stderr)
        return 2
    except LantauError as e:
        print(f"lantau: {e.code}: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
