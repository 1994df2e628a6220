"""Every Prometheus metric Lantau exports, defined once.

Names and units follow the Prometheus conventions (``_seconds``, ``_total`` on
counters, added by the client). Label values are bounded: service names, node
ids from config, error codes, stages, outcomes; never request or key ids.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# The _created series double every counter for no operational value.
disable_created_metrics()

# Latency buckets from 1 ms to 10 s: signing is milliseconds, approvals can be long.
_LATENCY = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)

RESULTS = Counter(
    "lantau_results",
    "Terminal results published, by the service that published them, outcome and error code.",
    ["service", "outcome", "code"],
)
REQUEST_DURATION = Histogram(
    "lantau_request_duration_seconds",
    "From the client's creation time of a request to its terminal result.",
    ["kind", "outcome"],
    buckets=_LATENCY,
)
STAGE_DURATION = Histogram(
    "lantau_stage_duration_seconds",
    "Time spent in one stage of the sign path (policy, queue, audit_intent, hsm, verify, publish).",
    ["stage"],
    buckets=_LATENCY,
)
POLICY_DECISIONS = Counter(
    "lantau_policy_decisions",
    "Policy decisions by rule and decision (allow, deny, approval).",
    ["rule", "decision"],
)
BLIND_REQUESTS = Counter(
    "lantau_policy_blind_requests",
    "Blind sign requests (a raw digest or message nobody decoded), by decision.",
    ["decision"],
)
POLICY_RELOADS = Counter(
    "lantau_policy_reloads",
    "Policy file loads by outcome (loaded, refused); a refused file leaves the old one in force.",
    ["outcome"],
)
APPROVALS_PENDING = Gauge("lantau_approvals_pending", "Requests waiting for human approvals.")
APPROVALS_OLDEST_AGE = Gauge(
    "lantau_approvals_oldest_age_seconds", "Age of the oldest request waiting for approvals."
)
HSM_NODE_UP = Gauge(
    "lantau_hsm_node_up", "1 when the pool considers the HSM node usable, else 0.", ["node"]
)
HSM_NODE_IN_FLIGHT = Gauge(
    "lantau_hsm_node_in_flight", "HSM operations this process has in flight per node.", ["node"]
)
HSM_OPERATION_DURATION = Histogram(
    "lantau_hsm_operation_duration_seconds",
    "Round trip of one HSM operation as seen by its caller.",
    ["node", "op"],
    buckets=_LATENCY,
)
HSM_ERRORS = Counter(
    "lantau_hsm_errors",
    "Failed HSM operations by node and kind (timeout, error).",
    ["node", "kind"],
)
HSM_FAILOVERS = Counter(
    "lantau_hsm_failovers", "Operations moved to another node after a failure.", ["from_node"]
)
HSM_CIRCUIT_STATE = Gauge(
    "lantau_hsm_circuit_state",
    "Circuit breaker per node: 0 closed, 1 half-open, 2 open.",
    ["node"],
)
TOKEN_OPERATIONS = Counter(
    "lantau_hsm_token_operations",
    "Operations an hsm-node performed on its token, by op and outcome.",
    ["node", "op", "outcome"],
)
TOKEN_OPERATION_DURATION = Histogram(
    "lantau_hsm_token_operation_duration_seconds",
    "Time the PKCS#11 token took for one operation, measured in the hsm-node.",
    ["node", "op"],
    buckets=_LATENCY,
)
KEYS_UNDER_REPLICATED = Gauge(
    "lantau_keys_under_replicated", "Keys not yet held by every HSM node of their domain."
)
BACKUP_LAG = Gauge(
    "lantau_backup_lag_seconds", "Age of the oldest key creation not yet fully replicated."
)
AUDIT_UNMATCHED_RECEIPTS = Counter(
    "lantau_audit_unmatched_receipts",
    "HSM operations (by op) that no order on the bus allowed: a signature without an order.",
    ["op"],
)
KEYS_WITHOUT_OFFLINE_COPY = Gauge(
    "lantau_keys_without_offline_copy",
    "Active keys older than [backup] offline_copy_within_s with no copy in an offline backup "
    "set, by reason (awaiting_backup_run, key_not_wrappable, no_backup_set).",
    ["reason"],
)
AUDIT_HEAD_SEQUENCE = Gauge("lantau_audit_head_sequence", "Sequence of the newest audit record.")
AUDIT_LAG = Gauge(
    "lantau_audit_lag_messages", "Messages on the source streams not yet in the audit chain."
)
AUDIT_FACTS = Counter("lantau_audit_facts", "Facts recorded in the audit log by this process.")
AUDIT_FACT_GAPS = Counter(
    "lantau_audit_fact_gaps",
    "Source messages gone (expired or deleted) before they could be recorded, noted as gaps.",
    ["stream", "reason"],
)
AUDIT_QUARANTINED = Counter(
    "lantau_audit_quarantined",
    "Entries on the audit log the audit service did not write: never chained or certified.",
)
AUDIT_HALTED = Gauge(
    "lantau_audit_halted",
    "1 when the audit service stopped appending (the log is broken or appends kept failing).",
)
AUDIT_CHECKPOINT_TREE_SIZE = Gauge(
    "lantau_audit_checkpoint_tree_size", "Tree size of the newest signed checkpoint."
)
AUDIT_WITNESS_UP = Gauge(
    "lantau_audit_witness_up", "1 when the witness sink took the last write or probe.", ["sink"]
)
AUDIT_WITNESSED = Gauge(
    "lantau_audit_witnessed",
    "1 while at least one witness sink holds the newest checkpoint; at 0 signing pauses.",
)
SIGNING_PAUSED = Gauge(
    "lantau_signing_paused",
    "1 while this signer takes no orders because the audit trail is not witnessed.",
)
CONSUMER_PENDING = Gauge(
    "lantau_consumer_pending_messages",
    "Messages waiting for a JetStream consumer.",
    ["stream", "consumer"],
)
MESSAGES = Counter(
    "lantau_messages",
    "Messages handled by a consumer, by outcome (ack, retry, rejected, dead_letter).",
    ["stream", "consumer", "outcome"],
)
REDELIVERIES = Counter(
    "lantau_redeliveries",
    "Messages received again after a failed or unacknowledged delivery.",
    ["stream", "consumer"],
)
DEAD_LETTERS = Counter(
    "lantau_dead_letters",
    "Messages moved to the dead-letter stream, by error code.",
    ["stream", "consumer", "code"],
)
BUS_PERMISSION_VIOLATIONS = Counter(
    "lantau_bus_permission_violations",
    "Publishes or subscriptions the NATS server refused for this process's identity, by kind "
    "(publish, subscribe): a misconfigured allow-list, or a process doing what it must not.",
    ["kind"],
)
# Set by the audit service's sweep from the stream info it reads anyway (every stream it
# records, and its log): the replicas of a stream, and how many are current.
NATS_STREAM_REPLICAS = Gauge(
    "lantau_nats_stream_replicas",
    "Replicas a JetStream stream is configured with (num_replicas).",
    ["stream"],
)
NATS_STREAM_REPLICAS_CURRENT = Gauge(
    "lantau_nats_stream_replicas_current",
    "Replicas of a stream that are current (its leader and the followers caught up); 0 when "
    "the stream does not answer. Below lantau_nats_stream_replicas: a NATS server is lost.",
    ["stream"],
)
