"""Which NATS identity a command connects as, and where its seed is."""

from __future__ import annotations

import os
from pathlib import Path

from nats.aio.client import Client

from libs.bus.connect import connect
from libs.config import DEV_CONFIG, Config


def seed_for(cfg: Config, identity: str, given: str | None, config_path: str | None) -> str | None:
    """``--seed-file`` when given; else ``nkeys/<identity>.seed`` beside the config (where
    the dev stack keeps them); else ``[nats] seed_file``."""
    if given:
        return given
    path = config_path or os.environ.get("LANTAU_CONFIG") or DEV_CONFIG
    beside = Path(path).parent / "nkeys" / f"{identity}.seed"
    if beside.exists():
        return str(beside)
    return cfg.nats.seed_file


async def connect_cli(
    cfg: Config,
    identity: str,
    *,
    seed_file: str | None = None,
    config_path: str | None = None,
    name: str = "lantau-cli",
) -> Client:
    """One try, no reconnects: a command fails fast when the bus is not there."""
    return await connect(
        cfg.nats,
        name,
        identity=identity,
        seed_file=seed_for(cfg, identity, seed_file, config_path),
        patient=False,
    )
