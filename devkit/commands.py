"""The ``lantau`` commands of the dev harness: ``dev up``, ``chaos`` and ``bench``.

Registered only when this package is installed (the ``dev`` extra); an operator
install of Lantau has the runtime commands alone.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
from pathlib import Path

from devkit import bench


def cmd_dev_up(args: argparse.Namespace) -> int:
    from devkit.demo import dev_up_with_demo

    return asyncio.run(
        dev_up_with_demo(
            Path(args.dir),
            nodes=args.nodes,
            demo=args.demo,
            keep_running=not args.exit,
            prometheus=args.prometheus,
            nats_cluster=args.nats_cluster,
        )
    )


def cmd_chaos(args: argparse.Namespace) -> int:
    if args.bus is not None:
        from devkit.buschaos import LONG_SCALE, chaos_bus_demo

        scale = LONG_SCALE if args.long else 1.0
        return asyncio.run(chaos_bus_demo(Path(args.dir) / "bus", args.bus, scale))
    from devkit.chaos import chaos_demo

    shutil.rmtree(args.dir, ignore_errors=True)
    if args.hss:
        from devkit.hss_chaos import hss_chaos_demo

        return asyncio.run(hss_chaos_demo(Path(args.dir), duration_s=args.seconds or 120.0))
    return asyncio.run(chaos_demo(Path(args.dir), duration_s=args.seconds or 18.0))


def cmd_backup_drill(args: argparse.Namespace) -> int:
    from devkit.drill import drill_demo

    shutil.rmtree(args.dir, ignore_errors=True)
    return asyncio.run(drill_demo(Path(args.dir), keys=args.keys))


def add_backup_parsers(backup: argparse._SubParsersAction) -> None:
    """``lantau backup drill``: it destroys HSM tokens, so it runs on a dev stack only."""
    p = backup.add_parser(
        "drill",
        help="rehearse a disaster on a dev stack of its own: destroy every online token, "
        "restore from a backup set with 2 of 3 custodians, sign with every key again",
    )
    p.add_argument("--dir", default=".lantau/drill")
    p.add_argument("--keys", type=int, default=6, help="secp256k1 keys to create (hk and untagged)")
    p.set_defaults(fn=cmd_backup_drill)


def add_parsers(sub: argparse._SubParsersAction, run_dir: Path) -> None:
    dev = sub.add_parser("dev", help="embedded dev stack").add_subparsers(dest="dev", required=True)
    p = dev.add_parser("up", help="start nats-server, SoftHSM tokens, hsm-nodes and services")
    p.add_argument("--dir", default=str(run_dir))
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--demo", action="store_true", help="send demo requests once ready")
    p.add_argument("--exit", action="store_true", help="stop after the demo instead of serving")
    p.add_argument(
        "--prometheus", action="store_true", help="also run Prometheus scraping the stack"
    )
    p.add_argument(
        "--nats-cluster",
        type=int,
        default=1,
        metavar="N",
        help="run N nats-servers as one JetStream cluster (3: every stream at 3 replicas)",
    )
    p.set_defaults(fn=cmd_dev_up)

    p = sub.add_parser("chaos", help="watch failover live: load on a dev stack while HSM nodes die")
    p.add_argument("--dir", default=".lantau/chaos")
    p.add_argument("--seconds", type=float, help="how long (default 18; 120 with --hss)")
    p.add_argument(
        "--hss",
        action="store_true",
        help="stateful HSS keys: kill, hang, restart and join nodes while signing, then "
        "check every signature and that no one-time key was used twice",
    )
    p.add_argument(
        "--bus",
        nargs="*",
        metavar="SCENARIO",
        help="lose NATS servers instead, on a 3-server cluster: meta-leader, orders-leader, "
        "freeze, rolling, wipe (default: all, each on a fresh stack)",
    )
    p.add_argument("--long", action="store_true", help="with --bus: four times longer")
    p.set_defaults(fn=cmd_chaos)

    bench.add_parsers(sub)
