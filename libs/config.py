"""Platform configuration: one TOML file decoded into Structs, with environment overrides.

``LANTAU__SECTION__FIELD=value`` overrides ``[section] field``; list items are
addressed by index (``LANTAU__HSM_NODES__0__PIN_FILE``). Values are read as TOML
values when they parse (numbers, booleans, arrays) and as strings otherwise.
Every error names the file and the field at fault.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from proto.common import whole
from proto.errors import ErrorCode, LantauError

ENV_PREFIX = "LANTAU__"
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
HexKey = Annotated[str, msgspec.Meta(pattern=whole("[0-9a-fA-F]{64}"))]
Positive = Annotated[int, msgspec.Meta(gt=0)]
# Names that become one token of NATS subjects and inbox prefixes: no dots, no wildcards.
Name = Annotated[str, msgspec.Meta(pattern=whole("[A-Za-z0-9_-]{1,64}"))]
# A NATS nkey *user* public key (base32, 56 characters, starts with U). Public: it goes in
# the server's authorization file; the seed stays with the process that connects.
Nkey = Annotated[str, msgspec.Meta(pattern=whole("U[A-Z2-7]{55}"))]


class ConfigError(LantauError):
    """The configuration cannot be used; the message names the file and field."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.CONFIG_INVALID, message)


class ServiceNkeys(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The NATS nkey (public) of each service role; replicas of a role share it. A role
    without one gets no NATS user and cannot connect (docs/security.md)."""

    policy: Nkey | None = None
    signer: Nkey | None = None
    backup: Nkey | None = None
    audit: Nkey | None = None
    # The `lantau` CLI's read-only views (hsm status, keys list, audit, approvals list)
    # and the ceremony records of `lantau hsm domain-init | admit`.
    operator: Nkey | None = None
    # `lantau provision`: the one identity that may create or change streams, consumers
    # and buckets. A one-shot job, never a running service.
    provisioner: Nkey | None = None
    # The approvers' web console (`lantau serve console`).
    console: Nkey | None = None


class NatsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    servers: list[str] = msgspec.field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    # This process's NATS identity: a file (mode 0600) holding its nkey seed ("SU...").
    # Every process of a deployment shares the TOML but not this: set it per process with
    # LANTAU__NATS__SEED_FILE. Without one the connection is anonymous, which an
    # authorized server refuses.
    seed_file: str | None = None
    # TLS: the CA that signed the server's certificate (turns TLS on), and for mutual TLS
    # this client's certificate and key (PEM; the key file mode 0600).
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    # The public nkeys of the service roles (requesters, approvers and hsm-nodes carry
    # theirs in their own entries). `lantau bus authorize` turns them into NATS users.
    nkeys: ServiceNkeys = ServiceNkeys()
    # 3 on a JetStream cluster so a stream survives the loss of a server.
    stream_replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    # How long facts stay on the streams (requests, results, events, audit intents).
    retention_days: Positive = 30
    # Window in which JetStream drops a republished message with the same Nats-Msg-Id.
    duplicate_window_s: Positive = 86400
    connect_timeout_s: float = 5.0
    # A connection pings its server this often and gives it up after this many unanswered
    # pings, moving to another server of the cluster: a hung (not dead) server, whose
    # sockets stay open, is left after about ping_interval_s x (max_outstanding_pings + 1).
    # nats-py's own default is 2 minutes.
    ping_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    max_outstanding_pings: Annotated[int, msgspec.Meta(ge=1)] = 2
    # A delivered message not acked within this time goes to another replica. Longer than
    # any handler takes (HSM deadline x attempts), short enough to recover quickly.
    ack_wait_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0


class LoggingConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    json: bool = False
    level: str = "INFO"


class HsmNodeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: Name
    # This node's NATS identity (public nkey): it may serve lantau.hsm.rpc.<id>.> only.
    nkey: Nkey | None = None
    module: str = "/usr/lib/softhsm/libsofthsm2.so"
    token_label: str
    # The user PIN comes from a file (mode 0600) or an environment variable, never the TOML.
    pin_file: str | None = None
    pin_env: str | None = None
    region: str | None = None
    # "pool": signs and holds clones; "backup": an offline backup HSM that only receives
    # clones (never asked to sign). Both must be admitted to the key domain.
    role: Literal["pool", "backup"] = "pool"
    # Worker threads, each with its own PKCS#11 session. Keep 1 for SoftHSM: python-pkcs11
    # initialises the module with C_Initialize(NULL), which tells it the application is
    # single-threaded; SoftHSM then takes no locks and concurrent calls crash it (measured).
    # A vendor module that locks regardless can use more.
    sessions: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    # SoftHSM only: its config file, set as SOFTHSM2_CONF for this node's process.
    softhsm_conf: str | None = None
    # Where the node keeps its own durable state (the replay record of what it signed):
    # a local directory of this node's host, never shared with another node.
    state_dir: str | None = None
    beat_interval_ms: Positive = 500
    metrics_port: Port = 0


class HsmConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How every caller of the HSM pool (signer, backup, audit) treats HSM operations."""

    # Deadline for one HSM operation; past it the pool fails over.
    timeout_ms: Positive = 1000
    # Distinct nodes tried for one operation before it is retried later.
    max_attempts: Positive = 3
    # Wrap/unwrap of a key for cloning may take longer than a signature.
    clone_timeout_ms: Positive = 2000


class SignerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: str = "signer"
    fetch_batch: Positive = 64
    max_concurrency: Positive = 128
    metrics_port: Port = 0


class RequesterConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Name
    # Ed25519 public key, hex: requests must be signed by its private half.
    public_key: Annotated[str, msgspec.Meta(pattern=whole("[0-9a-fA-F]{64}"))]
    # Its NATS identity (public nkey), a different key pair from ``public_key``: NATS has
    # the client sign whatever nonce the server sends, so the request-signing key must
    # never be the connection key. Without one the requester cannot connect.
    nkey: Nkey | None = None
    # Need-to-know: key ids (fnmatch patterns) this system may use; none means none.
    keys: list[str] = []
    may_create_keys: bool = False
    # Keys (fnmatch patterns) this system may have sign a raw digest or message that
    # nobody can decode: blind signing is a permission of its own, denied by default.
    blind_keys: list[str] = []
    # HD keys: derivation paths (fnmatch, e.g. "m/44'/60'/3'/*") this system may sign
    # at; empty: any path of the keys it may use.
    paths: list[str] = []


class AuthorityConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An Ed25519 key that signs authorizations: in a PKCS#11 token (module, token_label,
    pin_file, key_label) where there is one, else a 0600 seed file (seed_file)."""

    seed_file: str | None = None
    module: str = "/usr/lib/softhsm/libsofthsm2.so"
    token_label: str | None = None
    pin_file: str | None = None
    key_label: str | None = None
    # SoftHSM only: its config file, set as SOFTHSM2_CONF before the module loads.
    softhsm_conf: str | None = None


class ApprovalFloor(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Keys the hsm-nodes sign with only after ``quorum`` approvals of ``group``, whatever
    policy's authorization says: a stolen policy key alone cannot waive them."""

    keys: list[str]  # fnmatch patterns of key ids
    group: Name
    quorum: Positive


class EvidenceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What every hsm-node trusts (the signer checks orders against it too). Changed only
    by a Security Officer ceremony: see docs/security.md."""

    # Hex Ed25519 public keys of policy's authority keys (during a rotation: old and new).
    policy_keys: list[str] = []
    # Rotated-out policy keys: their key-creation records still prove where keys may live.
    retired_policy_keys: list[str] = []
    # Hex Ed25519 public keys of the backup service's authority key.
    backup_keys: list[str] = []
    # Each offline backup set's Ed25519 public key (set id -> hex), as `lantau backup
    # init` printed it: only that key, which only a quorum of the set's custodians can
    # rebuild, authorizes a copy into or out of the set.
    backup_set_keys: dict[str, HexKey] = {}
    # Approvals the nodes require for some keys even when policy says none are needed.
    approval_floors: list[ApprovalFloor] = []
    # How far an authorization's issue time may run ahead of the node's clock.
    clock_skew_ms: Positive = 30_000


class ApproverConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An approver's NATS identity. Its vote key and groups live in the policy file
    (``policy.rules_file``); the groups' ``approves_for`` decide whose held requests
    and approval events it may read."""

    name: Name
    nkey: Nkey


class PolicyConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: str = "policy"
    # A request older than this, or dated further ahead than the skew, is refused.
    max_request_age_ms: Positive = 300_000
    clock_skew_ms: Positive = 30_000
    # Signers must finish an order within this time after policy approves it.
    order_deadline_ms: Positive = 60_000
    fetch_batch: Positive = 64
    metrics_port: Port = 0
    # The rules (docs/policy.md), reloaded when the file changes. Without one, every
    # request that passes need-to-know is allowed.
    rules_file: str | None = None
    reload_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    # The key policy signs every authorization with (pinned in [evidence] policy_keys).
    authority: AuthorityConfig | None = None


class AuditConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: str = "audit"
    fetch_batch: Positive = 256
    metrics_port: Port = 0
    # The record key: an Ed25519 seed (64 hex characters, `lantau audit keygen`) that signs
    # every record. Readable by the service's user only (group read is tolerated for
    # Kubernetes secret volumes with fsGroup). Every replica uses the same key.
    record_key_file: str | None = None
    # Create record_key_file (0600) when it does not exist: one replica on its own volume
    # (dev, compose). Never with several replicas: each would make its own key.
    create_record_key: bool = False
    # Earlier record keys (hex public keys) whose records the service still builds on,
    # after a key rotation.
    accept_record_keys: list[str] = []
    # Witness sinks: append-only files on volumes the bus cannot reach, each receiving
    # every checkpoint. At least one is required; with none reachable, signing pauses.
    witness_files: list[str] = []
    # One record per batch: up to this many facts, gathered for at most batch_wait_ms.
    batch_max_facts: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 256
    batch_wait_ms: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    # A signed checkpoint every checkpoint_every records, and at most
    # checkpoint_interval_s after a record was written. A record of nothing but the
    # receipts of checkpoint signatures waits up to checkpoint_idle_s, so an idle log
    # comes to rest; that is also the longest an idle log goes without a new signed head.
    checkpoint_every: Positive = 100
    checkpoint_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    checkpoint_idle_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    # How long an append may keep failing before the service stops (and alerts) instead
    # of retrying: it never drops a fact.
    append_retry_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0


class ConsoleConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The approvers' web console (docs/console.md): sign-in and votes with security keys."""

    id: str = "console"
    metrics_port: Port = 0
    # Where people open it. Browsers allow WebAuthn only in a secure context: https, or
    # http on localhost (dev). Put TLS in front of it anywhere else.
    host: str = "127.0.0.1"
    http_port: Port = 8080
    # The WebAuthn relying party: a domain the origin belongs to, and the origin itself
    # (scheme://host[:port] as the browser shows it; default http://<rp_id>:<http_port>).
    # Both are written into each enrolled credential, and every checker pins them.
    rp_id: str = "localhost"
    origin: str = ""
    # A signed-in session lasts this long; a vote must be signed within vote_window_s.
    session_ttl_s: Annotated[int, msgspec.Meta(ge=60, le=86400)] = 900
    vote_window_s: Annotated[int, msgspec.Meta(ge=10, le=3600)] = 120

    @property
    def web_origin(self) -> str:
        return self.origin or f"http://{self.rp_id}:{self.http_port}"


class BackupConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: str = "backup"
    kek_label: str = "lantau-domain-kek"
    metrics_port: Port = 0
    # A key older than this without a copy in an offline backup set counts in
    # lantau_keys_without_offline_copy (alert LantauKeysWithoutOfflineCopy).
    offline_copy_within_s: Positive = 86400
    # The key the backup service signs clone authorizations with ([evidence] backup_keys).
    authority: AuthorityConfig | None = None


class CustodianConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One holder of a share of a backup set: a name and their X25519 public key (hex)."""

    name: Annotated[str, msgspec.Meta(pattern=whole("[A-Za-z0-9_.@-]{1,128}"))]
    public_key: Annotated[str, msgspec.Meta(pattern=whole("[0-9a-f]{64}"))]


class BackupSetConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An offline backup HSM: a token outside the pool and never on the bus, opened only in
    ceremonies by M of its N custodians (docs/operations.md, "Offline backups")."""

    id: Name
    # The NATS identity of this set's ceremonies (backup-set-<id>, public nkey): the
    # hsm-node calls a copy needs, the key directory, its receipts and manifests.
    nkey: Nkey | None = None
    # Keys tagged with a region are copied only to sets of that region; a set without a
    # region holds untagged keys only.
    region: str | None = None
    module: str = "/usr/lib/softhsm/libsofthsm2.so"
    token_label: str
    # SoftHSM only: its config file, set as SOFTHSM2_CONF in the ceremony's process.
    softhsm_conf: str | None = None
    # Who holds a share (1 to 16) and how many shares open the set.
    custodians: list[CustodianConfig] = []
    threshold: Annotated[int, msgspec.Meta(ge=1, le=16)] = 2
    # The set fingerprint `lantau backup init` (or the last reshare) printed: shares of
    # any other sharing are refused. Unset only before init.
    fingerprint: Annotated[str, msgspec.Meta(pattern=whole("[0-9a-f]{32}"))] | None = None
    # A token of the same module that `lantau backup verify` restores into, checks and
    # empties again; its PIN and SO PIN in 0600 files.
    scratch_token_label: str | None = None
    scratch_pin_file: str | None = None
    scratch_so_pin_file: str | None = None


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    nats: NatsConfig = NatsConfig()
    logging: LoggingConfig = LoggingConfig()
    hsm_nodes: list[HsmNodeConfig] = []
    hsm: HsmConfig = HsmConfig()
    evidence: EvidenceConfig = EvidenceConfig()
    requesters: list[RequesterConfig] = []
    approvers: list[ApproverConfig] = []
    signer: SignerConfig = SignerConfig()
    policy: PolicyConfig = PolicyConfig()
    audit: AuditConfig = AuditConfig()
    backup: BackupConfig = BackupConfig()
    backup_sets: list[BackupSetConfig] = []
    console: ConsoleConfig = ConsoleConfig()

    def backup_set(self, set_id: str) -> BackupSetConfig:
        for backup_set in self.backup_sets:
            if backup_set.id == set_id:
                return backup_set
        known = ", ".join(b.id for b in self.backup_sets) or "none"
        raise ConfigError(f"no [[backup_sets]] entry with id {set_id!r} (known: {known})")

    def hsm_node(self, node_id: str) -> HsmNodeConfig:
        for node in self.hsm_nodes:
            if node.id == node_id:
                return node
        known = ", ".join(n.id for n in self.hsm_nodes) or "none"
        raise ConfigError(f"no [[hsm_nodes]] entry with id {node_id!r} (known: {known})")

    def requester(self, name: str) -> RequesterConfig | None:
        for r in self.requesters:
            if r.name == name:
                return r
        return None

    def __post_init__(self) -> None:
        for kind, names in (
            ("requesters", [r.name for r in self.requesters]),
            ("approvers", [a.name for a in self.approvers]),
            ("hsm_nodes", [n.id for n in self.hsm_nodes]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise msgspec.ValidationError(f"{kind}: names must be unique ({dupes})")


def _parse_env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (ValueError, RecursionError):
        # Not a TOML value (TOMLDecodeError is a ValueError, as is an integer past
        # Python's 4300-digit limit; RecursionError: nested too deeply): a string.
        return text


def _apply_override(raw: dict[str, Any], path: list[str], value: Any, env_name: str) -> None:
    node: Any = raw
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            # isdecimal, not isdigit: int() refuses superscripts that isdigit() accepts.
            if not (part.isascii() and part.isdecimal()) or int(part) >= len(node):
                raise ConfigError(f"{env_name}: no list item {part!r}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif not isinstance(node, dict):
            raise ConfigError(f"{env_name}: {path[i - 1]!r} is not a table")
        elif last:
            node[part] = value
        else:
            node = node.setdefault(part, {})


# Where `lantau dev up` writes its config: operator commands find the dev stack there.
DEV_CONFIG = ".lantau/run/lantau.toml"


def load_for_cli(path: str | None) -> Config:
    """An operator command's config: --config, else $LANTAU_CONFIG, else the dev stack's."""
    return load(path or os.environ.get("LANTAU_CONFIG") or DEV_CONFIG)


def load(path: str | os.PathLike[str] | None, env: dict[str, str] | None = None) -> Config:
    """Read the TOML file (or none), apply ``LANTAU__*`` overrides and validate."""
    text = ""
    where = str(path) if path else "<defaults>"
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file {where} does not exist") from None
        except OSError as e:
            raise ConfigError(f"config file {where} cannot be read: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {where} is not UTF-8 text: {e.reason}") from None
    return loads(text, env, where)


def loads(text: str, env: dict[str, str] | None = None, where: str = "<string>") -> Config:
    """Decode TOML text, apply ``LANTAU__*`` overrides and validate; errors name ``where``."""
    env = dict(os.environ) if env is None else env
    # os.environ holds bytes that are not UTF-8 as lone surrogates; msgspec cannot
    # match such a key to a field (UnicodeEncodeError), and no setting wants one.
    _check_utf8(text, f"config file {where}")
    try:
        raw: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {where} is not valid TOML: {e}") from None
    except (ValueError, RecursionError) as e:
        # tomllib lets these through: an integer past Python's 4300-digit limit, and
        # arrays or inline tables nested a few hundred deep.
        what = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise ConfigError(f"config file {where} is not valid TOML: {what}") from None
    for name, value in sorted(env.items()):
        if name.startswith(ENV_PREFIX):
            _check_utf8(name + value, f"environment variable {name!r}")
            parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
            if parts:
                _apply_override(raw, parts, _parse_env_value(value), name)
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as e:
        raise ConfigError(f"config {where}: {e}") from None
    # A clone authorization names its ends by id: a backup set must never be taken for
    # an online node, nor one set for another.
    ids = [n.id for n in config.hsm_nodes] + [b.id for b in config.backup_sets]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ConfigError(
            f"config {where}: hsm node and backup set ids must be distinct: {', '.join(twice)}"
        )
    return config


def _check_utf8(text: str, what: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError as e:
        where = f" (line {text.count(chr(10), 0, e.start) + 1})" if "\n" in text else ""
        raise ConfigError(f"{what} is not UTF-8 text{where}") from None


def read_pin(node: HsmNodeConfig, env: dict[str, str] | None = None) -> str:
    """The node's user PIN from its file or environment variable. Never log the result."""
    env = dict(os.environ) if env is None else env
    if node.pin_file:
        try:
            pin = Path(node.pin_file).read_text().strip()
        except OSError as e:
            raise ConfigError(
                f"hsm node {node.id}: cannot read pin_file {node.pin_file}: {e.strerror}"
            ) from None
    elif node.pin_env:
        if node.pin_env not in env:
            raise ConfigError(f"hsm node {node.id}: environment variable {node.pin_env} is unset")
        pin = env[node.pin_env]
    else:
        raise ConfigError(f"hsm node {node.id}: set pin_file or pin_env")
    if not pin:
        raise ConfigError(f"hsm node {node.id}: the PIN is empty")
    return pin


def dump(config: Config) -> str:
    """Render a Config back to TOML-compatible text (used by the dev stack)."""
    return _to_toml(msgspec.to_builtins(config))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        inner = ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items() if x is not None)
        return "{ " + inner + " }"
    raise TypeError(f"cannot render {type(v).__name__} as TOML")


def _to_toml(data: dict[str, Any]) -> str:
    lines: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"\n[{key}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in value.items() if v is not None]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                lines.append(f"\n[[{key}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items() if v is not None]
        elif value is not None and not (isinstance(value, list) and not value):
            lines.insert(0, f"{key} = {_toml_value(value)}")
    return "\n".join(lines).strip() + "\n"
