"""Who may publish and subscribe to what on the bus: the config becomes one NATS user per
identity, each with allow-lists (everything else denied). Pure: no I/O.

Rules the tables below keep (docs/security.md; the traps in the design notes):
- No running service touches the JetStream management API: each gets only the exact
  API subjects it uses (pull and ack on its own durables, stream info where the code
  asks for it, direct gets limited per subject). Only ``provisioner`` has ``$JS.API.>``.
- Every identity reads replies on its own inbox prefix only (``_INBOX_<identity>``).
  Responders (hsm-nodes, the signer's admin endpoint, micro ``$SRV`` endpoints) may
  publish to their callers' prefixes; never ``allow_responses``, which would let a caller
  aim a responder's reply at any subject, the JetStream API included.
- Acks are granted in both subject forms (the v2 form is ``$JS.ACK.*.*.<stream>...``).

To give a role a new subject, add one line to its entry in ``SERVICE_GRANTS`` (or to
``HSM_CALLS`` for a new hsm-node operation).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from libs.config import Config, ConfigError
from proto.subjects import (
    ADMIN_POOL_STATUS,
    ADMIN_XPUB,
    ALL_BUCKETS,
    ALL_STREAMS,
    APPROVAL_VOTE,
    APPROVALS_BUCKET,
    AUDIT,
    AUDIT_CHAIN,
    AUDIT_INTENT,
    AUDIT_SOURCES,
    AUDIT_STATE_BUCKET,
    AUDIT_STATE_WITNESS,
    BACKUP_KEY_EVENTS,
    CREATE_KEY_ORDER,
    CREDENTIALS_BUCKET,
    EVENT_ADMIN,
    EVENT_APPROVAL_PREFIX,
    EVENT_CONSOLE,
    EVENT_CREDENTIAL_PREFIX,
    EVENT_KEY_CREATED,
    EVENT_KEY_REPLICATED,
    EVENT_NODE_STATE,
    HSM_BEAT_PREFIX,
    HSM_RPC_PREFIX,
    HSM_SERVICE_NAME,
    HSS_LEDGER_BUCKET,
    JS_API,
    KEYS_BUCKET,
    MICRO_PREFIX,
    ORDERS,
    POLICY_REQUESTS,
    REQUESTS,
    REQUESTS_BUCKET,
    RESULT_PREFIX,
    RESULTS,
    SEALED_BUCKET,
    SIGN_ORDER,
    SIGNER_ORDERS,
    SIGNER_SERVICE_NAME,
    TOTP_REPLY_PREFIX,
    VELOCITY_BUCKET,
    ConsumerSpec,
    StreamSpec,
    approval_events_of,
    approval_vote_subject,
    backup_event_subject,
    create_key_request_subject,
    credential_request_subject,
    dead_letter_subject,
    hsm_beat_subject,
    hsm_rpc_all,
    inbox_prefix,
    js_acks,
    js_direct_get,
    js_msg_get,
    js_pull_next,
    js_stream_info,
    kv_key_subject,
    kv_stream,
    receipt_subject,
    results_of,
    sign_request_subject,
    totp_reply_subject,
)

# Identity names of the roles; per-instance identities are built by the functions below.
POLICY, SIGNER, BACKUP, AUDIT_ROLE = "policy", "signer", "backup", "audit"
CONSOLE = "console"
OPERATOR, PROVISIONER = "operator", "provisioner"
SERVICE_ROLES = (POLICY, SIGNER, BACKUP, AUDIT_ROLE, CONSOLE)


def node_identity(node_id: str) -> str:
    return f"node-{node_id}"


def backup_set_identity(set_id: str) -> str:
    """Who runs an offline backup set's ceremonies (`lantau backup run|verify|restore`)."""
    return f"backup-set-{set_id}"


def requester_identity(name: str) -> str:
    return f"requester-{name}"


def approver_identity(name: str) -> str:
    return f"approver-{name}"


@dataclass(frozen=True)
class Grant:
    """Subjects (wildcards allowed) an identity may publish to and subscribe to."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()

    def __add__(self, other: Grant) -> Grant:
        return Grant(
            _unique(self.publish + other.publish), _unique(self.subscribe + other.subscribe)
        )


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def grants(*parts: Grant) -> Grant:
    total = Grant()
    for part in parts:
        total = total + part
    return total


def pub(*subjects: str) -> Grant:
    return Grant(publish=subjects)


def sub(*subjects: str) -> Grant:
    return Grant(subscribe=subjects)


def pull(spec: ConsumerSpec) -> Grant:
    """Fetch from and ack on one durable consumer: nothing else of the consumer API."""
    return pub(
        js_pull_next(spec.stream.name, spec.durable), *js_acks(spec.stream.name, spec.durable)
    )


def stream_info(stream: str) -> Grant:
    return pub(js_stream_info(stream))


def direct_read(stream: StreamSpec | str, subjects: str) -> Grant:
    """Newest message on subjects matching ``subjects``, through direct get."""
    name = stream if isinstance(stream, str) else stream.name
    return pub(js_direct_get(name, subjects))


def kv_read(bucket: str, keys: str = ">") -> Grant:
    """Open the bucket (nats-py reads its stream info) and read keys matching ``keys``.
    Listing keys also uses stream info (libs/bus/kv.keys)."""
    return stream_info(kv_stream(bucket)) + direct_read(
        kv_stream(bucket), kv_key_subject(bucket, keys)
    )


def kv_write(bucket: str, keys: str = ">") -> Grant:
    return pub(kv_key_subject(bucket, keys))


def replies_to(*identities: str) -> Grant:
    """A responder answers callers on their private inbox prefixes, and nowhere else."""
    return pub(*(f"{inbox_prefix(i)}.>" for i in identities))


def micro_endpoints(service_name: str) -> Grant:
    """A NATS micro service's discovery subjects ($SRV.PING|INFO|STATS[.name[.id]])."""
    return sub(
        f"{MICRO_PREFIX}.*",
        f"{MICRO_PREFIX}.*.{service_name}",
        f"{MICRO_PREFIX}.*.{service_name}.*",
    )


def hsm_calls(ops: Sequence[str]) -> Grant:
    return pub(*(f"{HSM_RPC_PREFIX}.*.{op}" for op in ops))


# The hsm-node operations each caller uses (a role not listed calls none).
HSM_CALLS: dict[str, tuple[str, ...]] = {
    SIGNER: ("generate", "public_key", "sign", "capabilities"),
    # Clones: wrap on a holder, unwrap on the target, then check the clone (its public
    # key, and a signature over clone-check bytes verified in software).
    BACKUP: ("wrap", "unwrap", "public_key", "clone_check", "capabilities"),
    # The checkpoint key: generated once, then checkpoint signatures (checkpoints only).
    AUDIT_ROLE: ("generate", "public_key", "sign_checkpoint", "capabilities"),
}
# Who may ask an hsm-node something, so whose inboxes it may answer: the HSM callers and
# the operator (micro discovery: $SRV.PING/INFO/STATS; capabilities, for `keys list`).
# Each backup set's ceremonies are callers too (identities(): per set).
HSM_CALLERS = (*HSM_CALLS, OPERATOR)
# An offline backup set's ceremonies: copies into and out of the set, checked like the
# backup service's clones (the set's own key signs each authorization).
BACKUP_SET_CALLS = ("wrap", "unwrap", "public_key", "clone_check", "capabilities")

# Reading the stored result of a request (a resend, or a redelivered order).
_RESULTS_READ = direct_read(RESULTS, f"{RESULT_PREFIX}.>")
_BEATS = sub(f"{HSM_BEAT_PREFIX}.*")

SERVICE_GRANTS: dict[str, Grant] = {
    POLICY: grants(
        pull(POLICY_REQUESTS),
        pub(f"{SIGN_ORDER}.>", f"{CREATE_KEY_ORDER}.>"),
        pub(f"{RESULT_PREFIX}.>", f"{EVENT_APPROVAL_PREFIX}.>"),
        pub(dead_letter_subject(REQUESTS.name)),
        _RESULTS_READ,
        kv_read(REQUESTS_BUCKET),
        kv_write(REQUESTS_BUCKET),
        kv_read(APPROVALS_BUCKET),
        kv_write(APPROVALS_BUCKET),
        kv_read(VELOCITY_BUCKET),
        kv_write(VELOCITY_BUCKET),
        kv_read(KEYS_BUCKET),
        # Second factors: the one writer of the credentials bucket; a new TOTP secret goes
        # once to the command that asked, on core NATS (no stream keeps lantau.reply.>).
        kv_read(CREDENTIALS_BUCKET),
        kv_write(CREDENTIALS_BUCKET),
        pub(f"{EVENT_CREDENTIAL_PREFIX}.>", f"{TOTP_REPLY_PREFIX}.>"),
    ),
    SIGNER: grants(
        pull(SIGNER_ORDERS),
        hsm_calls(HSM_CALLS[SIGNER]),
        _BEATS,
        pub(f"{RESULT_PREFIX}.>", f"{AUDIT_INTENT}.>", EVENT_NODE_STATE, EVENT_KEY_CREATED),
        pub(dead_letter_subject(ORDERS.name)),
        _RESULTS_READ,
        direct_read(AUDIT, f"{AUDIT_INTENT}.>"),
        kv_read(KEYS_BUCKET),
        kv_write(KEYS_BUCKET),
        # Signing waits while the audit trail is not witnessed (libs/audit/gate.py).
        kv_read(AUDIT_STATE_BUCKET, AUDIT_STATE_WITNESS),
        # `lantau hsm status` asks every replica for its view of the pool; `lantau keys
        # xpub` asks one replica for an HD key's xpub (derived by a node, then recorded).
        sub(ADMIN_POOL_STATUS, ADMIN_XPUB),
        micro_endpoints(SIGNER_SERVICE_NAME),
        replies_to(OPERATOR),
    ),
    BACKUP: grants(
        pull(BACKUP_KEY_EVENTS),
        hsm_calls(HSM_CALLS[BACKUP]),
        _BEATS,
        pub(EVENT_KEY_REPLICATED, dead_letter_subject(BACKUP_KEY_EVENTS.stream.name)),
        kv_read(KEYS_BUCKET),
        kv_write(KEYS_BUCKET),
    ),
    AUDIT_ROLE: grants(
        *(pull(spec) for spec in AUDIT_SOURCES),
        *(pub(dead_letter_subject(spec.stream.name)) for spec in AUDIT_SOURCES),
        # Sources read by sequence too (a stalled consumer, holes): their bounds, direct
        # gets and the leader's message get (read-only), never a consumer of its own.
        *(stream_info(spec.stream.name) for spec in AUDIT_SOURCES),
        *(
            pub(js_direct_get(spec.stream.name), js_msg_get(spec.stream.name))
            for spec in AUDIT_SOURCES
        ),
        hsm_calls(HSM_CALLS[AUDIT_ROLE]),
        _BEATS,
        # The chain: its bounds, reading it back by sequence, and appends.
        pub(*AUDIT_CHAIN.subjects),
        stream_info(AUDIT_CHAIN.name),
        pub(js_direct_get(AUDIT_CHAIN.name), js_msg_get(AUDIT_CHAIN.name)),
        direct_read(AUDIT_CHAIN, AUDIT_CHAIN.subjects[0]),
        # Its own state (where the writer resumes, whether the trail is witnessed).
        kv_read(AUDIT_STATE_BUCKET),
        kv_write(AUDIT_STATE_BUCKET),
        # Receipts are reconciled with the order of each signature or key (by subject).
        direct_read(ORDERS, "lantau.order.>"),
        # The checkpoint key's directory entry.
        kv_read(KEYS_BUCKET),
        kv_write(KEYS_BUCKET),
    ),
    # The approvers' console: it reads held requests and enrolled credentials, and sends
    # votes under any approver's name. A vote counts only with that approver's security
    # key's assertion over it (the console holds no approver key), so the subject is not
    # what authenticates a console vote. It proposes credentials (powerless until a
    # quorum endorses them) and records what it refuses itself on lantau.event.console.
    CONSOLE: grants(
        pub(f"{APPROVAL_VOTE}.*", credential_request_subject(CONSOLE), EVENT_CONSOLE),
        kv_read(APPROVALS_BUCKET),
        kv_read(CREDENTIALS_BUCKET),
        sub(f"{EVENT_APPROVAL_PREFIX}.>", f"{EVENT_CREDENTIAL_PREFIX}.>"),
    ),
}


def operator_grant() -> Grant:
    """Read-only views of everything (streams, buckets, the audit log, the signers' pool
    views, micro discovery), the ceremony records (AdminAction on lantau.event.admin) and
    the ceremonies' second-factor checks."""
    parts = [
        pub(ADMIN_POOL_STATUS, ADMIN_XPUB, EVENT_ADMIN, f"{MICRO_PREFIX}.>"),
        # `lantau keys list` asks each node what it can wrap (why a key has no offline copy).
        hsm_calls(("capabilities",)),
        # Ceremonies ask policy to check their officer's second factor (a TOTP code), and
        # read its answer (services/cli/second_factor.py).
        pub(credential_request_subject(OPERATOR)),
        sub(f"{EVENT_CREDENTIAL_PREFIX}.>"),
    ]
    for stream in ALL_STREAMS:
        parts.append(pub(js_stream_info(stream.name), js_msg_get(stream.name)))
        parts.append(pub(js_direct_get(stream.name), js_direct_get(stream.name, ">")))
    for bucket in ALL_BUCKETS:
        parts.append(kv_read(bucket))
    return grants(*parts)


def provisioner_grant() -> Grant:
    """Creates and updates streams, consumers and buckets: a one-shot job's identity. Also
    the one writer of an HSS key's ledger besides the nodes: the fence after a lost ledger
    (`lantau keys hss-fence`), which can already delete the whole bucket anyway."""
    return pub(f"{JS_API}.>") + kv_write(HSS_LEDGER_BUCKET)


def hsm_node_grant(node_id: str, callers: Sequence[str] = ()) -> Grant:
    """``callers``: identities beyond HSM_CALLERS it answers (backup set ceremonies)."""
    return grants(
        sub(hsm_rpc_all(node_id)),
        # The approvers' security keys, read (and their quorums recounted) every second:
        # an assertion vote counts only with a key enrolled and not revoked.
        kv_read(CREDENTIALS_BUCKET),
        micro_endpoints(HSM_SERVICE_NAME),
        # Its beats, and the receipts of what it did (a JetStream stream, audited).
        pub(hsm_beat_subject(node_id), receipt_subject(node_id)),
        replies_to(*HSM_CALLERS, *callers),
        # Sealed key material (ciphertext, created once by the generating node) and the
        # HSS one-time index ledgers, leased by compare-and-set (docs/keytypes.md).
        kv_read(SEALED_BUCKET),
        kv_write(SEALED_BUCKET),
        kv_read(HSS_LEDGER_BUCKET),
        kv_write(HSS_LEDGER_BUCKET),
    )


def backup_set_grant(set_id: str) -> Grant:
    """A backup set's ceremonies: the hsm-node calls of a copy, the key directory (which
    sets hold each key), and the backup token's receipts and the signed manifest."""
    return grants(
        hsm_calls(BACKUP_SET_CALLS),
        kv_read(KEYS_BUCKET),
        kv_write(KEYS_BUCKET),
        pub(receipt_subject(set_id), backup_event_subject(set_id)),
    )


def requester_grant(name: str) -> Grant:
    """Its own requests, its own results (live and stored), nothing else."""
    return grants(
        pub(sign_request_subject(name), create_key_request_subject(name)),
        direct_read(RESULTS, results_of(name)),
        sub(results_of(name)),
    )


def approver_grant(name: str, approves_for: Sequence[str]) -> Grant:
    """Its votes; the held requests and approval events of the requesters its groups
    approve for. Listing held requests needs stream info on the approvals bucket, which
    the server cannot limit per key: an approver sees the *names* (requester and request
    id) of every held request, never their content (docs/security.md)."""
    parts = [
        pub(approval_vote_subject(name)),
        stream_info(kv_stream(APPROVALS_BUCKET)),
        # Second factors: endorse, revoke, ask for a TOTP authenticator (its secret comes
        # back once on its own reply subject); read every enrolled credential (public
        # keys and fingerprints, no secret: TOTP secrets are sealed) and their outcomes.
        pub(credential_request_subject(name)),
        kv_read(CREDENTIALS_BUCKET),
        sub(f"{EVENT_CREDENTIAL_PREFIX}.>", totp_reply_subject(name)),
    ]
    for requester in approves_for:
        parts.append(
            direct_read(
                kv_stream(APPROVALS_BUCKET), kv_key_subject(APPROVALS_BUCKET, f"{requester}.>")
            )
        )
        parts.append(sub(approval_events_of(requester)))
    return grants(*parts)


@dataclass(frozen=True)
class Identity:
    """One NATS user: its name (also its inbox suffix), its public nkey and its grant."""

    name: str
    kind: str
    nkey: str
    grant: Grant

    @property
    def permissions(self) -> Grant:
        """The grant plus its private inbox (replies to its requests, pull deliveries)."""
        return self.grant + sub(f"{inbox_prefix(self.name)}.>")


def identities(cfg: Config, approver_scopes: Mapping[str, Sequence[str]]) -> list[Identity]:
    """Every identity the config names an nkey for, with its allow-lists.

    ``approver_scopes`` maps an approver to the requesters its policy groups approve for
    (from the policy file); an approver missing there reads nothing but may still vote.
    """
    found: list[Identity] = []
    roles = cfg.nats.nkeys
    for role in SERVICE_ROLES:
        nkey = getattr(roles, role)
        if nkey:
            found.append(Identity(role, "service", nkey, SERVICE_GRANTS[role]))
    if roles.operator:
        found.append(Identity(OPERATOR, "operator", roles.operator, operator_grant()))
    if roles.provisioner:
        found.append(Identity(PROVISIONER, "provisioner", roles.provisioner, provisioner_grant()))
    sets = {backup_set_identity(b.id): (b.id, b.nkey) for b in cfg.backup_sets if b.nkey}
    for node in cfg.hsm_nodes:
        if node.nkey:
            grant = hsm_node_grant(node.id, list(sets))
            found.append(Identity(node_identity(node.id), "hsm-node", node.nkey, grant))
    for name, (set_id, set_nkey) in sets.items():
        found.append(Identity(name, "backup-set", set_nkey, backup_set_grant(set_id)))
    for r in cfg.requesters:
        if r.nkey:
            found.append(
                Identity(requester_identity(r.name), "requester", r.nkey, requester_grant(r.name))
            )
    for a in cfg.approvers:
        scope = sorted(approver_scopes.get(a.name, ()))
        found.append(
            Identity(approver_identity(a.name), "approver", a.nkey, approver_grant(a.name, scope))
        )
    seen: dict[str, str] = {}
    for ident in found:
        if ident.nkey in seen:
            # One key, two identities: the server would pick one set of permissions.
            raise ConfigError(
                f"identities {seen[ident.nkey]} and {ident.name} have the same nkey; "
                "give each its own"
            )
        seen[ident.nkey] = ident.name
    return found


HEADER = """\
# NATS users and permissions, generated by `lantau bus authorize` from the platform
# config: do not edit by hand (regenerate, then reload the server: SIGHUP).
# One nkey user per identity; what is not allowed is denied (docs/security.md).
"""


def render_authorization(found: Sequence[Identity]) -> str:
    """The nats-server ``authorization`` block for these identities (config file syntax;
    strings JSON-quoted, which the server's parser reads as plain strings)."""
    lines = [HEADER, "authorization {", "  users = ["]
    for ident in found:
        perms = ident.permissions
        lines.append(f"    # {ident.name} ({ident.kind})")
        lines.append("    {")
        lines.append(f"      nkey: {json.dumps(ident.nkey)}")
        lines.append("      permissions: {")
        lines.append(f"        publish: {{ allow: {json.dumps(list(perms.publish))} }}")
        lines.append(f"        subscribe: {{ allow: {json.dumps(list(perms.subscribe))} }}")
        lines.append("      }")
        lines.append("    }")
    lines += ["  ]", "}", ""]
    return "\n".join(lines)
