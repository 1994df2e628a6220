"""Offline backups under an M-of-N custodian quorum.

A backup HSM's credentials (its user PIN and a key-encryption secret) are derived from
a master secret that exists only as N shares, one sealed to each custodian; any M of
them rebuild it for the length of a ceremony. See docs/backup-quorum.md.
"""

from libs.backup.custodian import Custodian, custodian_keygen, public_key_of
from libs.backup.derive import BackupSecrets
from libs.backup.envelope import DecryptedShare, ShareEnvelope, open_share
from libs.backup.files import read_custodian_key, read_share, write_custodian_key, write_share
from libs.backup.quorum import combine, create_backup_set, reshare

__all__ = [
    "BackupSecrets",
    "Custodian",
    "DecryptedShare",
    "ShareEnvelope",
    "combine",
    "create_backup_set",
    "custodian_keygen",
    "open_share",
    "public_key_of",
    "read_custodian_key",
    "read_share",
    "reshare",
    "write_custodian_key",
    "write_share",
]
