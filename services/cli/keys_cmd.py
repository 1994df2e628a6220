"""``lantau keys xpub`` and ``lantau keys hss-fence``: HD watch-only export and the
recovery of a stateful key's lost index ledger.

``xpub`` asks a signer (as the read-only operator), which has an hsm-node holding the
key derive the extended public key at a path from the sealed root, checks it against
what the exported keys already derive and records it in the key directory (policy and
signers then derive non-hardened children below it without an HSM); it is printed.

``hss-fence`` is for an HSS key whose ledger was lost or rolled back: it moves the
ledger past ``--at`` (one past the end of the last lease the audit log records: the
hsm-nodes' "lease" receipts), so no index below it is ever leased again.
"""

from __future__ import annotations

import argparse
import asyncio

import msgspec
import nats.errors

from libs import config as config_mod
from libs.bus.permissions import OPERATOR, PROVISIONER
from libs.config import Config
from libs.hsm.sealed_store import KvIndexLedger
from libs.keys.directory import KeyDirectory
from libs.keytypes import kinds, lms, lms_state
from proto import codec
from proto.admin import XpubQuery
from proto.common import ExtendedPublic
from proto.errors import ErrorCode, LantauError, TransientError
from proto.subjects import ADMIN_XPUB
from services.cli.hsm_admin import audited
from services.cli.identity import connect_cli
from services.cli.usage import UsageError


async def export_xpub(
    cfg: Config, key_id: str, path: str, *, config_path: str | None = None
) -> ExtendedPublic:
    """The extended public key of an HD key at ``path``: one signer replica has a node
    holding the key derive it, checks it and records it in the key directory."""
    nc = await connect_cli(cfg, OPERATOR, config_path=config_path)
    try:
        query = XpubQuery(key_id=key_id, path=path)
        try:
            msg = await nc.request(ADMIN_XPUB, codec.encode(query), timeout=15)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            raise LantauError(
                ErrorCode.HSM_UNAVAILABLE, "no signer answered: is the platform running?"
            ) from None
        answer = codec.XPUB_ANSWER.decode(msg.data)
    finally:
        await nc.close()
    if answer.error is not None:
        raise LantauError(ErrorCode(answer.error.code), answer.error.message)
    if answer.extended is None or answer.extended.path != path:
        raise LantauError(ErrorCode.INTERNAL, "the signer's answer names no extended key")
    return answer.extended


async def fence(
    cfg: Config, key_id: str, at: int, *, config_path: str | None = None
) -> lms_state.IndexState:
    """Move an HSS key's ledger past ``at`` (rebuilt from the key's shape if it is gone).
    As the provisioner: besides the hsm-nodes, the one identity that writes ledgers."""
    nc = await connect_cli(cfg, PROVISIONER, config_path=config_path, name="lantau-fence")
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
    ext = asyncio.run(export_xpub(cfg, args.key_id, args.path, config_path=args.config))
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
        state = asyncio.run(fence(cfg, args.key_id, args.at, config_path=args.config))
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
