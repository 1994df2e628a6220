"""NATS identities: nkey user seeds in 0600 files, and the TLS context of a connection.

A seed ("SU...") is the private half of an identity; it is read from its file when a
process connects and never logged. The public half ("U...") goes in lantau.toml.
"""

from __future__ import annotations

import logging
import os
import secrets
import ssl
import stat
from pathlib import Path

import nkeys

from libs.config import ConfigError, NatsConfig
from libs.secret_files import write_secret

log = logging.getLogger("lantau.bus")


def new_seed() -> bytes:
    """A fresh nkey user seed."""
    return bytes(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER))


def public_key(seed: bytes) -> str:
    """The public nkey ("U...") of a seed."""
    try:
        return str(nkeys.from_seed(bytearray(seed.strip())).public_key.decode())
    except (nkeys.NkeysError, ValueError, TypeError):
        raise ConfigError("not an nkey seed (expected a line starting with SU)") from None


def write_seed(path: str | os.PathLike[str], *, replace: bool = False) -> str:
    """Make a new identity: its seed in ``path`` (mode 0600); returns the public nkey."""
    seed = new_seed()
    write_secret(path, seed + b"\n", replace=replace)
    return public_key(seed)


def ensure_seed(path: str | os.PathLike[str]) -> str:
    """The public nkey of the seed in ``path``, making the seed first if there is none."""
    if Path(path).exists():
        return public_key(read_seed(path))
    return write_seed(path)


def read_seed(path: str | os.PathLike[str]) -> bytes:
    """The seed in ``path``. Refused when others may write the file (anyone could become
    this identity); a file others may read is used with a warning, since container
    runtimes mount secrets group- or world-readable (compose, Kubernetes' defaultMode)."""
    try:
        mode = os.stat(path).st_mode
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ConfigError(
                f"nats seed file {path} is writable by others (mode {stat.S_IMODE(mode):o}); "
                "make it 0600"
            )
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning(
                "nats seed file %s is readable by others (mode %o); 0600 is safer",
                path,
                stat.S_IMODE(mode),
            )
        seed = Path(path).read_bytes().strip()
    except OSError as e:
        raise ConfigError(f"cannot read nats seed file {path}: {e.strerror}") from None
    public_key(seed)  # a typed error for a file that holds something else
    return seed


def tls_context(cfg: NatsConfig) -> ssl.SSLContext | None:
    """TLS towards the server when ``ca_file`` is set; with ``cert_file`` also mutual TLS."""
    if not cfg.ca_file:
        if cfg.cert_file or cfg.key_file:
            raise ConfigError("[nats] cert_file/key_file need ca_file (the server's CA)")
        return None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        elif cfg.key_file:
            raise ConfigError("[nats] key_file without cert_file")
    except OSError as e:
        raise ConfigError(f"[nats] cannot read TLS files: {e.strerror or e}") from None
    except ssl.SSLError as e:
        raise ConfigError(f"[nats] unusable TLS files: {e.reason or e}") from None
    return ctx
