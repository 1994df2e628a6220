"""The audit trail on the live platform: complete, unbroken, verifiable by an outsider."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable

from devkit import auditrest
from libs import config as config_mod
from libs.audit import logread
from libs.audit.trail import Keys
from libs.audit.verify import missing_facts, verify
from libs.bus.permissions import AUDIT_ROLE, OPERATOR
from libs.keys.directory import KeyDirectory
from proto.subjects import AUDIT_CHECKPOINT_KEY, RESULTS, result_subject
from tests.e2e.helpers import lantau
from tests.e2e.test_crash import _submit_all, _wait_all, _wait_for_progress


async def checkpoint_key(js) -> bytes:
    for _ in range(100):
        record, _ = await (await KeyDirectory.open(js)).get(AUDIT_CHECKPOINT_KEY, fresh=True)
        if record is not None and record.public_key:
            return record.public_key
        await asyncio.sleep(0.2)
    raise AssertionError("the audit service never made its checkpoint key")


def record_key(stack) -> bytes:
    """The record key the dev stack's audit service made (read from its seed file the way
    an operator records it at deployment)."""
    from libs.audit import keyfile

    assert stack.config.audit.record_key_file
    return keyfile.load(stack.config.audit.record_key_file).public_key


def pins(stack, checkpoint: bytes) -> list[str]:
    return ["--trusted-key", checkpoint.hex(), "--record-key", record_key(stack).hex()]


def audit_cli(stack, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``lantau audit <command>`` against the stack, printed for the record."""
    out = lantau("audit", command, "--config", str(stack.config_path), *args)
    said = f"{out.stdout}{out.stderr}(exit {out.returncode})"
    print(f"\n$ lantau audit {command} {' '.join(args)}\n{said}")
    return out


def metric(stack, service: str, name: str, **labels: str) -> float | None:
    """One sample from a service's /metrics (None when absent)."""
    with urllib.request.urlopen(stack.url(service), timeout=5) as r:
        text = r.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if labels else "") + r" (\S+)"
    m = re.search(r"^" + pattern + r"$", text, re.M)
    return float(m.group(1)) if m else None


def readiness(stack, service: str) -> str:
    try:
        with urllib.request.urlopen(stack.url(service, "/readyz"), timeout=5) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:
        return e.read().decode()


def service_log(stack, service: str) -> str:
    return stack.service(service).log_path.read_text(errors="replace")


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s")
        await asyncio.sleep(0.2)


async def at_rest(js, keys: Keys, expected: list[tuple[str, int]]) -> bool:
    """Every expected fact recorded and under the newest checkpoint (devkit/auditrest.py);
    a log that fails to verify fails the test at once."""
    return not await auditrest.behind(js, keys, expected)


async def test_killing_audit_under_load_leaves_an_unbroken_trail_covering_every_signature(
    fresh_platform, trader_key
):
    from tests.conftest import connect_client

    client = await connect_client(fresh_platform, trader_key)
    # The auditor's views: as the operator (a requester may read none of this).
    operator = await fresh_platform.connect_as(OPERATOR)
    try:
        await client.create_key("desk-a-audit", "secp256k1")
        requests = await _submit_all(client, "desk-a-audit", 300)
        await _wait_for_progress(client, requests, 20)
        fresh_platform.service("audit").kill()
        # Fail closed, not fail stopped: signing goes on; intents wait durably in their stream.
        results = await _wait_all(client, requests)
        assert all(r is not None and r.status == "signed" for r in results)
        await fresh_platform.restart("audit")

        js = operator.jetstream()
        keys = Keys(frozenset({record_key(fresh_platform)}), (await checkpoint_key(js),))
        expected = []
        for request, _ in requests:
            subject = result_subject(request.requester, request.request_id)
            raw = await js.get_last_msg(RESULTS.name, subject)
            expected.append((RESULTS.name, raw.seq))
        for _ in range(150):
            report = verify(await logread.read_all(js), keys)
            if not missing_facts(report.trail, expected):
                break
            await asyncio.sleep(0.2)
        assert not missing_facts(report.trail, expected), "signatures missing from the trail"

        await asyncio.sleep(6)  # a checkpoint over the head after the catch-up
        items = await logread.read_all(js)
        report = verify(items, keys)
        assert report.ok, report.summary()
        trail = report.trail
        assert trail.checkpoints >= 1 and trail.facts >= 1200
        # Batches: far fewer records than facts, every fact exactly once (the trail checks).
        assert trail.head_seq < trail.facts
        intents = {
            f.request_id
            for item in items
            if item.entry is not None and hasattr(item.entry, "facts")
            for f in item.entry.facts
            if f.event_type == "audit_intent"
        }
        assert intents >= {r.request_id for r, _ in requests}

        # The auditor's own tools, from the command line, on the live log and on an export.
        config = str(fresh_platform.config_path)
        pins = ["--trusted-key", keys.checkpoint_keys[0].hex()]
        pins += ["--record-key", record_key(fresh_platform).hex()]
        live = lantau("audit", "verify", "--config", config, *pins)
        assert live.returncode == 0 and live.stdout.startswith("OK"), live.stdout + live.stderr
        assert "facts checked against their streams" in live.stdout, live.stdout
        witness = fresh_platform.config.audit.witness_files[0]
        witnessed = lantau("audit", "verify", "--config", config, *pins, "--witness", witness)
        assert witnessed.returncode == 0, witnessed.stdout + witnessed.stderr
        export = fresh_platform.run_dir / "audit.jsonl"
        assert lantau("audit", "export", "--config", config, "--out", str(export)).returncode == 0
        offline = lantau("audit", "verify", "--file", str(export), *pins)
        assert offline.returncode == 0, offline.stdout + offline.stderr
        lines = export.read_text().splitlines()
        lines[5] = lines[5].replace('"actor":"', '"actor":"x', 1)
        export.write_text("\n".join(lines) + "\n")
        tampered = lantau("audit", "verify", "--file", str(export), *pins)
        assert tampered.returncode == 1 and "FAILED at log seq 6" in tampered.stdout, (
            tampered.stdout
        )
        wrong_key = lantau("audit", "verify", "--config", config, "--trusted-key", "02" + "11" * 32)
        assert wrong_key.returncode == 1, wrong_key.stdout
        assert "not signed by a trusted key" in wrong_key.stdout, wrong_key.stdout

        story = lantau("audit", "show", "--config", config, "--request", requests[0][0].request_id)
        assert story.returncode == 0, story.stdout + story.stderr
        for step in ("sign_request", "sign_order", "audit_intent", "sign_result"):
            assert step in story.stdout, story.stdout
        # The key-domain ceremony that formed this platform is on record, by phase.
        admin = [
            f
            for item in items
            if item.entry is not None and hasattr(item.entry, "facts")
            for f in item.entry.facts
            if f.event_type == "admin_action"
        ]
        assert len(admin) >= 2 * len(fresh_platform.config.hsm_nodes)
    finally:
        await client.close()
        await operator.close()


def test_an_admin_command_that_cannot_be_recorded_does_not_run(tmp_path):
    config = tmp_path / "lantau.toml"
    config.write_text('[nats]\nservers = ["nats://127.0.0.1:1"]\nconnect_timeout_s = 1\n')
    pin = tmp_path / "so.pin"
    pin.write_text("123456")
    out = lantau(
        "hsm", "domain-init", "--config", str(config), "--node", "hsm-1", "--so-pin-file", str(pin)
    )
    assert out.returncode != 0
    assert "refusing to run hsm domain-init: the audit trail cannot record it" in out.stderr
    assert "Traceback" not in out.stderr and "123456" not in out.stderr


def test_verify_says_it_cannot_read_when_nats_does_not_answer(tmp_path):
    config = tmp_path / "lantau.toml"
    config.write_text('[nats]\nservers = ["nats://127.0.0.1:1"]\nconnect_timeout_s = 1\n')
    out = lantau("audit", "verify", "--config", str(config), "--trusted-key", "02" + "11" * 32)
    assert out.returncode == 3, out.stdout + out.stderr
    assert out.stdout.startswith("cannot read:") and "Traceback" not in out.stdout + out.stderr


async def test_verify_names_a_missing_log_stream(nats_server, tmp_path):
    _, nats_cfg = nats_server()
    config = tmp_path / "lantau.toml"
    config.write_text(config_mod.dump(config_mod.Config(nats=nats_cfg)))
    out = lantau("audit", "verify", "--config", str(config), "--trusted-key", "02" + "11" * 32)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "stream LANTAU_AUDIT_LOG does not exist" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


async def test_two_audit_replicas_record_every_fact_once_and_never_fork(fresh_platform, trader_key):
    """A second audit service on the same log (same record key, same witness file):
    the two compete for the consumers' facts and for the log's head."""
    from devkit.natsserver import free_port
    from tests.conftest import connect_client

    stack = fresh_platform
    port = free_port()
    env = {"LANTAU__AUDIT__ID": "audit-2", "LANTAU__AUDIT__METRICS_PORT": str(port)}
    stack.start_service("audit-2", ["serve", "audit"], port, env=env, identity=AUDIT_ROLE)
    await stack.wait_ready(["audit-2"])
    client = await connect_client(stack, trader_key)
    operator = await stack.connect_as(OPERATOR)
    try:
        await client.create_key("desk-a-two", "secp256k1")
        requests = await _submit_all(client, "desk-a-two", 200)
        results = await _wait_all(client, requests)
        assert all(r is not None and r.status == "signed" for r in results)
        js = operator.jetstream()  # the auditor's views
        keys = Keys(frozenset({record_key(stack)}), (await checkpoint_key(js),))
        expected = []
        for spec in ("LANTAU_REQUESTS", "LANTAU_ORDERS", "LANTAU_RESULTS", "LANTAU_AUDIT"):
            expected.append((spec, (await js.stream_info(spec)).state.last_seq))

        # Never forked, never a duplicate (the verifier), every fact recorded once.
        await eventually(lambda: at_rest(js, keys, expected), 60)
        both = [
            metric(stack, name, "lantau_audit_facts_total") or 0 for name in ("audit", "audit-2")
        ]
        print(f"facts recorded by each replica: {both}")
        witness = stack.config.audit.witness_files[0]
        out = audit_cli(
            stack, "verify", *pins(stack, keys.checkpoint_keys[0]), "--witness", witness
        )
        assert out.returncode == 0, out.stdout
    finally:
        await client.close()
        await operator.close()
