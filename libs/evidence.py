"""What the hsm-node checks before its HSM signs, generates or clones: pure functions.

The node holds the HSM PIN, so it is the last line: it pins the public keys of policy,
the backup service, every requester and approver (from the config and the policy
file), and refuses any operation whose evidence does not hold for exactly the key and
bytes at hand. No single compromised process (a client, policy, a signer, the bus) can
get a signature the others did not authorize.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field

import nacl.exceptions
import nacl.signing

from libs import chains
from libs.config import Config
from libs.credentials import vote_signer_problem
from libs.keytypes import kinds
from libs.policy_file import Policy
from proto import codec
from proto.approvals import ApprovalVote
from proto.approvals import signing_bytes as vote_bytes
from proto.authorization import (
    CloneAuthorization,
    CreateKeyAuthorization,
    SignAuthorization,
    digest_of,
    signing_bytes,
)
from proto.common import TX_KINDS
from proto.credentials import CredentialStatement
from proto.errors import ErrorCode, LantauError
from proto.keys import SealedKey
from proto.requests import CreateKeyRequest, SignRequest, request_hash
from proto.requests import signing_bytes as request_bytes

# Key ids of the platform's own keys (the audit checkpoint key): never a requester's.
PLATFORM_KEY_PREFIX = "lantau-"


@dataclass(frozen=True)
class Pins:
    """The public keys (Ed25519, hex) the node trusts, and the approver groups."""

    policy: frozenset[str]
    # Policy keys rotated out: they no longer authorize anything new, but the creation
    # records they signed still say where existing keys may live.
    retired_policy: frozenset[str] = frozenset()
    backup: frozenset[str] = frozenset()
    # Offline backup sets: set id -> the set's own key, the only one that authorizes a
    # copy into or out of that set (only a quorum of its custodians can rebuild it);
    # "" for a set whose key is not pinned yet: nothing goes in or out.
    backup_sets: Mapping[str, str] = field(default_factory=dict)
    requesters: Mapping[str, str] = field(default_factory=dict)
    approvers: Mapping[str, str] = field(default_factory=dict)
    groups: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Where each HSM node and backup set may hold keys: residency is checked against it.
    regions: Mapping[str, str | None] = field(default_factory=dict)
    # (key id patterns, group, quorum): approvals required whatever policy says.
    floors: tuple[tuple[tuple[str, ...], str, int], ...] = ()
    skew_ms: int = 30_000
    # Each approver's security keys that count now (the node recounts their enrolment
    # quorum from the lantau_credentials bucket); an assertion vote needs one of them.
    credentials: Mapping[str, tuple[CredentialStatement, ...]] = field(default_factory=dict)
    # The policy file's [second_factor] required: an Ed25519 vote must carry a TOTP code
    # (policy checked it: the node cannot, it holds no TOTP secret).
    second_factor_required: bool = False


def _refuse(code: ErrorCode, message: str) -> LantauError:
    return LantauError(code, message)


def signed_by(public_hex: str, data: bytes, signature: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(bytes.fromhex(public_hex)).verify(data, signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False
    return True


def _check_statement(
    statement: SignAuthorization | CreateKeyAuthorization | CloneAuthorization,
    trusted: frozenset[str],
    who: str,
    now_ms: int,
    skew_ms: int,
) -> None:
    if statement.signed_by not in trusted:
        raise _refuse(
            ErrorCode.EVIDENCE_REFUSED, f"the {who} key {statement.signed_by[:16]}... is not pinned"
        )
    if not signed_by(statement.signed_by, signing_bytes(statement), statement.signature):
        raise _refuse(ErrorCode.EVIDENCE_REFUSED, f"the {who} signature does not verify")
    if statement.issued_at_ms > now_ms + skew_ms:
        raise _refuse(
            ErrorCode.AUTHORIZATION_EXPIRED, f"the {who} authorization is from the future"
        )
    if now_ms > statement.not_after_ms:
        raise _refuse(ErrorCode.AUTHORIZATION_EXPIRED, f"the {who} authorization expired")


def check_policy_statement(
    statement: SignAuthorization | CreateKeyAuthorization, pins: Pins
) -> None:
    """Policy signed this, with a pinned key: what a signer checks of an order before
    anything else, so a forged order goes nowhere (freshness is the order's deadline)."""
    if statement.signed_by not in pins.policy:
        raise _refuse(ErrorCode.EVIDENCE_REFUSED, "the order is not signed by a pinned policy key")
    if not signed_by(statement.signed_by, signing_bytes(statement), statement.signature):
        raise _refuse(ErrorCode.EVIDENCE_REFUSED, "the order's policy signature does not verify")


def _requester_signed(request: SignRequest | CreateKeyRequest, pins: Pins) -> None:
    key = pins.requesters.get(request.requester)
    if key is None:
        raise _refuse(ErrorCode.EVIDENCE_REFUSED, f"requester {request.requester} is not pinned")
    if not signed_by(key, request_bytes(request), request.signature):
        raise _refuse(
            ErrorCode.EVIDENCE_REFUSED,
            f"the request is not signed by requester {request.requester}",
        )


def _mismatch(what: str) -> LantauError:
    return _refuse(ErrorCode.AUTHORIZATION_MISMATCH, f"the authorization is for another {what}")


def bytes_to_sign(request: SignRequest, public_key: bytes) -> list[bytes]:
    """Exactly what the HSM signs for this request, computed from the request itself."""
    if request.payload_kind in TX_KINDS:
        return chains.signing_inputs(
            request.payload_kind, request.payload, public_key, chain_hint=request.chain
        )
    return [request.payload]


def check_sign(
    request_data: bytes,
    authorization: SignAuthorization,
    approvals: list[ApprovalVote],
    *,
    key_id: str,
    public_key: bytes,
    pins: Pins,
    now_ms: int,
) -> list[bytes]:
    """The byte strings this node may sign for this request, or a typed refusal."""
    request = check_sign_parties(
        request_data, authorization, approvals, key_id=key_id, pins=pins, now_ms=now_ms
    )
    return check_sign_bytes(request, authorization, public_key)


def check_sign_parties(
    request_data: bytes,
    authorization: SignAuthorization,
    approvals: list[ApprovalVote],
    *,
    key_id: str,
    pins: Pins,
    now_ms: int,
) -> SignRequest:
    """Everything but the bytes: who signed what, for which key (and HD path), until
    when, approved by whom. Needs no key material, so a node refuses before it even looks
    its keys up (a refusal tells nothing of which keys it holds). The bytes need the key
    that signs (an HD child's is derived from the request's path): `check_sign_bytes`."""
    _check_statement(authorization, pins.policy, "policy", now_ms, pins.skew_ms)
    request = codec.REQUEST.decode(request_data)
    if not isinstance(request, SignRequest):
        raise _refuse(ErrorCode.EVIDENCE_REFUSED, "the evidence carries no sign request")
    _requester_signed(request, pins)
    a = authorization
    if (a.requester, a.request_id) != (request.requester, request.request_id):
        raise _mismatch("request")
    if a.request_hash != request_hash(request):
        raise _mismatch("request content")
    if key_id.startswith(PLATFORM_KEY_PREFIX) or a.key_id != key_id or request.key_id != key_id:
        raise _mismatch("key")
    if a.payload_kind != request.payload_kind or a.blind != (request.payload_kind not in TX_KINDS):
        raise _mismatch("kind of payload")
    if a.path != request.path:
        raise _mismatch("derivation path")
    try:
        kinds.check_path(a.curve, request.path)
    except LantauError as e:
        raise _refuse(ErrorCode.AUTHORIZATION_MISMATCH, e.message) from None
    _check_floor(a, pins)
    if a.quorum:
        _check_approvals(request, a, approvals, pins)
    return request


def _check_floor(a: SignAuthorization, pins: Pins) -> None:
    """The node's own minimum: policy's key can grant, never waive, these approvals."""
    for patterns, group, quorum in pins.floors:
        if any(fnmatch.fnmatchcase(a.key_id, p) for p in patterns) and (
            a.group != group or a.quorum < quorum
        ):
            raise _refuse(
                ErrorCode.APPROVALS_MISSING,
                f"key {a.key_id} needs {quorum} approvals of group {group!r} on this node",
            )


def check_sign_bytes(
    request: SignRequest, authorization: SignAuthorization, public_key: bytes
) -> list[bytes]:
    """The bytes to sign, recomputed from the request with the key that signs (an HD
    key's derived child), must be the authorized ones; for a transaction, so must the
    view the approvers were shown (their votes name it): the node decodes it too."""
    if request.payload_kind in TX_KINDS:
        parsed, data = chains.parse_for_signing(
            request.payload_kind, request.payload, public_key, chain_hint=request.chain
        )
        if authorization.view_sha256 != chains.view_digest(parsed):
            raise _mismatch("transaction view")
    else:
        data = [request.payload]
    if authorization.digests != [digest_of(d) for d in data]:
        raise _mismatch("bytes to sign")
    return data


def _check_approvals(
    request: SignRequest, a: SignAuthorization, votes: list[ApprovalVote], pins: Pins
) -> None:
    members = pins.groups.get(a.group)
    if members is None:
        raise _refuse(ErrorCode.APPROVALS_MISSING, f"approver group {a.group!r} is not pinned")
    payload_sha256 = digest_of(request.payload)
    counted: set[str] = set()
    hashes = set()
    for v in votes:
        if (
            v.approver not in pins.approvers
            or v.approver not in members
            or v.approver == request.requester
            or v.vote != "approve"
            or (v.requester, v.request_id) != (request.requester, request.request_id)
            or v.payload_sha256 != payload_sha256
            or (a.view_sha256 and v.view_sha256 != a.view_sha256)
            or vote_signer_problem(
                v,
                pins.approvers.get(v.approver),
                pins.credentials,
                second_factor_required=pins.second_factor_required,
            )
        ):
            continue
        counted.add(v.approver)
        hashes.add(digest_of(vote_bytes(v)))
    if len(counted) < a.quorum or not set(a.approvals) <= hashes:
        raise _refuse(
            ErrorCode.APPROVALS_MISSING,
            f"{len(counted)} valid approvals of group {a.group!r}, {a.quorum} needed",
        )


def check_create(
    request_data: bytes,
    authorization: CreateKeyAuthorization | None,
    *,
    key_id: str,
    curve: str,
    node: str,
    pins: Pins,
    now_ms: int,
) -> None:
    """May this node generate this key: policy's word, the requester's, the region."""
    if authorization is None:
        if not key_id.startswith(PLATFORM_KEY_PREFIX):
            raise _refuse(ErrorCode.EVIDENCE_REFUSED, f"no authorization to create key {key_id}")
        return  # a platform key: it can sign nothing but what its own op allows
    _check_statement(authorization, pins.policy, "policy", now_ms, pins.skew_ms)
    request = codec.REQUEST.decode(request_data)
    if not isinstance(request, CreateKeyRequest):
        raise _refuse(ErrorCode.EVIDENCE_REFUSED, "the evidence carries no key-creation request")
    _requester_signed(request, pins)
    a = authorization
    if (a.requester, a.request_id) != (request.requester, request.request_id):
        raise _mismatch("request")
    if a.request_hash != request_hash(request):
        raise _mismatch("request content")
    if key_id.startswith(PLATFORM_KEY_PREFIX) or (a.key_id, a.curve) != (key_id, curve):
        raise _mismatch("key")
    if (request.key_id, request.curve, request.region) != (key_id, curve, a.region):
        raise _mismatch("key")
    try:
        shape = kinds.effective_hss(request.curve, request.hss)
    except LantauError as e:
        raise _refuse(ErrorCode.AUTHORIZATION_MISMATCH, e.message) from None
    if shape != a.hss:
        raise _mismatch("HSS shape")
    _check_region(a, node, pins)


def _check_region(created: CreateKeyAuthorization, node: str, pins: Pins) -> None:
    if created.region is not None and pins.regions.get(node) != created.region:
        raise _refuse(
            ErrorCode.RESIDENCY_VIOLATION,
            f"key {created.key_id} belongs in region {created.region}; {node} is not there",
        )


def check_clone(
    clone: CloneAuthorization,
    created: CreateKeyAuthorization | None,
    *,
    key_id: str,
    node: str,
    as_source: bool,
    pins: Pins,
    now_ms: int,
) -> None:
    """May this node wrap (as the source) or unwrap (as the target) this key.

    A copy between online nodes is the backup service's to authorize; a copy into or out
    of an offline backup set only that set's own key can authorize."""
    sets = [end for end in (clone.source, clone.target) if end in pins.backup_sets]
    if len(sets) > 1:
        raise _refuse(
            ErrorCode.EVIDENCE_REFUSED, "a key is never copied from one backup set to another"
        )
    if sets:
        key = pins.backup_sets[sets[0]]
        trusted, who = frozenset({key} if key else ()), f"backup set {sets[0]}"
    else:
        trusted, who = pins.backup, "backup"
    _check_statement(clone, trusted, who, now_ms, pins.skew_ms)
    if clone.key_id != key_id or (clone.source if as_source else clone.target) != node:
        raise _mismatch("clone")
    if created is None:
        if not key_id.startswith(PLATFORM_KEY_PREFIX):
            raise _refuse(ErrorCode.EVIDENCE_REFUSED, f"no creation record for key {key_id}")
        return
    _check_statement_signature_only(created, pins)
    if created.key_id != key_id or created.curve != clone.curve:
        raise _mismatch("key")
    # Both ends must be where the key may live: policy set its region at creation.
    _check_region(created, clone.source, pins)
    _check_region(created, clone.target, pins)


def _check_statement_signature_only(created: CreateKeyAuthorization, pins: Pins) -> None:
    """A creation authorization is evidence of where a key may live forever: it is
    checked for policy's signature, not for freshness."""
    if created.signed_by not in pins.policy | pins.retired_policy or not signed_by(
        created.signed_by, signing_bytes(created), created.signature
    ):
        raise _refuse(ErrorCode.EVIDENCE_REFUSED, "the key's creation record is not policy's")


def check_sealed_use(sealed: SealedKey, *, node: str, pins: Pins) -> None:
    """May this node open this sealed record: policy created exactly this key, and put
    it in this node's region (the blob is readable by every node of the domain; the
    GCM associated data binds it to this creation record)."""
    created = sealed.created
    if created is None:
        raise _refuse(
            ErrorCode.EVIDENCE_REFUSED, f"sealed key {sealed.key_id} has no creation record"
        )
    _check_statement_signature_only(created, pins)
    if (created.key_id, created.curve, created.hss) != (
        sealed.key_id,
        sealed.key_type,
        sealed.hss,
    ):
        raise _mismatch("key")
    _check_region(created, node, pins)


CLONE_CHECK_DOMAIN = b"lantau/clone-check/v1\n"


def clone_check_message(key_id: str, node: str) -> bytes:
    """The fixed statement a clone signs to prove it works: no transaction can be it."""
    return CLONE_CHECK_DOMAIN + key_id.encode() + b"\n" + node.encode()


def pins_from(
    cfg: Config,
    policy: Policy | None,
    credentials: Mapping[str, tuple[CredentialStatement, ...]] | None = None,
) -> Pins:
    """What a node trusts: the config's evidence keys, requesters, node and backup set
    regions, the policy file's approvers and groups (None: no approvals can be
    honoured), and the approvers' security keys that count (libs/credentials.active)."""
    ev = cfg.evidence
    regions: dict[str, str | None] = {n.id: n.region for n in cfg.hsm_nodes}
    regions.update((b.id, b.region) for b in cfg.backup_sets)
    return Pins(
        policy=frozenset(k.lower() for k in ev.policy_keys),
        retired_policy=frozenset(k.lower() for k in ev.retired_policy_keys),
        backup=frozenset(k.lower() for k in ev.backup_keys),
        backup_sets={b.id: ev.backup_set_keys.get(b.id, "").lower() for b in cfg.backup_sets},
        requesters={r.name: r.public_key.lower() for r in cfg.requesters},
        approvers={
            name: a.public_key.lower()
            for name, a in (policy.file.approvers if policy else {}).items()
        },
        groups={
            name: frozenset(g.approvers)
            for name, g in (policy.file.groups if policy else {}).items()
        },
        regions=regions,
        floors=tuple((tuple(f.keys), f.group, f.quorum) for f in ev.approval_floors),
        skew_ms=ev.clock_skew_ms,
        credentials=dict(credentials or {}),
        second_factor_required=bool(policy and policy.file.second_factor.required),
    )


class PinsMemo:
    """``pins_from`` for one config, made again only when the policy or the approvers'
    active credentials are other objects than last time (both are replaced, never
    changed in place, when they change): a node asks for its pins on every request."""

    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg
        self._last: tuple[object, object, Pins] | None = None

    def get(
        self,
        policy: Policy | None,
        credentials: Mapping[str, tuple[CredentialStatement, ...]] | None = None,
    ) -> Pins:
        last = self._last
        if last is not None and last[0] is policy and last[1] is credentials:
            return last[2]
        pins = pins_from(self._cfg, policy, credentials)
        self._last = (policy, credentials, pins)
        return pins
