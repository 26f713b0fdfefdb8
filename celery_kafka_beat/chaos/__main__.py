"""``python -m celery_kafka_beat.chaos``: ``run`` a chaos run (then check it), ``check`` a run directory, or write
the ``report``. Exit status 1 when the checker finds a duplicate or a loss the policy does not allow, or a
replica died without a fault."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from . import checker
from .harness import KINDS, GroupSpec, Harness, default_entries
from .report import write_report

#: Named group presets: delivery mode and catch-up policy.
PRESETS = {
    "alo": ("at-least-once", "all"),
    "amo": ("at-most-once", "once"),
    "alo-once": ("at-least-once", "once"),
    "amo-all": ("at-most-once", "all"),
}


def _groups(text: str, lease: float) -> list[GroupSpec]:
    groups = []
    for name in text.split(","):
        if name not in PRESETS:
            raise SystemExit(f"--groups: unknown group {name!r}; choose from {', '.join(PRESETS)}")
        delivery, catchup = PRESETS[name]
        groups.append(GroupSpec(name, delivery, catchup, default_entries(), lease=lease))
    return groups


def _run(args: argparse.Namespace) -> int:
    # SIGTERM ends the run like Ctrl-C: the harness still stops its replicas, brokers and Redis.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    out = Path(args.out or f"chaos-runs/seed{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
    kinds = args.kinds.split(",") if args.kinds else list(KINDS)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise SystemExit(f"--kinds: unknown {sorted(unknown)}; choose from {', '.join(KINDS)}")
    harness = Harness(out, args.seed, args.minutes * 60, _groups(args.groups, args.lease), kinds)
    summary = harness.run()
    report = checker.check(out)
    print(checker.render_text(report))
    (out / "check.json").write_text(json.dumps(checker.to_json(report), indent=1))
    problems = list(summary["unexpected_exits"])
    if not summary["settled"]:
        problems.append("not every tick arrived within 90 s of the end of the faults (see the checker)")
    for problem in problems:
        print(f"FAIL: {problem}")
    print(f"run directory: {out}")
    if args.report:
        write_report([out], Path(args.report), Path(args.report).parent, method=METHOD)
        print(f"report written to {args.report}")
    return 0 if report.ok and not problems else 1


METHOD = """\
Written by `python -m celery_kafka_beat.chaos run --seed SEED --minutes M --report docs/reliability.md` (one run,
both delivery modes side by side), here `--seed 2026 --minutes 30` (groups `alo,amo`) and `--seed 2027 --minutes 30
--groups alo,amo,alo-once`, then `python -m celery_kafka_beat.chaos report RUN_DIR... --out docs/reliability.md`.
The checker alone: `python -m celery_kafka_beat.chaos check RUN_DIR`. The short run in the default test suite is
`tests/chaos/test_chaos.py` (every fault kind once, both modes).

**Set-up.** A 3-broker Kafka cluster (KRaft, jars from Maven Central, `broker.session.timeout.ms` 4 s, topic
replication factor 3, `min.insync.replicas` 2), a Redis as the Celery broker and, per group, 3 replicas of `celery
beat -S kafka` running `celery_kafka_beat/chaos/app.py` with 19 interval entries (16 every second, 2 every 2 s, 1
every 5 s), lease 3 s, decision lead 0.25 s. The groups differ in delivery mode and catch-up policy (`--groups`):
`alo` is at-least-once with catch-up `all` (it may lose nothing), `amo` at-most-once with `once` (it may duplicate
nothing), `alo-once` the user-facing defaults (at-least-once, `once`), `amo-all` at-most-once with `all`. Each
replica reaches Kafka only through its own TCP proxies (one per broker, on the ports the brokers advertise for that
replica's listener), so the harness can cut one replica off from Kafka while it still reaches Redis. A recorder
consumes every task message from Redis and logs entry, tick, task id, node, epoch and when it arrived.

**Faults.** The plan comes from the seed (printed at the start, kept in `plan.json`): every kind once, then kinds
drawn by weight, one every 4-10 s, overlapping when their durations do. Kinds: SIGKILL of a replica and restart
0.5-6 s later; SIGTERM and restart; SIGSTOP for 1.3-3 leases, then SIGCONT (the zombie owner); a network partition
from Kafka for 0.5-3 leases (bytes in flight are held and delivered after the heal: late zombie writes); SIGKILL of
a broker (60 % the partition leader of the sync topic) and restart 2-10 s later; a restart with the wall clock 1-15
minutes off (Python's clocks and Celery's `app.now()` in that replica, not librdkafka's; libfaketime makes
librdkafka hang in `Consumer.close` on this machine); scale up (to at most 5 replicas) and down (to at least 2); a
rolling restart of every replica. A replica fault hits each group at once, usually the replica that last dispatched
a chosen entry (its owner); a broker fault hits every group.

**Checker.** After the faults the harness waits until every entry has dispatched past the window and groups that may
lose nothing have every tick (at most 90 s), then stops everything. Besides the task messages, the harness reads
each group's sync topic (straight from the brokers) and logs every record with its broker time. The checker derives
each entry's tick grid from what arrived and counts, per tick of the window: received once, more than once, or
missing. A duplicate is allowed only in at-least-once mode, with one task id for every copy, and only around a fault
of a node that sent it (or of the brokers): a re-send. Decisions count as the protocol's fold counts them: one that
lands after its session's lease ran out in log time, or after a later claim of its entry was granted (the late write
of a cut-off, paused or stalled owner), decided nothing. A tick never decided is allowed missing by catch-up `once`
when the entry's next decided tick was decided more than the 1 s grace after it. A tick decided and never published
is allowed missing in at-most-once mode when an unclean fault (kill, stop, partition, broker, or a stop that had to
be SIGKILLed) hit the node that decided it, or the brokers, and the tick fell between 1 s before the fault began and
lease + 1 s after it ended. Anything else is a loss outside the policy. The first run (seed 2026) predates the sync
log: its missing ticks were judged from the arrivals alone, a looser rule (see
`celery_kafka_beat/chaos/checker.py`). The failover gap of a fault is the time from the fault to the first dispatch
of each entry its target owned, among those ticking every second, by another replica (the largest of them); lateness
is receive time minus tick, measured at the Redis consumer. Faults overlap (one every 4-10 s, many last longer), so
the worst gaps of a kind are often another fault's doing: a SIGTERM of the only replica not cut off from Kafka waits
for the partition to heal. Absolute times are from a 2-core machine shared by 3 brokers, up to 5 replicas per group
and the harness."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m celery_kafka_beat.chaos", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the harness, then the checker")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--minutes", type=float, default=2.0, help="length of the fault phase (default 2)")
    run.add_argument("--groups", default="alo,amo", help=f"deployments, from {', '.join(PRESETS)} (default alo,amo)")
    run.add_argument("--kinds", default="", help=f"fault kinds (default all: {','.join(KINDS)})")
    run.add_argument("--lease", type=float, default=3.0, help="kafka_beat_lease of every replica (default 3)")
    run.add_argument("--out", help="run directory (default chaos-runs/seed<N>-<time>)")
    run.add_argument("--report", help="also write the markdown report here (e.g. docs/reliability.md)")
    check = sub.add_parser("check", help="check a run directory")
    check.add_argument("run_dir")
    report = sub.add_parser("report", help="write the markdown report of one or more run directories")
    report.add_argument("run_dirs", nargs="+")
    report.add_argument("--out", default="docs/reliability.md")
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "check":
        return checker.main([args.run_dir])
    write_report([Path(d) for d in args.run_dirs], Path(args.out), Path(args.out).parent, method=METHOD)
    print(f"report written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
