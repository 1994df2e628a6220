"""``lantau keys xpub`` and ``lantau keys hss-fence``: HD watch-only export and the
recovery of a stateful key's lost index ledger.

``xpub`` asks an hsm-node holding the key for the extended public key at a path (the
node derives it from the sealed root), checks it against what the exported keys already
derive, records it in the key directory (policy and signers then derive non-hardened
children below it without an HSM) and prints it.

``hss-fence`` is for an HSS key whose ledger was lost or rolled back: it moves the
ledger past ``--at`` (one past the end of the last lease the audit log records: the
hsm-nodes' "lease" receipts), so no index below it is ever leased again.
"""

from __future__ import annotations

import argparse
import asyncio

import msgspec
import nats

from libs import config as config_mod
from libs.config import Config
from libs.hsm.remote import RemoteHsm
from libs.hsm.sealed_store import KvIndexLedger
from libs.keys.directory import KeyDirectory
from libs.keytypes import kinds, lms, lms_state, material
from proto.common import ExtendedPublic
from proto.errors import ErrorCode, LantauError, TransientError
from services.cli.hsm_admin import audited
from services.cli.usage import UsageError


async def export_xpub(cfg: Config, key_id: str, path: str) -> ExtendedPublic:
    """The extended public key of an HD key at ``path``, derived by a node holding it and
    recorded in the key directory."""
    nc = await nats.connect(servers=cfg.nats.servers, name="lantau-cli")
    try:
        directory = await KeyDirectory.open(nc.jetstream())
        record, _ = await directory.get(key_id, fresh=True)
        if record is None or record.status != "active":
            raise UsageError(f"no active key {key_id}")
        if not kinds.is_hd(record.curve):
            raise UsageError(f"{key_id} is a {record.curve} key, not an HD key")
        kinds.check_path(record.curve, path)
        signing = {n.id for n in cfg.hsm_nodes if n.role == "pool"}
        failures = []
        for node in [n for n in record.nodes if n in signing]:
            try:
                key = await RemoteHsm(nc, node, timeout_s=5.0).public_key(key_id, path)
                break
            except TransientError as e:
                failures.append(f"{node}: {e.message}")
        else:
            raise LantauError(
                ErrorCode.HSM_UNAVAILABLE,
                f"no node holding {key_id} answered: {'; '.join(failures) or 'none holds it'}",
            )
        ext = key.hd
        if ext is None or ext.path != path or ext.public_key != key.public_key:
            raise LantauError(ErrorCode.HSM_ERROR, f"the node did not derive {key_id} at {path}")
        known = material.child_public(record.curve, record.xpubs, path)
        if known is not None and known != ext.public_key:
            raise LantauError(
                ErrorCode.HSM_ERROR,
                f"the node's key at {path} is not what the exported xpubs derive",
            )
        await directory.add_xpub(key_id, ext)
        return ext
    finally:
        await nc.close()


async def fence(cfg: Config, key_id: str, at: int) -> lms_state.IndexState:
    """Move an HSS key's ledger past ``at`` (rebuilt from the key's shape if it is gone)."""
    nc = await nats.connect(servers=cfg.nats.servers, name="lantau-cli")
    try:
        js = nc.jetstream()
        record, _ = await (await KeyDirectory.open(js)).get(key_id, fresh=True)
        if record is None or record.curve != "lms-hss" or record.hss is None:
            raise UsageError(f"{key_id} is not an lms-hss key")
        params = kinds.hss_parameters(record.hss)
        ledger = KvIndexLedger(js)
        for _ in range(10):
            state, revision = await ledger.read(key_id)
            if state is None:
                state = lms_state.new_index_state(
                    key_id, lms.total_signatures(params), lms.lease_alignment(params)
                )
            fenced = lms_state.fence(state, at)
            if await ledger.write(fenced, revision):
                return fenced
        raise TransientError(ErrorCode.INTERNAL, f"the ledger of {key_id} kept changing")
    finally:
        await nc.close()


def cmd_xpub(args: argparse.Namespace) -> int:
    cfg = config_mod.load_for_cli(args.config)
    ext = asyncio.run(export_xpub(cfg, args.key_id, args.path))
    if ext.xpub:
        print(ext.xpub)
    else:
        print(
            msgspec.json.encode(
                {
                    "path": ext.path,
                    "public_key": ext.public_key.hex(),
                    "chain_code": ext.chain_code.hex(),
                }
            ).decode()
        )
    return 0


def cmd_fence(args: argparse.Namespace) -> int:
    with audited(args.config, f"keys hss-fence --at {args.at}", args.key_id):
        cfg = config_mod.load(args.config)
        state = asyncio.run(fence(cfg, args.key_id, args.at))
    print(
        f"{args.key_id}: nothing below {state.next_unleased} will be leased again; "
        f"{lms_state.signatures_left(state)} signatures left"
    )
    return 0


def add_parsers(keys: argparse._SubParsersAction) -> None:
    p = keys.add_parser("xpub", help="an HD key's extended public key at a path (watch-only)")
    p.add_argument("key_id")
    p.add_argument("--path", default="m", help="derivation path (default: the root, m)")
    p.add_argument("--config")
    p.set_defaults(fn=cmd_xpub)
    p = keys.add_parser(
        "hss-fence", help="recover a lost HSS index ledger: lease nothing below --at again"
    )
    p.add_argument("key_id")
    p.add_argument(
        "--at",
        type=int,
        required=True,
        help="one past the end of the last lease the audit log records for the key",
    )
    p.add_argument("--config", required=True)
    p.set_defaults(fn=cmd_fence)
