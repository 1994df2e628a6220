"""The audit trail on the live platform: complete, unbroken, verifiable by an outsider."""

from __future__ import annotations

import asyncio

from libs.audit.verify import missing_sources, verify
from libs.bus.permissions import OPERATOR
from libs.keys.directory import KeyDirectory
from proto.audit import AuditCheckpoint, AuditRecord
from proto.subjects import AUDIT_CHECKPOINT_KEY, RESULTS, result_subject
from services.cli.audit_cmd import read_log
from tests.e2e.helpers import lantau
from tests.e2e.test_crash import _submit_all, _wait_all, _wait_for_progress


async def _checkpoint_key(js) -> bytes:
    for _ in range(100):
        record, _ = await (await KeyDirectory.open(js)).get(AUDIT_CHECKPOINT_KEY, fresh=True)
        if record is not None and record.public_key:
            return record.public_key
        await asyncio.sleep(0.2)
    raise AssertionError("the audit service never made its checkpoint key")


async def test_killing_audit_under_load_leaves_an_unbroken_chain_covering_every_signature(
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
        expected = []
        for request, _ in requests:
            subject = result_subject(request.requester, request.request_id)
            raw = await js.get_last_msg(RESULTS.name, subject)
            expected.append(f"{RESULTS.name}:{raw.seq}")
        for _ in range(150):
            entries = await read_log(js)
            if not missing_sources(entries, expected):
                break
            await asyncio.sleep(0.2)
        assert not missing_sources(entries, expected), "signatures missing from the audit trail"
        intents = [
            e for e in entries if isinstance(e, AuditRecord) and e.event_type == "audit_intent"
        ]
        assert {e.request_id for e in intents} >= {r.request_id for r, _ in requests}

        key = await _checkpoint_key(js)
        await asyncio.sleep(6)  # a checkpoint over the head after the catch-up
        entries = await read_log(js)
        report = verify(entries, [key])
        assert report.ok, report.summary()
        assert report.checkpoints >= 1 and report.records >= 1200

        # The auditor's own tools, from the command line, on the live log and on an export.
        config = str(fresh_platform.config_path)
        live = lantau("audit", "verify", "--config", config, "--trusted-key", key.hex())
        assert live.returncode == 0 and live.stdout.startswith("OK"), live.stdout + live.stderr
        export = fresh_platform.run_dir / "audit.jsonl"
        assert lantau("audit", "export", "--config", config, "--out", str(export)).returncode == 0
        offline = lantau("audit", "verify", "--file", str(export), "--trusted-key", key.hex())
        assert offline.returncode == 0, offline.stdout + offline.stderr
        lines = export.read_text().splitlines()
        lines[5] = lines[5].replace('"actor":"', '"actor":"x', 1)
        export.write_text("\n".join(lines) + "\n")
        tampered = lantau("audit", "verify", "--file", str(export), "--trusted-key", key.hex())
        assert tampered.returncode == 1 and "FAILED at seq 6" in tampered.stdout
        wrong_key = lantau("audit", "verify", "--config", config, "--trusted-key", "02" + "11" * 32)
        assert wrong_key.returncode == 1 and "forged" in wrong_key.stdout

        story = lantau("audit", "show", "--config", config, "--request", requests[0][0].request_id)
        assert story.returncode == 0
        for step in ("sign_request", "sign_order", "audit_intent", "sign_result"):
            assert step in story.stdout, story.stdout
        assert any(isinstance(e, AuditCheckpoint) for e in entries)
        # The key-domain ceremony that formed this platform is on record, by phase.
        admin = [
            e for e in entries if isinstance(e, AuditRecord) and e.event_type == "admin_action"
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
