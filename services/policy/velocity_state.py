"""Velocity windows in JetStream KV, changed only by compare-and-set so that several
policy replicas and redelivered messages never count a request twice or exceed a limit."""

from __future__ import annotations

import asyncio

import msgspec
from nats.js.kv import KeyValue

from libs.bus import kv
from libs.policy_file import Policy
from proto.approvals import ChargeRef
from proto.errors import ErrorCode, TransientError
from proto.requests import SignRequest
from proto.subjects import request_key
from services.policy import rules
from services.policy import velocity as vel
from services.policy.facts import Facts, facts_of

_CAS_ATTEMPTS = 20
# JSON: a verdict carries amounts that may not fit 64 bits.
_verdict_encoder = msgspec.json.Encoder()
_verdict_decoder = msgspec.json.Decoder(rules.Verdict)


class VelocityBook:
    def __init__(self, bucket: KeyValue) -> None:
        self.kv = bucket
        # Requests of one replica touching the same windows take turns: compare-and-set
        # then only conflicts across replicas, instead of every concurrent request
        # re-evaluating against every other.
        self._locks: dict[tuple[str, ...], asyncio.Lock] = {}

    async def decide(
        self,
        policy: Policy,
        request: SignRequest,
        now: int,
        *,
        seen_before: bool = True,
        facts: Facts | None = None,
    ) -> rules.Verdict:
        """Decide once per request, whatever the redeliveries and replicas.

        A decision that counted towards velocity windows (or holds the request for
        approval) is kept (KV create); a later delivery returns it. Before it
        is kept, every window is charged at the revision evaluated: a window that moved
        in between (another replica charged it) means evaluating again on fresh state,
        so a limit is never exceeded.
        """
        memo_key = f"decision.{request_key(request.requester, request.request_id)}"
        if seen_before:  # a request id seen for the first time has no decision yet
            data, _ = await kv.read(self.kv, memo_key)
            if data is not None:
                return _verdict_decoder.decode(data)
        facts = facts or facts_of(request, None)
        counters = tuple(sorted(c.counter for c in rules.charges_for(policy, request, facts)))
        if counters:
            lock = self._locks.setdefault(counters, asyncio.Lock())
            async with lock:
                decision = await self._evaluate_and_charge(policy, request, now, facts)
            if not lock.locked() and len(self._locks) > 10_000:
                self._locks.pop(counters, None)
        else:
            decision = await self._evaluate_and_charge(policy, request, now, facts)
        if not decision.charges and decision.action != "approve":
            # Nothing counted: evaluating again gives the same answer under the same
            # policy, so no stored decision (and no disk write) is needed.
            return decision
        if await kv.write(self.kv, memo_key, _verdict_encoder.encode(decision), 0) is None:
            data, _ = await kv.read(self.kv, memo_key)  # another replica decided first
            if data is not None:
                return _verdict_decoder.decode(data)
        return decision

    async def _evaluate_and_charge(
        self, policy: Policy, request: SignRequest, now: int, facts: Facts
    ) -> rules.Verdict:
        rkey = request_key(request.requester, request.request_id)
        for _ in range(_CAS_ATTEMPTS):
            read = {}
            for charge in rules.charges_for(policy, request, facts):
                data, revision = await kv.read(self.kv, charge.counter)
                read[charge.counter] = (vel.decode(data), revision)
            # A request charged by a replica that died before deciding is judged afresh.
            windows = {k: w.released(rkey) for k, (w, _) in read.items()}
            decision = rules.evaluate(policy, request, now, windows, facts)
            if decision.action == "deny":
                await self.release(list(read), rkey)
                return decision
            if decision.action == "approve":
                # Only what is signed counts: a held request is charged once approved, so
                # a huge request waiting for approvers never blocks the requester's others.
                await self.release(list(read), rkey)
                return decision
            applied: list[str] = []
            for charge in decision.charges:
                window, revision = read[charge.counter]
                if window.holds(rkey):
                    continue
                new = window.charged(rkey, now, charge.amount, charge.velocity.window_s)
                if await kv.write(self.kv, charge.counter, vel.encode(new), revision) is None:
                    break
                applied.append(charge.counter)
            else:
                return decision
            await self.release(applied, rkey)
        raise TransientError(ErrorCode.INTERNAL, "velocity windows kept changing; retrying")

    async def record_approved(self, charges: list[ChargeRef], rkey: str, now: int) -> None:
        """Count an approved request in its windows: approvers overrule the limit, so the
        charge is added whatever the window holds (once: a repeat finds it there)."""
        for charge in charges:
            for _ in range(_CAS_ATTEMPTS):
                data, revision = await kv.read(self.kv, charge.counter)
                window = vel.decode(data)
                if window.holds(rkey):
                    break
                new = vel.encode(window.charged(rkey, now, int(charge.amount), charge.window_s))
                if await kv.write(self.kv, charge.counter, new, revision) is not None:
                    break
            else:
                raise TransientError(ErrorCode.INTERNAL, "velocity windows kept changing")

    async def release(self, counters: list[str], request_id: str) -> None:
        """Take a request that will not be signed out of its windows."""
        for counter in counters:
            for _ in range(_CAS_ATTEMPTS):
                data, revision = await kv.read(self.kv, counter)
                window = vel.decode(data)
                if not window.holds(request_id):
                    break
                released = vel.encode(window.released(request_id))
                if await kv.write(self.kv, counter, released, revision) is not None:
                    break
