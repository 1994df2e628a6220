"""Every subject, stream, consumer and KV bucket name, defined once."""

from __future__ import annotations

from typing import NamedTuple

PREFIX = "lantau"

# Requests from trading systems and approvers, one subject per sender so that the bus
# lets each identity publish only under its own name:
# lantau.request.sign.<requester>, lantau.request.create_key.<requester>,
# lantau.request.approval.<approver>.
SIGN_REQUEST = f"{PREFIX}.request.sign"
CREATE_KEY_REQUEST = f"{PREFIX}.request.create_key"
APPROVAL_VOTE = f"{PREFIX}.request.approval"
# Second factors (proto/credentials.py): lantau.request.credential.<sender>, where the
# sender is an approver (endorsements, revocations, TOTP enrolment) or the console.
CREDENTIAL_REQUEST = f"{PREFIX}.request.credential"


def sign_request_subject(requester: str) -> str:
    return f"{SIGN_REQUEST}.{requester}"


def create_key_request_subject(requester: str) -> str:
    return f"{CREATE_KEY_REQUEST}.{requester}"


def approval_vote_subject(approver: str) -> str:
    return f"{APPROVAL_VOTE}.{approver}"


def credential_request_subject(sender: str) -> str:
    return f"{CREDENTIAL_REQUEST}.{sender}"


def sender_of(subject: str) -> str:
    """The sender a request subject names (its last token)."""
    return subject.rsplit(".", 1)[-1]


# Orders from policy to signers.
SIGN_ORDER = f"{PREFIX}.order.sign"
CREATE_KEY_ORDER = f"{PREFIX}.order.create_key"
# Terminal results, one subject per request: lantau.result.<requester>.<request id>.
RESULT_PREFIX = f"{PREFIX}.result"
# Facts for backup, audit and operators.
EVENT_KEY_CREATED = f"{PREFIX}.event.key.created"
EVENT_KEY_REPLICATED = f"{PREFIX}.event.key.replicated"
EVENT_NODE_STATE = f"{PREFIX}.event.node.state"
EVENT_ADMIN = f"{PREFIX}.event.admin"
EVENT_APPROVAL_PREFIX = f"{PREFIX}.event.approval"
# Signed manifests of offline backup ceremonies: lantau.event.backup.<backup set>.
EVENT_BACKUP_PREFIX = f"{PREFIX}.event.backup"
# What became of a credential request: lantau.event.credential.<person>.
EVENT_CREDENTIAL_PREFIX = f"{PREFIX}.event.credential"
# What the approvers' console refused itself (a sign-in, a vote outside a person's groups).
EVENT_CONSOLE = f"{PREFIX}.event.console"
# Core NATS only (no stream captures lantau.reply.>): a new TOTP secret, once, to the
# command that asked for it.
TOTP_REPLY_PREFIX = f"{PREFIX}.reply.totp"


def credential_event_subject(person: str) -> str:
    return f"{EVENT_CREDENTIAL_PREFIX}.{person}"


def totp_reply_subject(person: str) -> str:
    return f"{TOTP_REPLY_PREFIX}.{person}"


def request_key(requester: str, request_id: str) -> str:
    """A request's name across the platform: request ids are unique per requester only,
    so KV keys, message ids and subjects that belong to a request carry both."""
    return f"{requester}.{request_id}"


def backup_event_subject(backup_set: str) -> str:
    return f"{EVENT_BACKUP_PREFIX}.{backup_set}"


def approval_event_subject(requester: str, request_id: str) -> str:
    return f"{EVENT_APPROVAL_PREFIX}.{request_key(requester, request_id)}"


def approval_events_of(requester: str) -> str:
    """Every approval event about one requester's requests (what its approvers may read)."""
    return f"{EVENT_APPROVAL_PREFIX}.{requester}.>"


# Audit intents written by signers before each HSM signature, one subject per request:
# lantau.audit.intent.<requester>.<request id> (attempts follow each other on it).
AUDIT_INTENT = f"{PREFIX}.audit.intent"
# Hash-chained audit records appended by the audit service.
AUDIT_LOG = f"{PREFIX}.auditlog.record"
AUDIT_CHECKPOINT = f"{PREFIX}.auditlog.checkpoint"
AUDIT_CHECKPOINT_KEY = "lantau-audit-checkpoint"
# Dead letters, one subject per source stream.
DEAD_LETTER_PREFIX = f"{PREFIX}.dlq"
# Core NATS (not JetStream): HSM node RPC and heartbeats.
HSM_RPC_PREFIX = f"{PREFIX}.hsm.rpc"
HSM_BEAT_PREFIX = f"{PREFIX}.hsm.beat"
HSM_SERVICE_NAME = "lantau-hsm-node"
# Receipts of every operation an hsm-node performed or refused (JetStream, audited).
RECEIPT_PREFIX = f"{PREFIX}.receipt"
# Scatter-gather: every signer replica answers with its view of the pool.
ADMIN_POOL_STATUS = f"{PREFIX}.admin.pool"
# One signer replica (a queue group) derives and records an HD key's xpub at a path.
ADMIN_XPUB = f"{PREFIX}.admin.xpub"
SIGNER_SERVICE_NAME = "lantau-signer"


def sign_order_subject(requester: str, request_id: str) -> str:
    """Orders live on the request's own subject: audit finds the order of any signature."""
    return f"{SIGN_ORDER}.{request_key(requester, request_id)}"


def create_key_order_subject(requester: str, request_id: str) -> str:
    return f"{CREATE_KEY_ORDER}.{request_key(requester, request_id)}"


def result_subject(requester: str, request_id: str) -> str:
    return f"{RESULT_PREFIX}.{request_key(requester, request_id)}"


def results_of(requester: str) -> str:
    """Every result subject of one requester (what its client subscribes to)."""
    return f"{RESULT_PREFIX}.{requester}.>"


def intent_subject(requester: str, request_id: str) -> str:
    return f"{AUDIT_INTENT}.{request_key(requester, request_id)}"


def dead_letter_subject(stream: str) -> str:
    return f"{DEAD_LETTER_PREFIX}.{stream}"


def hsm_rpc_subject(node_id: str, op: str) -> str:
    return f"{HSM_RPC_PREFIX}.{node_id}.{op}"


def receipt_subject(node_id: str) -> str:
    return f"{RECEIPT_PREFIX}.{node_id}"


def hsm_beat_subject(node_id: str) -> str:
    return f"{HSM_BEAT_PREFIX}.{node_id}"


def hsm_rpc_all(node_id: str) -> str:
    """Every RPC subject of one hsm-node (what the node subscribes to)."""
    return f"{HSM_RPC_PREFIX}.{node_id}.>"


class StreamSpec(NamedTuple):
    name: str
    subjects: tuple[str, ...]
    description: str


REQUESTS = StreamSpec("LANTAU_REQUESTS", (f"{PREFIX}.request.>",), "requests from clients")
ORDERS = StreamSpec("LANTAU_ORDERS", (f"{PREFIX}.order.>",), "approved work for signers")
RESULTS = StreamSpec("LANTAU_RESULTS", (f"{RESULT_PREFIX}.>",), "one terminal result per request")
EVENTS = StreamSpec("LANTAU_EVENTS", (f"{PREFIX}.event.>",), "key lifecycle and node state")
AUDIT = StreamSpec("LANTAU_AUDIT", (f"{PREFIX}.audit.>",), "audit intents before signing")
AUDIT_CHAIN = StreamSpec("LANTAU_AUDIT_LOG", (f"{PREFIX}.auditlog.>",), "hash-chained records")
DEAD_LETTERS = StreamSpec("LANTAU_DLQ", (f"{DEAD_LETTER_PREFIX}.>",), "messages nobody could use")
RECEIPTS = StreamSpec("LANTAU_RECEIPTS", (f"{RECEIPT_PREFIX}.>",), "what the HSM nodes did")

ALL_STREAMS = (REQUESTS, ORDERS, RESULTS, EVENTS, AUDIT, AUDIT_CHAIN, DEAD_LETTERS, RECEIPTS)


class ConsumerSpec(NamedTuple):
    stream: StreamSpec
    durable: str
    filter_subject: str | None = None
    # Redeliver without limit (the audit's consumers: a fact is never given up on).
    unlimited_redelivery: bool = False
    # Acknowledge a run of messages with its newest (ack policy "all"), for a handler that
    # returns for message n only once every earlier message of the stream is handled (the
    # audit records each stream in order): one acknowledgement per batch, not per message.
    cumulative_acks: bool = False


POLICY_REQUESTS = ConsumerSpec(REQUESTS, "policy")
SIGNER_ORDERS = ConsumerSpec(ORDERS, "signer")
BACKUP_KEY_EVENTS = ConsumerSpec(EVENTS, "backup", EVENT_KEY_CREATED)
# The audit service reads every stream that carries facts, each with its own cursor. A
# new stream of facts is recorded once it is added here (the verifier needs no change).
AUDIT_SOURCE_STREAMS = (REQUESTS, ORDERS, RESULTS, EVENTS, AUDIT, DEAD_LETTERS, RECEIPTS)
AUDIT_SOURCES = tuple(
    ConsumerSpec(s, "audit", unlimited_redelivery=True, cumulative_acks=True)
    for s in AUDIT_SOURCE_STREAMS
)

ALL_CONSUMERS = (POLICY_REQUESTS, SIGNER_ORDERS, BACKUP_KEY_EVENTS, *AUDIT_SOURCES)

# KV buckets.
KEYS_BUCKET = "lantau_keys"
REQUESTS_BUCKET = "lantau_requests"
# Requests held for approval, and velocity windows: both changed only by compare-and-set.
APPROVALS_BUCKET = "lantau_approvals"
VELOCITY_BUCKET = "lantau_velocity"
# The audit service's state: where its writer resumes, and whether the trail is witnessed
# (every signer pauses while it is not).
AUDIT_STATE_BUCKET = "lantau_audit_state"
AUDIT_STATE_WRITER = "writer"
AUDIT_STATE_WITNESS = "witness"
# Sealed key material (SealedKey, ciphertext; written once by the generating hsm-node)
# and the one-time index ledger of each stateful (lms-hss) key, changed only by CAS.
SEALED_BUCKET = "lantau_sealed"
HSS_LEDGER_BUCKET = "lantau_hss_ledger"
# Approvers' second factors (proto/credentials.py), written by policy only; read by policy,
# the console and the hsm-nodes, which recheck every record's quorum.
CREDENTIALS_BUCKET = "lantau_credentials"
ALL_BUCKETS = (
    KEYS_BUCKET,
    REQUESTS_BUCKET,
    APPROVALS_BUCKET,
    VELOCITY_BUCKET,
    AUDIT_STATE_BUCKET,
    SEALED_BUCKET,
    HSS_LEDGER_BUCKET,
    CREDENTIALS_BUCKET,
)

# Headers.
HDR_MSG_ID = "Nats-Msg-Id"
HDR_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
HDR_REQUEST_ID = "Lantau-Request-Id"


def kv_key_subject(bucket: str, key: str) -> str:
    """The subject a KV bucket stores ``key`` on (``key`` may be a wildcard pattern)."""
    return f"$KV.{bucket}.{key}"


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


# NATS itself: private reply inboxes and the JetStream API, so that connections and the
# allow-lists (libs/bus/permissions.py) name the same subjects.
INBOX_PREFIX = "_INBOX"
JS_API = "$JS.API"
# NATS micro services answer discovery on $SRV.<PING|INFO|STATS>[.<name>[.<id>]].
MICRO_PREFIX = "$SRV"


def inbox_prefix(identity: str) -> str:
    """An identity's private reply inbox prefix: only it may subscribe below it."""
    return f"{INBOX_PREFIX}_{identity}"


def js_pull_next(stream: str, durable: str) -> str:
    return f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{durable}"


def js_acks(stream: str, durable: str) -> tuple[str, ...]:
    """Both ack subject forms: with the v2 ack flag the server sends the long one."""
    return (f"$JS.ACK.{stream}.{durable}.>", f"$JS.ACK.*.*.{stream}.{durable}.>")


def js_stream_info(stream: str) -> str:
    return f"{JS_API}.STREAM.INFO.{stream}"


def js_consumer_info(stream: str, durable: str) -> str:
    return f"{JS_API}.CONSUMER.INFO.{stream}.{durable}"


def js_direct_get(stream: str, subject: str | None = None) -> str:
    """Direct get of the newest message on ``subject`` (limitable per subject), or, without
    one, the stream-wide form (by sequence: anything in the stream)."""
    base = f"{JS_API}.DIRECT.GET.{stream}"
    return f"{base}.{subject}" if subject else base


def js_msg_get(stream: str) -> str:
    return f"{JS_API}.STREAM.MSG.GET.{stream}"
