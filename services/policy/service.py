"""policy: authenticates requests, enforces need-to-know and the rules, holds requests
for approvals, and issues orders.

For one request: decode -> authenticate -> claim the request id (KV create) ->
freshness -> need-to-know -> payload fits the key -> rules with velocity windows
(KV compare-and-set) -> order, refusal, or held for approvers. Votes from approvers
arrive on the same stream and are counted against the held request by CAS.
"""

from __future__ import annotations

import asyncio
import logging

from nats.js.kv import KeyValue

from libs import chains, curves, evidence, metrics, tracing
from libs.bus import kv
from libs.bus.consume import Consumer, Delivery
from libs.bus.publish import last_on_subject
from libs.clock import now_ms
from libs.config import Config, ConfigError, RequesterConfig
from libs.evidence import PLATFORM_KEY_PREFIX
from libs.headers import safe_for_log
from libs.hsm import authority
from libs.keys.directory import KeyDirectory
from libs.keys.signing import required_public, signing_public
from libs.keytypes import kinds
from libs.logs import request_id_var
from libs.policy_store import PolicyStore
from libs.service import Runtime, ServiceEntry
from proto import codec
from proto.approvals import ApprovalVote
from proto.authorization import digest_of
from proto.codec import PolicyInput
from proto.common import TX_KINDS
from proto.credentials import (
    CredentialEndorsement,
    CredentialProposal,
    CredentialRevocation,
    SecondFactorCheck,
    TotpEnrolment,
)
from proto.errors import ErrorCode, LantauError
from proto.keys import KeyRecord
from proto.orders import Decision
from proto.requests import CreateKeyRequest, Request, SignRequest, request_hash
from proto.subjects import (
    APPROVALS_BUCKET,
    CREDENTIALS_BUCKET,
    POLICY_REQUESTS,
    REQUESTS_BUCKET,
    RESULTS,
    VELOCITY_BUCKET,
    request_key,
    result_subject,
    sender_of,
)
from services.policy import auth, rules
from services.policy.approval_state import Approvals
from services.policy.authorize import Authorizer
from services.policy.facts import Judged, facts_of
from services.policy.outcomes import publish_order, publish_refusal
from services.policy.second_factors import SecondFactors, sender_problem
from services.policy.velocity_state import VelocityBook

log = logging.getLogger("lantau.policy")


class PolicyService:
    def __init__(
        self,
        rt: Runtime,
        requests_kv: KeyValue,
        keys: KeyDirectory,
        held: Approvals,
        velocity: VelocityBook,
        policies: PolicyStore,
        authorizer: Authorizer,
        second_factors: SecondFactors,
    ) -> None:
        self.rt = rt
        self.cfg = rt.config.policy
        self.requests_kv = requests_kv
        self.keys = keys
        self.held = held
        self.velocity = velocity
        self.policies = policies
        self.authorizer = authorizer
        self.second_factors = second_factors

    async def handle(self, message: PolicyInput, delivery: Delivery) -> None:
        if isinstance(message, _CREDENTIAL_REQUESTS):
            problem = sender_problem(message, sender_of(delivery.subject))
            if problem:
                raise LantauError(ErrorCode.SUBJECT_MISMATCH, problem)
            await self.second_factors.handle(message, self.policies.current)
            return
        check_sender(message, delivery.subject)
        if isinstance(message, ApprovalVote):
            await self.held.vote(message, self.policies.current)
            return
        request = message
        request_id_var.set(request.request_id)
        tracing.annotate(request_id=request.request_id, key_id=request.key_id)
        requester = auth.authenticate(request, self.rt.config.requester(request.requester))
        digest = request_hash(request)
        fresh = await self._claim(request, digest)
        if not fresh and await last_on_subject(
            self.rt.js, RESULTS.name, result_subject(request.requester, request.request_id)
        ):
            return  # a resend of an answered request: the client reads the stored result
        now = now_ms()
        auth.check_freshness(request, self.cfg, now)
        pattern = auth.check_access(request, requester)
        if request.key_id.startswith(PLATFORM_KEY_PREFIX):
            raise LantauError(
                ErrorCode.RESERVED_KEY, f"{request.key_id} is a platform key, nobody's to use"
            )
        deadline = now + self.cfg.order_deadline_ms
        if isinstance(request, CreateKeyRequest):
            kinds.effective_hss(request.curve, request.hss)  # a shape only for lms-hss
            decision = Decision(
                policy_version="config",
                rule="need-to-know",
                explanation=f"{requester.name} may create keys matching {pattern!r}",
            )
            create_order = await self.authorizer.create_order(
                request, decision=decision, issued_at_ms=now, deadline_ms=deadline
            )
            metrics.POLICY_DECISIONS.labels(decision.rule, "allow").inc()
            await publish_order(self.rt.js, create_order)
            return
        record, _ = await self.keys.get(request.key_id)
        if record is None or record.status != "active":
            raise LantauError(ErrorCode.UNKNOWN_KEY, f"key {request.key_id} does not exist")
        judged = self._judge(request, requester, record)
        policy = self.policies.current
        rules.check_facts(policy, judged.facts)
        verdict = await self.velocity.decide(
            policy, request, now, seen_before=not fresh, facts=judged.facts
        )
        metrics.POLICY_DECISIONS.labels(verdict.rule, verdict.action).inc()
        if judged.facts.blind:
            metrics.BLIND_REQUESTS.labels(verdict.action).inc()
        tracing.annotate(rule=verdict.rule, decision=verdict.action)
        if verdict.action == "deny":
            await publish_refusal(
                self.rt.js, request, str(ErrorCode.POLICY_DENIED), verdict.explanation, "rejected"
            )
        elif verdict.action == "approve":
            await self.held.hold(request, verdict, now, judged)
        else:
            order = await self.authorizer.sign_order(
                request,
                curve=record.curve,
                digests=judged.digests,
                blind=judged.facts.blind,
                view_sha256=judged.facts.view_sha256,
                decision=Decision(
                    policy_version=verdict.policy_version,
                    rule=verdict.rule,
                    explanation=verdict.explanation,
                ),
                issued_at_ms=now,
                deadline_ms=min(deadline, request.expires_at_ms),
            )
            await publish_order(self.rt.js, order)

    def _judge(self, request: SignRequest, requester: RequesterConfig, record: KeyRecord) -> Judged:
        """The facts policy judges, and the exact bytes an HSM would sign for them."""
        curve = record.curve
        kinds.check_path(curve, request.path)
        auth.check_path(request, requester)
        if request.payload_kind in TX_KINDS:
            if kinds.scheme(curve) != chains.curve_for(request.payload_kind):
                raise LantauError(
                    ErrorCode.CURVE_MISMATCH,
                    f"a {request.payload_kind} payload is not signed by a {curve} key",
                )
            # An HD key's transaction is decoded with the child key that signs it.
            public_key = required_public(record, request.path)
            parsed = chains.parse(
                request.payload_kind, request.payload, public_key, chain_hint=request.chain
            )
            facts = facts_of(request, parsed, protection=record.protection)
        else:
            curves.check_payload(curve, request.payload_kind, request.payload)
            auth.check_blind(request, requester)
            # A raw payload's bytes do not depend on the key that signs it.
            public_key = signing_public(record, request.path) or b""
            facts = facts_of(request, None, protection=record.protection)
        data = evidence.bytes_to_sign(request, public_key)
        return Judged(facts, [digest_of(d) for d in data], curve, public_key)

    async def _claim(self, request: Request, digest: str) -> bool:
        """Bind the requester's id to this content forever; reusing it for other content
        is refused. True the first time the id is seen. Called only once the request is
        authenticated: ids live in their requester's namespace, nobody can squat one."""
        key = request_key(request.requester, request.request_id)
        if await kv.write(self.requests_kv, key, digest.encode(), 0) is not None:
            return True
        stored, _ = await kv.read(self.requests_kv, key)
        if stored is not None and stored.decode() != digest:
            raise LantauError(
                ErrorCode.REQUEST_ID_CONFLICT,
                f"request id {request.request_id} was already used for a different request",
            )
        # Same content: a resend or a redelivery; continuing is idempotent downstream.
        return False

    async def on_reject(
        self, message: PolicyInput | None, error: LantauError, delivery: Delivery
    ) -> None:
        if isinstance(message, _CREDENTIAL_REQUESTS):
            if error.code != ErrorCode.SUBJECT_MISMATCH:
                await self.second_factors.refused(message, error)
            return
        if isinstance(message, ApprovalVote):
            await self.held.refused(message, error)
            return
        if message is None or error.code in (
            ErrorCode.REQUEST_ID_CONFLICT,
            ErrorCode.SUBJECT_MISMATCH,
        ):
            # Junk, an id that belongs to another request, or a request sent by another
            # identity than the one it names: the dead-letter record (and the audit trail)
            # is the answer, never a result under someone's name.
            return
        if not self._authentic(message):
            return  # a forgery owns nothing: only the real requester may get a result
        status = "expired" if error.code == ErrorCode.REQUEST_EXPIRED else "rejected"
        await publish_refusal(self.rt.js, message, str(error.code), error.message, status)

    def _authentic(self, request: Request) -> bool:
        try:
            auth.authenticate(request, self.rt.config.requester(request.requester))
        except LantauError:
            return False
        return True


_CREDENTIAL_REQUESTS = (
    CredentialProposal,
    TotpEnrolment,
    CredentialEndorsement,
    CredentialRevocation,
    SecondFactorCheck,
)


def check_sender(message: Request | ApprovalVote, subject: str) -> None:
    """The bus lets each identity publish only on its own request subject; a message whose
    requester/approver field names someone else was sent by the wrong identity."""
    claimed = message.approver if isinstance(message, ApprovalVote) else message.requester
    if sender_of(subject) != claimed:
        who = "approver" if isinstance(message, ApprovalVote) else "requester"
        raise LantauError(
            ErrorCode.SUBJECT_MISMATCH,
            f"{who} {claimed!r} did not send this: it came on {safe_for_log(subject)}",
        )


def approver_scopes(cfg: Config) -> dict[str, list[str]]:
    """Each approver's readable requesters: the ``approves_for`` of every group of the
    policy file that lists it (the bus allow-lists give approvers these and no more)."""
    store = PolicyStore(cfg.policy.rules_file)
    store.load()
    scopes: dict[str, list[str]] = {}
    for group in store.current.file.groups.values():
        for approver in group.approvers:
            scopes.setdefault(approver, [])
            scopes[approver] += [r for r in group.approves_for if r not in scopes[approver]]
    return scopes


def second_factor_required(cfg: Config) -> bool:
    """The policy file's [second_factor] required (what `lantau approve` asks for)."""
    store = PolicyStore(cfg.policy.rules_file)
    store.load()
    return store.current.file.second_factor.required


def check(cfg: Config) -> None:
    """Refuse to start on a policy file that does not load (there is no old one to keep),
    or without the authority key the hsm-nodes would accept."""
    PolicyStore(cfg.policy.rules_file).load()
    if cfg.policy.authority is None:
        raise ConfigError("[policy] authority: policy signs every order; configure its key")


async def serve(rt: Runtime) -> None:
    chains.preload()
    policies = PolicyStore(rt.config.policy.rules_file)
    policies.load()
    assert rt.config.policy.authority is not None  # check() refused to start otherwise
    key = await asyncio.to_thread(authority.load, rt.config.policy.authority)
    if key.public_hex not in rt.config.evidence.policy_keys:
        log.error("policy's authority key %s is not pinned in [evidence]", key.public_hex[:16])
    authorizer = Authorizer(key)
    held = Approvals(rt, await rt.js.key_value(APPROVALS_BUCKET), authorizer)
    velocity = VelocityBook(await rt.js.key_value(VELOCITY_BUCKET))
    held.velocity = velocity
    second_factors = SecondFactors(rt, await rt.js.key_value(CREDENTIALS_BUCKET), key)
    held.second_factors = second_factors
    policy = PolicyService(
        rt,
        await rt.js.key_value(REQUESTS_BUCKET),
        await KeyDirectory.open(rt.js),
        held,
        velocity,
        policies,
        authorizer,
        second_factors,
    )
    consumer = Consumer(
        rt.nc,
        rt.js,
        POLICY_REQUESTS,
        codec.POLICY_INPUT.decode,
        policy.handle,
        batch=rt.config.policy.fetch_batch,
        concurrency=rt.config.policy.fetch_batch * 2,
        on_reject=policy.on_reject,
        name="policy",
    )
    background = [
        asyncio.create_task(policies.watch(rt.stopping, rt.config.policy.reload_interval_s)),
        asyncio.create_task(held.sweep(rt.stopping)),
    ]
    rt.set_ready("startup", True)
    try:
        await consumer.run(rt.stopping)
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await key.close()


ENTRY = ServiceEntry(section="policy", serve=serve, check=check)
