"""``lantau audit verify | export | show | prove | check-proof | key | keygen``: the
auditor's commands.

The live log is read by sequence with direct gets (no consumer is created). Exit codes:
0 verified, 1 verification failed (the first bad log sequence and the reason are
printed), 2 usage, 3 the log or a file could not be read (a timeout, a closed
connection: said as such).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from libs import config as config_mod
from libs.audit import keyfile, logread, proofs, witness
from libs.audit.export import from_lines, line_of
from libs.audit.records import content_hash
from libs.audit.trail import Keys, LogItem, Trail
from libs.audit.verify import Report, accepted_records, record_keys_from_checkpoints, verify
from libs.audit.witness import Witnessed
from libs.bus import kv
from libs.bus.permissions import OPERATOR
from libs.keys.directory import KeyDirectory
from proto import codec
from proto.audit import AuditRecord
from proto.errors import ErrorCode, LantauError
from proto.subjects import (
    AUDIT_CHECKPOINT_KEY,
    AUDIT_STATE_BUCKET,
    AUDIT_STATE_WITNESS,
)
from services.cli.identity import connect_cli

OK, FAILED, USAGE, UNREADABLE = 0, 1, 2, 3


class _Exit(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _run(body: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run a command: every failure is a sentence and an exit code, never a traceback."""
    try:
        return asyncio.run(body())
    except _Exit as e:
        print(e.message, file=sys.stderr if e.code == USAGE else sys.stdout)
        return e.code
    except LantauError as e:
        code = FAILED if e.code == ErrorCode.AUDIT_WITNESS_INVALID else UNREADABLE
        print(f"FAILED: {e.message}" if code == FAILED else f"cannot read: {e.message}")
        return code
    except (nats.errors.Error, TimeoutError) as e:
        print(f"cannot read: NATS did not answer ({type(e).__name__}: {e})")
        return UNREADABLE
    except OSError as e:
        print(f"cannot read: {e.strerror or e}")
        return UNREADABLE


# -- reading ---------------------------------------------------------------------------


@dataclass
class Live:
    nc: Client
    js: JetStreamContext
    checkpoint_key: bytes | None = None
    writer_key: str | None = None


@dataclass
class Log:
    items: list[LogItem]
    raws: dict[int, bytes] = field(default_factory=dict)
    live: Live | None = None


async def _connect(args: argparse.Namespace) -> Live:
    cfg = config_mod.load_for_cli(args.config)
    # A command's own disconnect is not news: keep the bus's warnings out of its output.
    logging.getLogger("lantau.bus").setLevel(logging.ERROR)
    # The auditor's reads are the operator identity's (read-only, every stream).
    nc = await connect_cli(cfg, OPERATOR, config_path=args.config, name="lantau-audit-cli")
    js = nc.jetstream()
    live = Live(nc, js)
    try:
        record, _ = await (await KeyDirectory.open(js)).get(AUDIT_CHECKPOINT_KEY, fresh=True)
        live.checkpoint_key = record.public_key if record and record.public_key else None
        value, _ = await kv.read(await js.key_value(AUDIT_STATE_BUCKET), AUDIT_STATE_WITNESS)
        if value is not None:
            live.writer_key = codec.WITNESS_STATUS.decode(value).writer
    except Exception:  # advisory only: the auditor should pin keys anyway
        pass
    return live


async def _read(args: argparse.Namespace) -> Log:
    if getattr(args, "file", None):
        try:
            text = Path(args.file).read_text()
        except OSError as e:
            raise _Exit(UNREADABLE, f"cannot read {args.file}: {e.strerror}") from None
        return Log(list(from_lines(text.split("\n"))))  # not splitlines: U+2028 is data
    live = await _connect(args)
    log = Log([], live=live)
    async for item, raw in logread.read_items(live.js):
        log.items.append(item)
        if raw is not None:
            log.raws[item.log_seq] = raw
    return log


def _hex_keys(values: list[str], what: str, size: tuple[int, ...]) -> list[bytes]:
    out = []
    for v in values:
        try:
            key = bytes.fromhex(v)
        except ValueError:
            raise _Exit(USAGE, f"lantau: {what} {v!r} is not hex") from None
        if len(key) not in size:
            raise _Exit(USAGE, f"lantau: {what} {v[:16]}... is not a public key")
        out.append(key)
    return out


def _keys(args: argparse.Namespace, log: Log) -> Keys:
    checkpoint_keys = _hex_keys(args.trusted_key, "--trusted-key", (33, 65))
    if not checkpoint_keys:
        found = log.live.checkpoint_key if log.live else None
        if found is None:
            raise _Exit(USAGE, "lantau: no --trusted-key given and none found in the key directory")
        note("trusting the checkpoint key from the key directory; pass --trusted-key")
        checkpoint_keys = [found]
    record_keys = set(_hex_keys(getattr(args, "record_key", []), "--record-key", (32,)))
    if not record_keys:
        certified = record_keys_from_checkpoints(log.items, checkpoint_keys)
        if certified:
            note(
                "checking records with the record key named by checkpoints your checkpoint "
                "key signed; pass --record-key to pin it"
            )
        elif log.live and log.live.writer_key:
            certified = {log.live.writer_key}
            note(
                "no checkpoint signed by your checkpoint key names a record key: trusting "
                "the audit service's word for it; pass --record-key to pin it"
            )
        record_keys = {bytes.fromhex(k) for k in certified}
    return Keys(frozenset(record_keys), tuple(checkpoint_keys))


def note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def _saved_checkpoint(path: str) -> Witnessed:
    """The last checkpoint in a file (one saved with --save-checkpoint, or a witness file)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise _Exit(UNREADABLE, f"cannot read {path}: {e.strerror}") from None
    found = witness.parse(text, path)
    if not found:
        raise _Exit(USAGE, f"lantau: {path} holds no checkpoint")
    return found[-1]


def _witnessed(paths: list[str], keys: Keys) -> list[Witnessed]:
    out: list[Witnessed] = []
    for path in paths:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise _Exit(
                FAILED, f"FAILED: witness {path} cannot be read ({e.strerror}): lost sink?"
            ) from None
        out.extend(witness.check(witness.parse(text, path), list(keys.checkpoint_keys)))
    return out


# -- verify ----------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    return _run(lambda: _verify(args))


async def _verify(args: argparse.Namespace) -> int:
    log = await _read(args)
    try:
        keys = _keys(args, log)
        since = _saved_checkpoint(args.since) if args.since else None
        report = verify(log.items, keys, since=since, witnessed=_witnessed(args.witness, keys))
        if report.ok and log.live is not None and not args.no_sources:
            await _cross_check(log.live.js, log.items, report)
        print(report.summary())
        if report.ok and args.save_checkpoint:
            newest = report.trail.last_checkpoint
            if newest is None:
                print("no checkpoint to save yet", file=sys.stderr)
            else:
                Path(args.save_checkpoint).write_bytes(witness.line_of(newest))
                size = newest.tree_size
                note(f"saved the checkpoint of tree size {size} to {args.save_checkpoint}")
        return OK if report.ok else FAILED
    finally:
        if log.live is not None:
            await log.live.nc.close()


async def _cross_check(js: JetStreamContext, items: list[LogItem], report: Report) -> None:
    """Each fact against the message its stream still holds; how far each stream is behind."""
    facts = [
        (log_seq, r, f)
        for log_seq, r in accepted_records(items, report.trail.keys)
        for f in r.facts
    ]
    direct: dict[str, bool] = {}
    last: dict[str, int] = {}
    for stream in {f.stream for _, _, f in facts} | set(report.trail.cursors):
        try:
            b = await logread.bounds(js, stream)
        except LantauError:
            continue
        direct[stream], last[stream] = b.direct, b.last_seq
    checked = gone = 0
    sem = asyncio.Semaphore(logread.WINDOW)

    async def one(stream: str, seq: int) -> logread.Fetched | None:
        if stream not in direct:
            return None
        async with sem:
            return await logread.fetch(js, stream, seq, direct=direct[stream])

    fetched = await asyncio.gather(*(one(f.stream, f.seq) for _, _, f in facts))
    for (log_seq, r, f), got in zip(facts, fetched, strict=True):
        if got is None or got.data is None:
            gone += 1
            continue
        checked += 1
        if content_hash(got.data) != f.sha256:
            report.fail(
                log_seq,
                r.seq,
                f"fact {f.stream}:{f.seq} does not match the message the stream holds (its "
                "SHA-256 differs): the record or the source message was changed",
            )
            return
    report.notes.append(
        f"facts checked against their streams: {checked} match"
        + (f"; {gone} no longer in their stream (aged out)" if gone else "")
    )
    behind = [
        f"{s}:{report.trail.cursors.get(s, 0) + 1}..{n}"
        for s, n in sorted(last.items())
        if n > report.trail.cursors.get(s, 0)
    ]
    if behind:
        report.notes.append("not yet recorded (the audit service is behind): " + ", ".join(behind))


# -- export, show ----------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    async def body() -> int:
        log = await _read(args)
        assert log.live is not None
        await log.live.nc.close()
        text = "".join(line_of(i, log.raws.get(i.log_seq)) + "\n" for i in log.items)
        if args.out in (None, "-"):
            sys.stdout.write(text)
        else:
            Path(args.out).write_text(text)
            print(f"wrote {len(log.items)} log entries to {args.out}", file=sys.stderr)
        return OK

    return _run(body)


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


def cmd_show(args: argparse.Namespace) -> int:
    async def body() -> int:
        log = await _read(args)
        assert log.live is not None
        try:
            args.trusted_key = args.trusted_key or []
            keys = _keys(args, log)
            found = [
                (log_seq, r, f)
                for log_seq, r in accepted_records(log.items, keys)
                for f in r.facts
                if f.request_id == args.request
            ]
            if not found:
                print(f"no audit records for request {args.request}")
                return FAILED
            print(f"request {args.request}: {len(found)} facts in the audit log")
            for log_seq, r, f in found:
                got = await logread.fetch(log.live.js, f.stream, f.seq, direct=False)
                if got.data is None:
                    detail = "(aged out of its stream; its hash is in the record)"
                elif content_hash(got.data) != f.sha256:
                    detail = "(THE STREAM'S MESSAGE DOES NOT MATCH THE RECORDED HASH)"
                else:
                    detail = _summary(got.data)
                when = time.strftime("%H:%M:%S", time.localtime(r.at_ms / 1000))
                when += f".{r.at_ms % 1000:03d}"
                print(
                    f"  #{r.seq:<6} log {log_seq:<7} {when} {f.event_type:<18} by "
                    f"{f.actor:<14} {detail}"
                )
            return OK
        finally:
            await log.live.nc.close()

    return _run(body)


# -- proofs ----------------------------------------------------------------------------


def cmd_prove(args: argparse.Namespace) -> int:
    async def body() -> int:
        log = await _read(args)
        try:
            keys = _keys(args, log)
            since = _saved_checkpoint(args.from_checkpoint) if args.from_checkpoint else None
            report = verify(log.items, keys, since=since)
            if not report.ok:
                print(report.summary())
                return FAILED
            trail = report.trail
            newest = trail.last_checkpoint
            if newest is None:
                raise _Exit(FAILED, "FAILED: the log has no checkpoint to prove against yet")
            doc: proofs.AuditProof
            if since is not None:
                doc = proofs.consistency(trail, since.checkpoint, newest)
            else:
                record = _find_record(log.items, keys, trail, args)
                if record.seq > newest.tree_size:
                    raise _Exit(
                        FAILED,
                        f"FAILED: record {record.seq} is not yet under a checkpoint (the newest "
                        f"covers {newest.tree_size}); try again in a few seconds",
                    )
                doc = proofs.inclusion(trail, record, newest)
            data = proofs.encode(doc) + b"\n"
            if args.out in (None, "-"):
                sys.stdout.write(data.decode())
            else:
                Path(args.out).write_bytes(data)
                note(f"wrote the proof to {args.out}")
            return OK
        finally:
            if log.live is not None:
                await log.live.nc.close()

    return _run(body)


def _find_record(
    items: list[LogItem], keys: Keys, trail: Trail, args: argparse.Namespace
) -> AuditRecord:
    wanted_fact: tuple[str, int] | None = None
    if args.fact:
        stream, _, seq = args.fact.rpartition(":")
        if not stream or not seq.isdigit():
            raise _Exit(USAGE, "lantau: --fact is STREAM:SEQ, e.g. LANTAU_RESULTS:42")
        wanted_fact = (stream, int(seq))
    for _, r in accepted_records(items, keys):
        if args.record is not None and r.seq == args.record:
            return r
        if wanted_fact and any((f.stream, f.seq) == wanted_fact for f in r.facts):
            return r
    what = f"record {args.record}" if args.record is not None else f"fact {args.fact}"
    raise _Exit(FAILED, f"FAILED: no {what} in the log (it has {trail.head_seq} records)")


def cmd_check_proof(args: argparse.Namespace) -> int:
    try:
        doc = proofs.decode(Path(args.proof).read_bytes())
    except OSError as e:
        return _usage(f"cannot read {args.proof}: {e.strerror}")
    except LantauError as e:
        return _usage(e.message)
    try:
        checkpoint_keys = _hex_keys(args.trusted_key, "--trusted-key", (33, 65))
        record_keys = set(_hex_keys(args.record_key, "--record-key", (32,)))
        if not checkpoint_keys:
            return _usage("check-proof needs --trusted-key")
        if isinstance(doc, proofs.AuditInclusion) and not record_keys:
            return _usage("an inclusion proof needs --record-key")
        if args.since and isinstance(doc, proofs.AuditConsistency):
            saved = _saved_checkpoint(args.since).checkpoint
            if saved != doc.old:
                print("FAILED: the proof does not start from your saved checkpoint")
                return FAILED
        what = proofs.check(doc, checkpoint_keys, record_keys)
    except _Exit as e:
        print(e.message)
        return e.code
    except LantauError as e:
        print(f"FAILED: {e.message}")
        return FAILED
    print(f"OK: {what}")
    return OK


# -- keys ------------------------------------------------------------------------------


def cmd_key(args: argparse.Namespace) -> int:
    async def body() -> int:
        live = await _connect(args)
        await live.nc.close()
        key = live.writer_key if args.record else (live.checkpoint_key or b"").hex()
        if not key:
            print("no such key yet", file=sys.stderr)
            return FAILED
        print(key)
        return OK

    return _run(body)


def cmd_keygen(args: argparse.Namespace) -> int:
    try:
        key = keyfile.create(args.out)
    except LantauError as e:
        return _usage(e.message)
    print(key.public_hex)
    return OK


def _usage(message: str) -> int:
    print(f"lantau: {message}", file=sys.stderr)
    return USAGE


def add_parsers(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser("audit", help="verify and read the audit trail").add_subparsers(
        dest="audit", required=True
    )

    def keys(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--trusted-key", action="append", default=[], help="checkpoint public key (hex)"
        )
        p.add_argument(
            "--record-key", action="append", default=[], help="record public key (hex, Ed25519)"
        )

    p = audit.add_parser("verify", help="check the records, checkpoints and witnesses")
    p.add_argument("--file", help="verify an exported JSON-lines file instead of the live log")
    keys(p)
    p.add_argument("--since", help="a checkpoint you saved: the log must still hold its tree")
    p.add_argument(
        "--witness", action="append", default=[], help="a witness file to check the log against"
    )
    p.add_argument("--save-checkpoint", help="write the newest verified checkpoint here")
    p.add_argument(
        "--no-sources", action="store_true", help="skip checking facts against their streams"
    )
    p.add_argument("--config")
    p.set_defaults(fn=cmd_verify)
    p = audit.add_parser("export", help="write the log as JSON lines, one per log sequence")
    p.add_argument("--out", help="file (default stdout)")
    p.add_argument("--config")
    p.set_defaults(fn=cmd_export)
    p = audit.add_parser("show", help="the story of one request, in order")
    p.add_argument("--request", required=True)
    keys(p)
    p.add_argument("--config")
    p.set_defaults(fn=cmd_show)
    p = audit.add_parser("prove", help="a consistency or inclusion proof an auditor can check")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--from", dest="from_checkpoint", help="a saved checkpoint: prove the log only grew"
    )
    which.add_argument("--record", type=int, help="prove this record is in the newest tree")
    which.add_argument("--fact", help="STREAM:SEQ: prove the record holding it is in the tree")
    p.add_argument("--file", help="an export instead of the live log")
    p.add_argument("--out", help="file (default stdout)")
    keys(p)
    p.add_argument("--config")
    p.set_defaults(fn=cmd_prove)
    p = audit.add_parser("check-proof", help="check a proof made by `lantau audit prove`")
    p.add_argument("proof")
    keys(p)
    p.add_argument("--since", help="for a consistency proof: the checkpoint you saved")
    p.set_defaults(fn=cmd_check_proof)
    p = audit.add_parser("key", help="print the checkpoint public key (hex)")
    p.add_argument("--record", action="store_true", help="the record key instead")
    p.add_argument("--config")
    p.set_defaults(fn=cmd_key)
    p = audit.add_parser("keygen", help="make a record key seed file (0600); prints its public key")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_keygen)
