"""``lantau audit verify | export | show | key``: the auditor's commands."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from libs import config as config_mod
from libs.audit.export import from_lines, to_lines
from libs.audit.verify import verify
from libs.bus.permissions import OPERATOR
from libs.keys.directory import KeyDirectory
from proto import codec
from proto.audit import AuditCheckpoint, AuditEntry, AuditRecord
from proto.errors import LantauError
from proto.subjects import AUDIT_CHAIN, AUDIT_CHECKPOINT_KEY
from services.cli.identity import connect_cli

# Direct gets in flight at once while reading the log.
_READ_AHEAD = 64


async def read_log(js: JetStreamContext) -> list[AuditEntry]:
    """Every entry of the live log, in order: direct gets by sequence, so that reading
    needs no right to create consumers (the operator identity has none)."""
    info = await js.stream_info(AUDIT_CHAIN.name)
    entries: list[AuditEntry] = []
    if info.state.messages == 0:
        return entries

    async def get(seq: int) -> bytes | None:
        try:
            return (await js.get_msg(AUDIT_CHAIN.name, seq=seq, direct=True)).data
        except nats.js.errors.NotFoundError:
            return None

    first, last = info.state.first_seq, info.state.last_seq
    for start in range(first, last + 1, _READ_AHEAD):
        batch = range(start, min(start + _READ_AHEAD, last + 1))
        for data in await asyncio.gather(*(get(seq) for seq in batch)):
            if data is not None:
                entries.append(codec.AUDIT_ENTRY.decode(data))
    return entries


async def _connect(args: argparse.Namespace) -> Client:
    cfg = config_mod.load_for_cli(args.config)
    return await connect_cli(cfg, OPERATOR, config_path=args.config, name="lantau-audit-cli")


async def _live(args: argparse.Namespace) -> tuple[list[AuditEntry], bytes | None]:
    nc = await _connect(args)
    try:
        js = nc.jetstream()
        entries = await read_log(js)
        record, _ = await (await KeyDirectory.open(js)).get(AUDIT_CHECKPOINT_KEY, fresh=True)
        return entries, (record.public_key if record and record.public_key else None)
    finally:
        await nc.close()


def _usage(message: str) -> int:
    print(f"lantau: {message}", file=sys.stderr)
    return 2


def cmd_verify(args: argparse.Namespace) -> int:
    if args.file:
        try:
            entries = list(from_lines(Path(args.file).read_text().splitlines()))
        except OSError as e:
            return _usage(f"cannot read {args.file}: {e.strerror}")
        except ValueError as e:
            return _usage(f"{args.file}: {e}")
        directory_key = None
    else:
        entries, directory_key = asyncio.run(_live(args))
    try:
        trusted = [bytes.fromhex(k) for k in args.trusted_key]
    except ValueError:
        return _usage("--trusted-key must be a public key in hex")
    if not trusted:
        if directory_key is None:
            return _usage("no --trusted-key given and none found in the key directory")
        print(
            "note: trusting the checkpoint key from the key directory; "
            "pass --trusted-key for an independent check",
            file=sys.stderr,
        )
        trusted = [directory_key]
    start = None
    if args.from_checkpoint is not None:
        start = next(
            (
                e
                for e in entries
                if isinstance(e, AuditCheckpoint) and e.seq == args.from_checkpoint
            ),
            None,
        )
        if start is None:
            return _usage(f"no checkpoint at seq {args.from_checkpoint}")
    report = verify(entries, trusted, start=start)
    print(report.summary())
    return 0 if report.ok else 1


def cmd_export(args: argparse.Namespace) -> int:
    entries, _ = asyncio.run(_live(args))
    out = sys.stdout if args.out in (None, "-") else open(args.out, "w")
    try:
        for line in to_lines(entries):
            out.write(line + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
            print(f"wrote {len(entries)} entries to {args.out}", file=sys.stderr)
    return 0


def _summary(data: bytes) -> str:
    for decoder in (
        codec.REQUEST,
        codec.ORDER,
        codec.RESULT,
        codec.EVENT,
        codec.AUDIT_INTENT,
        codec.REJECTED,
    ):
        try:
            m = decoder.decode(data)
        except LantauError:
            continue
        fields = []
        for name in ("requester", "key_id", "status", "node", "attempt", "code"):
            value = getattr(m, name, None)
            if value not in (None, ""):
                fields.append(f"{name}={value}")
        error = getattr(m, "error", None)
        if error is not None:
            fields.append(f"error={error.code}: {error.message}")
        decision = getattr(m, "decision", None)
        if decision is not None:
            fields.append(f"rule={decision.rule} ({decision.explanation})")
        return " ".join(fields)
    return "(unreadable message)"


async def _show(args: argparse.Namespace) -> int:
    nc = await _connect(args)
    try:
        js = nc.jetstream()
        records = [
            e
            for e in await read_log(js)
            if isinstance(e, AuditRecord) and e.request_id == args.request
        ]
        if not records:
            print(f"no audit records for request {args.request}")
            return 1
        print(f"request {args.request}: {len(records)} audit records")
        for r in records:
            stream, seq = r.source.rsplit(":", 1)
            try:
                detail = _summary((await js.get_msg(stream, int(seq))).data or b"")
            except nats.js.errors.NotFoundError:
                detail = "(source message aged out of its stream; its hash is in the record)"
            when = (
                time.strftime("%H:%M:%S", time.localtime(r.at_ms / 1000)) + f".{r.at_ms % 1000:03d}"
            )
            print(f"  #{r.seq:<6} {when} {r.event_type:<16} by {r.actor:<14} {detail}")
        return 0
    finally:
        await nc.close()


def cmd_show(args: argparse.Namespace) -> int:
    return asyncio.run(_show(args))


def cmd_key(args: argparse.Namespace) -> int:
    _, key = asyncio.run(_live(args))
    if key is None:
        print("no checkpoint key yet", file=sys.stderr)
        return 1
    print(key.hex())
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser("audit", help="verify and read the audit trail").add_subparsers(
        dest="audit", required=True
    )
    p = audit.add_parser("verify", help="check the hash chain and checkpoint signatures")
    p.add_argument("--file", help="verify an exported JSON-lines file instead of the live log")
    p.add_argument("--trusted-key", action="append", default=[], help="checkpoint public key (hex)")
    p.add_argument("--from-checkpoint", type=int, help="verify only what follows this checkpoint")
    p.add_argument("--config")
    p.set_defaults(fn=cmd_verify)
    p = audit.add_parser("export", help="write the log as JSON lines")
    p.add_argument("--out", help="file (default stdout)")
    p.add_argument("--config")
    p.set_defaults(fn=cmd_export)
    p = audit.add_parser("show", help="the story of one request, in order")
    p.add_argument("--request", required=True)
    p.add_argument("--config")
    p.set_defaults(fn=cmd_show)
    p = audit.add_parser("key", help="print the checkpoint public key (hex)")
    p.add_argument("--config")
    p.set_defaults(fn=cmd_key)
