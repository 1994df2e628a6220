"""Error codes shared by the wire (``ErrorInfo.code``) and Python (``LantauError.code``)."""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    # The message itself is bad: never retried.
    MALFORMED_MESSAGE = "MALFORMED_MESSAGE"
    WRONG_MESSAGE_TYPE = "WRONG_MESSAGE_TYPE"
    UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
    INVALID_FIELD = "INVALID_FIELD"
    INVALID_PAYLOAD = "INVALID_PAYLOAD"
    # Authentication and authorisation.
    UNKNOWN_REQUESTER = "UNKNOWN_REQUESTER"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    REQUEST_EXPIRED = "REQUEST_EXPIRED"
    REQUEST_FROM_FUTURE = "REQUEST_FROM_FUTURE"
    REQUEST_ID_CONFLICT = "REQUEST_ID_CONFLICT"
    ACCESS_DENIED = "ACCESS_DENIED"
    POLICY_DENIED = "POLICY_DENIED"
    # A transfer of an asset the policy does not know, or more than the asset can hold.
    UNKNOWN_ASSET = "UNKNOWN_ASSET"
    AMOUNT_OUT_OF_RANGE = "AMOUNT_OUT_OF_RANGE"
    # Clear signing: the declared transfer disagrees with the parsed transaction; a raw
    # digest or message asked by a requester or key not allowed to sign blind.
    TRANSFER_MISMATCH = "TRANSFER_MISMATCH"
    BLIND_SIGNING_DENIED = "BLIND_SIGNING_DENIED"
    # Platform keys (lantau-...) are never a requester's to use or create.
    RESERVED_KEY = "RESERVED_KEY"
    # The hsm-node's evidence check: what it refuses before its HSM is asked.
    EVIDENCE_REFUSED = "EVIDENCE_REFUSED"
    AUTHORIZATION_MISMATCH = "AUTHORIZATION_MISMATCH"
    AUTHORIZATION_EXPIRED = "AUTHORIZATION_EXPIRED"
    APPROVALS_MISSING = "APPROVALS_MISSING"
    RESIDENCY_VIOLATION = "RESIDENCY_VIOLATION"
    APPROVAL_REJECTED = "APPROVAL_REJECTED"
    APPROVAL_EXPIRED = "APPROVAL_EXPIRED"
    UNKNOWN_APPROVER = "UNKNOWN_APPROVER"
    NOT_PENDING = "NOT_PENDING"
    WRONG_GROUP = "WRONG_GROUP"
    SELF_APPROVAL = "SELF_APPROVAL"
    DUPLICATE_APPROVAL = "DUPLICATE_APPROVAL"
    APPROVAL_MISMATCH = "APPROVAL_MISMATCH"
    # Keys.
    UNKNOWN_KEY = "UNKNOWN_KEY"
    KEY_EXISTS = "KEY_EXISTS"
    CURVE_MISMATCH = "CURVE_MISMATCH"
    # The HSM cannot export this key type even wrapped (SoftHSM 2.6: EdDSA keys).
    KEY_NOT_WRAPPABLE = "KEY_NOT_WRAPPABLE"
    # Key types kept as sealed material (libs/keytypes): HD derivation, sealing, and
    # stateful hash-based keys whose one-time indices must never be used twice.
    INVALID_SEED = "INVALID_SEED"
    INVALID_DERIVATION_PATH = "INVALID_DERIVATION_PATH"
    INVALID_EXTENDED_KEY = "INVALID_EXTENDED_KEY"
    SEALED_BLOB_INVALID = "SEALED_BLOB_INVALID"
    KEY_EXHAUSTED = "KEY_EXHAUSTED"
    ONE_TIME_INDEX_USED = "ONE_TIME_INDEX_USED"
    INDEX_NOT_LEASED = "INDEX_NOT_LEASED"
    # Execution.
    HSM_UNAVAILABLE = "HSM_UNAVAILABLE"
    HSM_ERROR = "HSM_ERROR"
    SIGNATURE_VERIFICATION_FAILED = "SIGNATURE_VERIFICATION_FAILED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    DEAD_LETTER = "DEAD_LETTER"
    INTERNAL = "INTERNAL"
    # The caller's side: configuration, ceremonies, policy files, the client and the CLI.
    CONFIG_INVALID = "CONFIG_INVALID"
    CEREMONY_FAILED = "CEREMONY_FAILED"
    POLICY_FILE_INVALID = "POLICY_FILE_INVALID"
    USAGE = "USAGE"
    BUS_UNAVAILABLE = "BUS_UNAVAILABLE"
    RESULT_TIMEOUT = "RESULT_TIMEOUT"
    # Merkle audit log (libs/audit/merkle.py): tree sizes, hashes, frontiers and proofs.
    MERKLE_OUT_OF_RANGE = "MERKLE_OUT_OF_RANGE"
    MERKLE_BAD_HASH = "MERKLE_BAD_HASH"
    MERKLE_BAD_FRONTIER = "MERKLE_BAD_FRONTIER"
    MERKLE_PROOF_REJECTED = "MERKLE_PROOF_REJECTED"
    # The audit trail (libs/audit, services/audit): the log cannot be read, an export or
    # a witness file is not what it should be, the audit service stopped, signing paused
    # because no sink witnesses the checkpoints.
    AUDIT_LOG_UNREADABLE = "AUDIT_LOG_UNREADABLE"
    AUDIT_EXPORT_INVALID = "AUDIT_EXPORT_INVALID"
    AUDIT_WITNESS_INVALID = "AUDIT_WITNESS_INVALID"
    AUDIT_HALTED = "AUDIT_HALTED"
    AUDIT_UNWITNESSED = "AUDIT_UNWITNESSED"
    # Offline backups under an M-of-N custodian quorum (libs/backup).
    QUORUM_NOT_MET = "QUORUM_NOT_MET"
    BAD_SHARE = "BAD_SHARE"
    WRONG_BACKUP_SET = "WRONG_BACKUP_SET"
    DUPLICATE_SHARE = "DUPLICATE_SHARE"
    WRONG_CUSTODIAN_KEY = "WRONG_CUSTODIAN_KEY"
    BAD_KEY_FILE = "BAD_KEY_FILE"
    INSECURE_FILE = "INSECURE_FILE"
    FILE_EXISTS = "FILE_EXISTS"
    FILE_ERROR = "FILE_ERROR"
    # Clear signing (libs/chains): a transaction payload refused before anything is signed.
    INVALID_TRANSACTION = "INVALID_TRANSACTION"
    CHAIN_ID_REQUIRED = "CHAIN_ID_REQUIRED"
    CHAIN_MISMATCH = "CHAIN_MISMATCH"
    UTXO_NOT_PROVEN = "UTXO_NOT_PROVEN"
    AMOUNT_MISMATCH = "AMOUNT_MISMATCH"
    UNSUPPORTED_INPUT = "UNSUPPORTED_INPUT"
    NOT_OUR_TRANSACTION = "NOT_OUR_TRANSACTION"
    TRANSACTION_TOO_LARGE = "TRANSACTION_TOO_LARGE"
    # Identities on the bus (libs/bus): the server refused a publish or subscribe for this
    # identity, or a request arrived on a subject that names someone else.
    PERMISSION_DENIED = "PERMISSION_DENIED"
    SUBJECT_MISMATCH = "SUBJECT_MISMATCH"
    # Offline backup ceremonies (libs/backup/ceremony.py, `lantau backup ...`): a copy in
    # a backup set that does not restore, sign or match its original; a backup token
    # whose credentials were never set by `lantau backup init`.
    BACKUP_VERIFY_FAILED = "BACKUP_VERIFY_FAILED"
    BACKUP_SET_NOT_INITIALISED = "BACKUP_SET_NOT_INITIALISED"
    # New key types end to end (HD, ML-DSA, LMS/HSS through the hsm-node): a type this
    # node or this operation cannot serve; an HD child public key nobody can derive yet
    # without an HSM (export an ancestor's xpub); an HSS key whose index ledger is gone
    # (fence it from the audit log before it signs again).
    KEY_TYPE_UNSUPPORTED = "KEY_TYPE_UNSUPPORTED"
    XPUB_NOT_EXPORTED = "XPUB_NOT_EXPORTED"
    INDEX_LEDGER_MISSING = "INDEX_LEDGER_MISSING"
    # Second factors and the approvers' console (proto/credentials.py, libs/webauthn_check,
    # services/console): a security key's assertion or registration that does not verify,
    # a credential that is not (or no longer) enrolled, a missing or wrong second factor,
    # an enrolment without its quorum, a console session that is not signed in.
    ASSERTION_INVALID = "ASSERTION_INVALID"
    REGISTRATION_INVALID = "REGISTRATION_INVALID"
    UNKNOWN_CREDENTIAL = "UNKNOWN_CREDENTIAL"
    CREDENTIAL_REVOKED = "CREDENTIAL_REVOKED"
    SECOND_FACTOR_REQUIRED = "SECOND_FACTOR_REQUIRED"
    SECOND_FACTOR_INVALID = "SECOND_FACTOR_INVALID"
    ENDORSEMENT_INVALID = "ENDORSEMENT_INVALID"
    NOT_SIGNED_IN = "NOT_SIGNED_IN"


def printable(text: str, limit: int = 200) -> str:
    """Text from outside made fit for an error message or a log line: non-printable
    characters escaped, at most ``limit`` characters, then how many were left out."""
    out: list[str] = []
    size = 0
    for i, char in enumerate(text):
        piece = _escape(char)
        if size + len(piece) > limit:
            return "".join(out) + f"...(+{len(text) - i} chars)"
        out.append(piece)
        size += len(piece)
    return "".join(out)


def _escape(char: str) -> str:
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


class LantauError(Exception):
    """An error with a wire code and a human sentence naming the field or rule at fault.

    The message must never contain secrets: it travels to clients and logs.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class TransientError(Exception):
    """A failure worth retrying later (HSM busy, node down, bus hiccup).

    ``delivered`` is False only when the request certainly never reached its target
    (NATS had no responder): the operation did not happen.
    """

    def __init__(self, code: ErrorCode, message: str, *, delivered: bool = True) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.delivered = delivered
