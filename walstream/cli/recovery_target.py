"""The recovery_target_* flags, shared by the receive and startup command lines.

A module of its own so that the receiver's command line can offer them
without importing the startup role (and the WAL decoder) at start-up.
"""

from __future__ import annotations

import argparse

from walstream.wal.recovery import RecoveryTarget

__all__ = ["add_target_arguments", "target_from_arguments"]


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """The recovery target flags, named after PostgreSQL's settings (shared with the receiver)."""
    g = parser.add_argument_group(
        "recovery target (PostgreSQL's recovery_target_* settings; at most one target)"
    )
    g.add_argument(
        "--recovery-target",
        metavar="immediate",
        help="stop as soon as recovery is consistent (the end of the base backup)",
    )
    g.add_argument("--recovery-target-lsn", metavar="LSN", help="stop at this WAL location")
    g.add_argument("--recovery-target-xid", metavar="XID", help="stop at this transaction's end")
    g.add_argument(
        "--recovery-target-time",
        metavar="TIMESTAMP",
        help="stop at the first commit or abort after this time (e.g. '2026-12-01 10:00:00+00')",
    )
    g.add_argument(
        "--recovery-target-name", metavar="NAME", help="stop at this pg_create_restore_point()"
    )
    g.add_argument(
        "--recovery-target-inclusive",
        metavar="on|off",
        default="on",
        help="stop just after the target (on, the default) or just before it (off)",
    )
    g.add_argument(
        "--recovery-target-action",
        choices=("pause", "promote", "shutdown"),
        default="pause",
        help="what to do at the target: pause (default: stop replaying, keep running), "
        "promote (stop and report), shutdown (stop and exit)",
    )


def target_from_arguments(args: argparse.Namespace) -> RecoveryTarget:
    """The RecoveryTarget the flags name; RecoveryTargetError with PostgreSQL's wording."""
    return RecoveryTarget.from_settings(
        target=args.recovery_target,
        lsn=args.recovery_target_lsn,
        xid=args.recovery_target_xid,
        time=args.recovery_target_time,
        name=args.recovery_target_name,
        inclusive=args.recovery_target_inclusive,
        action=args.recovery_target_action,
        timeline=getattr(args, "recovery_target_timeline", None),
    )
