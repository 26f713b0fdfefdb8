"""Check a chaos run directory (written by :mod:`.harness`): was each tick dispatched exactly once, within the policy?

Pure: reads ``run.json``, ``ticks-<group>.jsonl``, ``sync-<group>.jsonl``, ``faults.jsonl`` and the replicas' logs
(``logs/``); needs neither Kafka nor a Celery broker.

**Faults, as the rules see them.** A fault is a start/end pair of one ``n``, group and target in ``faults.jsonl``.
It *hits* its target replica; a crash loop hits every incarnation it started (``nodes`` of its end event); a broker
fault hits every replica of every group, a ``delete-records`` every replica of its group. Its *window* is
``[start - 1 s, end + lease + 1 s]``: 1 s before, because the owner decides ticks up to the decision lead (250 ms)
ahead and the harness takes a moment to apply a fault; lease + 1 s after, because a new owner can claim only once
the old session has been voted out (a lease after its last record), then needs a moment to read, claim and decide.
*Unclean* faults are kill, stop, partition, broker, deaf, delete-records, and a SIGTERM that had to be SIGKILLed.
``poison`` and ``crash-loop`` excuse nothing at all: no duplicate and no missing tick, whoever sent or owned it,
the crash-looping incarnations included (they must never own an entry: each is killed before its probation ends,
so a tick one of them decided and did not publish is a loss outside the policy).

Per group and entry, the rules are:

* **Grid.** An entry's ticks lie on ``phase + k * period``. The phase comes from the entry's first received message
  (by receive time, whole log). A message off that grid is a violation (off-grid tick). The expected ticks are the
  grid points ``t`` with ``window.start <= t <= window.end``; messages whose tick is outside the window are counted
  and otherwise ignored (they still give phases, predecessors and successors). An entry never dispatched at all has
  ``ceil(window length / period)`` missing ticks, and that is a violation.
* **Duplicates.** A tick received more than once. In at-most-once mode any duplicate is a violation. In
  at-least-once mode a duplicate is allowed (and counted) only when its copies share one task id and the tick lies
  in the window of a fault (not poison, not crash-loop) that hit one of the nodes that sent them: the re-send of a
  tick whose confirmation did not make it into the log. Task ids are derived from the tick, so a split brain would
  also send one id twice; the fault is what tells a re-send from it.
* **Missing ticks, with the sync log** (``sync-<group>.jsonl``: the harness reads every record of the group's
  topic with its broker time). Only valid decisions count: one that lands after its session ended (goodbye, a vote
  naming its latest record, a genesis) or after a later claim of its entry was granted (a cut-off or paused owner's
  late write, which the protocol ignores) decided nothing.
  A tick never decided is allowed by catch-up 'once' when the entry's
  next decided tick was decided more than the grace after it: the owner then found it overdue past the grace and,
  as 'once' says, decided only the latest tick due. A tick decided but never published is allowed in at-most-once
  mode when it lies in the window of an unclean fault that hit the deciding node. For a ``deaf`` fault (a replica
  that can write but not read), only under an epoch whose claim landed (broker time) before the fault's start,
  which the harness logs once the replica's consumer is cut: an entry granted to it while it could not read was
  taken from someone, and its ticks are not excused. For ``delete-records`` (an operator's DeleteRecords; start
  just before the request, end at its answer) every replica of the group is hit: one whose read position was deleted
  says goodbye and reads the topic again, its entries move at once, and what it had decided and not yet published
  is lost within the same bound as after a kill. Every other missing tick is a loss outside the policy (a
  violation); with catch-up 'all' and at-least-once, no missing tick is allowed.
* **Missing ticks, without a sync log** (older runs, hand-made ones), judged from what arrived: 'once' allows
  ``t`` when the next received tick ``t2`` came more than the grace after ``t`` and was planned afresh (a new
  epoch, or its owner itself past the grace); at-most-once allows it when an unclean fault hit the node that sent
  the entry's previous tick, in its window. Looser: a tick lost at a handover passes.
* **Faults that must cost the others nothing** (poison, deaf, crash-loop). A missing tick whose *owner* (the node
  that sent the entry's previous received tick) the fault did not hit, lying in the fault's window (for deaf and
  crash-loop extended by the probation, ``probation`` in run.json, default 5 s: the sick replica's last session
  may say ``ready`` that long after its hello and then take its share), is a loss outside the policy, whatever the
  rules above allow ('once' included), unless it also lies in the window of another fault (not poison, not
  crash-loop) that hit its owner or the whole group. Counted in ``missing_not_allowed`` and, of those, in
  ``missing_near_no_loss_faults``. So a burst of poison records, a replica that can write but not read, or a joiner
  that crash-loops must not cost a healthy owner a single tick.
* **Replica logs.** Each replica process (``logs/<group>-r<slot>-<n>.log``) logs each kind of record it cannot use
  at most once, and its node's thread never fails ("unexpected error; restarting from the topic", "stopped by an
  error"); either is a violation. The kinds of problem logged are counted (how many replicas logged each).
* **Lateness.** ``recv - tick`` of each received tick's first copy; also over "quiet" ticks only, which lie in no
  fault window ``[start, end + lease + 2 s]`` of the group (broker faults included).
* **Missing near faults** (not pass/fail; the report's evidence for the rule above). Per fault kind: the missing
  ticks, whatever their verdict, in the window of a fault of that kind (deaf and crash-loop: extended as above); of
  those, the ones whose owner no such fault hit; and of those, the ones that no other fault of their owner or the
  group explains.
* **Failover gaps.** For each fault that stops or isolates a node ``X`` (kill, term, stop, partition, deaf, clock,
  scale-down, rolling): the entries of the group's shortest period (a
  longer one would add its own wait for the next tick) whose last dispatch before the start was by ``X``. If
  ``X`` dispatches the entry again after the fault's end before any other node does, it was *kept* (a pause or
  partition shorter than the lease); otherwise its gap is the receive time of the first dispatch by another node
  minus the start (``X``'s own messages in between are ticks it had decided; a clean stop publishes them). A
  fault's gap is the largest of its entries' gaps. For a broker fault, per group: the largest (first receive of
  an entry after the start) - start. For a fault that moves no entry (poison, delete-records, crash-loop): the
  longest time between two dispatches of one entry spanning part of ``[start, end + lease + 1 s]`` (1 s, the
  period, is no pause at all). Not a pass/fail rule.

Malformed lines are violations naming file and line; a fault that never ended is taken to end at the window's end.
Catch-up 'skip' excuses no missing tick here (checked as strictly as 'all').
Run ``python -m proof.chaos check RUN``: it prints the summary and writes ``RUN/check.json``.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import itertools
import json
import math
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Final, TypeVar

from celery_kafka_beat.protocol.node import CatchUp, DeliveryMode
from celery_kafka_beat.protocol.state import MAX_LEASE_MS

UNCLEAN_KINDS: Final = frozenset({"kill", "stop", "partition", "broker", "deaf", "delete-records"})
# Faults that stop or cut off one replica, so its entries must move (or wait for it).
FAILOVER_KINDS: Final = frozenset({"kill", "term", "stop", "partition", "clock", "scale-down", "rolling", "deaf"})
# Faults that hit every replica (of every group for a broker, of its own group for a DeleteRecords).
GROUP_KINDS: Final = frozenset({"broker", "delete-records"})
# Faults that excuse nothing: no duplicate, no missing tick, whoever they hit.
EXCUSE_NOTHING_KINDS: Final = frozenset({"poison", "crash-loop"})
# Faults that must cost the replicas they do not target nothing: no missing tick at all, whatever the catch-up
# policy would allow, unless another fault explains it (see the module docstring).
NO_LOSS_KINDS: Final = frozenset({"poison", "deaf", "crash-loop"})
# Faults whose figure is the longest silence of an entry while they last (nobody's entries need to move).
SILENCE_KINDS: Final = frozenset({"poison", "delete-records", "crash-loop"})
# The default probation of a new session (run.json's "probation" overrides it).
DEFAULT_PROBATION_MS: Final = 5000
# Why 1 s before the start: the faulted owner decided ticks up to the decision lead (250 ms) ahead and may have
# lost them in flight; 1 s also covers the harness's own delay in applying the fault.
AMO_BEFORE_MS: Final = 1000
# Why lease + 1 s after the end: a new owner can claim only once the old lease lapsed, then needs a moment to
# read the log and decide; ticks due meanwhile were decided by (and lost with) the old owner or are overdue.
AMO_AFTER_MS: Final = 1000
# Why lease + 2 s: ownership has settled and the new owner has caught up by then; later ticks are "quiet" again.
QUIET_AFTER_MS: Final = 2000
# A genesis must follow a quiet stretch this long (the protocol's: the longest lease and a tenth).
GENESIS_QUIET_MS: Final = MAX_LEASE_MS + MAX_LEASE_MS // 10
# How many example ticks a violation message names.
_EXAMPLES: Final = 5
# What a replica logs when it skips a record it cannot use (once per kind of problem), and when its node's thread
# fails (restarts from the topic, or stops for good).
_SKIP_LINE: Final = re.compile(rb"with this problem \(([^()]*)\) are skipped without a log line")
_NODE_ERROR_LINE: Final = re.compile(rb"unexpected error; restarting from the topic|stopped by an error")


class RunDirError(Exception):
    """The run directory cannot be checked at all (no or unreadable run.json)."""


@dataclass(frozen=True, kw_only=True)
class Distribution:
    """Nearest-rank percentiles of integer samples (milliseconds); ``None`` when there are no samples."""

    count: int
    p50: int | None
    p90: int | None
    p99: int | None
    max: int | None

    @classmethod
    def of(cls, values: Iterable[int]) -> Distribution:
        ordered = sorted(values)
        return cls(
            count=len(ordered),
            p50=percentile(ordered, 50),
            p90=percentile(ordered, 90),
            p99=percentile(ordered, 99),
            max=ordered[-1] if ordered else None,
        )


def percentile(ordered: Sequence[int], p: int) -> int | None:
    """The nearest-rank ``p``-th percentile of already sorted values."""
    if not ordered:
        return None
    rank = max(1, -(-p * len(ordered) // 100))
    return ordered[rank - 1]


@dataclass(frozen=True, kw_only=True)
class Counts:
    """Tick counts of one entry, or summed over a group's entries."""

    expected: int = 0
    once: int = 0
    duplicate_ticks: int = 0  # distinct ticks received more than once
    duplicate_copies: int = 0  # extra copies beyond the first
    duplicate_ticks_id_identical: int = 0  # of duplicate_ticks: all copies share one task id
    duplicate_ticks_violating: int = 0  # of duplicate_ticks: not allowed by the delivery mode
    missing_once: int = 0  # allowed by catch-up 'once'
    missing_at_most_once: int = 0  # allowed by at-most-once delivery after an unclean fault
    missing_not_allowed: int = 0
    missing_near_no_loss_faults: int = 0  # of missing_not_allowed: charged to a poison, deaf or crash-loop fault
    off_grid: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


@dataclass(frozen=True, kw_only=True)
class FaultGap:
    """The failover after one fault in one group (for a broker fault: the group's slowest entry to resume)."""

    n: int
    kind: str
    target: str
    start: int
    end: int
    owned: int  # entries whose last dispatch before the start was by the target (broker: entries considered)
    kept: int  # entries whose next dispatch was by the target again
    unrecovered: int  # entries never dispatched again after the start
    gap_ms: int | None  # None when no entry moved


@dataclass(frozen=True, kw_only=True)
class FailoverStats:
    faults: int
    gaps: Distribution  # of per-fault gaps (faults with a gap only)
    kept: int  # entries
    owned_nothing: int  # faults
    unrecovered: int  # entries


@dataclass(frozen=True, kw_only=True)
class NearStats:
    """Missing ticks (whatever the policy says of them) near the faults of one kind: in the window of one of them
    ([start - 1 s, end + lease + 1 s], for deaf and crash-loop also + probation)."""

    faults: int
    missing: int
    healthy: int  # of missing: of entries whose owner the fault did not hit (every owner is hit by a group fault)
    unexplained: int  # of healthy: no other fault (that excuses anything) hit the owner or the group around them


@dataclass(frozen=True, kw_only=True)
class GroupResult:
    name: str
    delivery: str
    catchup: str
    grace_ms: int
    lease_ms: int
    entries: dict[str, Counts]
    total: Counts
    unknown_entry_messages: int
    outside_window_messages: int
    lateness_all: Distribution
    lateness_quiet: Distribution
    failover: dict[str, FailoverStats]  # by fault kind
    fault_gaps: list[FaultGap]
    fault_counts: dict[str, int]  # distinct faults (by n) applied to this group, by kind; broker faults included
    near: dict[str, NearStats]  # missing ticks near the faults of each kind
    violations: list[str]
    lateness_ms: list[int] = field(default_factory=list, repr=False)  # first copies, for plots
    zombie_decisions: int | None = None  # decisions that landed superseded (None: no sync log)
    skipped_kinds: dict[str, int] = field(default_factory=dict)  # problem code -> replica logs that logged it
    replica_logs: int = 0  # replica log files read

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass(frozen=True, kw_only=True)
class Report:
    run_dir: Path
    seed: int | None
    window_start: int
    window_end: int
    faults_applied: int | None
    faults_skipped: int | None
    groups: dict[str, GroupResult]
    violations: list[str]  # every violation: file-level ones, then each group's (prefixed with the group)
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.violations


# --- reading -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Message:
    entry: str
    tick: int
    id: str
    node: str
    epoch: int
    recv: int


@dataclass(frozen=True, kw_only=True)
class _Fault:
    n: int
    kind: str
    group: str | None
    target: str
    start: int
    end: int
    forced: bool = False  # a clean stop that timed out and was SIGKILLed (detail "clean": false)
    nodes: frozenset[str] = frozenset()  # the replicas it hit: the target, and a crash loop's incarnations

    @property
    def unclean(self) -> bool:
        return self.kind in UNCLEAN_KINDS or self.forced

    def hits(self, node: str | None) -> bool:
        """Whether the fault hit ``node`` (every node for a broker fault or a DeleteRecords)."""
        return self.kind in GROUP_KINDS or node == self.target or node in self.nodes

    def window(self, lease_ms: int, extra_ms: int = 0) -> tuple[int, int]:
        """[start - 1 s, end + lease + 1 s (+ extra)]: the stretch in which the fault may explain a tick."""
        return self.start - AMO_BEFORE_MS, self.end + lease_ms + AMO_AFTER_MS + extra_ms


@dataclass(frozen=True, kw_only=True)
class _GroupConfig:
    name: str
    delivery: str
    catchup: str
    grace_ms: int
    lease_ms: int
    periods_ms: dict[str, int]
    probation_ms: int = DEFAULT_PROBATION_MS


class _Malformed(ValueError):
    pass


_T = TypeVar("_T")


def _get(obj: dict[str, object], key: str, kind: type[_T]) -> _T:
    value = obj.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Malformed(f"{key!r} is not {kind.__name__}: {value!r}")
    return value


def _read_jsonl(path: Path, violations: list[str]) -> list[tuple[int, dict[str, object]]]:
    rows: list[tuple[int, dict[str, object]]] = []
    if not path.exists():
        return rows
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            violations.append(f"{path.name} line {lineno}: malformed ({exc.msg})")
            continue
        if isinstance(obj, dict):
            rows.append((lineno, obj))
        else:
            violations.append(f"{path.name} line {lineno}: malformed (not an object)")
    return rows


def _read_messages(path: Path, violations: list[str]) -> list[_Message]:
    messages = []
    for lineno, obj in _read_jsonl(path, violations):
        try:
            messages.append(
                _Message(
                    entry=_get(obj, "entry", str),
                    tick=_get(obj, "tick", int),
                    id=_get(obj, "id", str),
                    node=_get(obj, "node", str),
                    epoch=_get(obj, "epoch", int),
                    recv=_get(obj, "recv", int),
                )
            )
        except _Malformed as exc:
            violations.append(f"{path.name} line {lineno}: malformed ({exc})")
    return sorted(messages, key=lambda m: m.recv)  # stable: file order among equal receive times


def _forced(detail: object) -> bool:
    return isinstance(detail, dict) and detail.get("clean") is False


def _nodes(detail: object) -> frozenset[str]:
    """A crash loop's incarnations (detail "nodes" of its end event)."""
    nodes = detail.get("nodes") if isinstance(detail, dict) else None
    if nodes is None:
        return frozenset()
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        raise _Malformed(f"'detail.nodes' is not a list of str: {nodes!r}")
    return frozenset(nodes)


def _read_faults(path: Path, window_end: int, violations: list[str], notes: list[str]) -> list[_Fault]:
    """Pair start and end events by (n, group, target), in time order."""
    events: list[tuple[int, int, str, str | None, str, str, bool, frozenset[str]]] = []
    for lineno, obj in _read_jsonl(path, violations):
        try:
            group = obj.get("group")
            if group is not None and not isinstance(group, str):
                raise _Malformed(f"'group' is not str or null: {group!r}")
            phase = _get(obj, "phase", str)
            if phase not in ("start", "end"):
                raise _Malformed(f"'phase' is {phase!r}")
            events.append(
                (
                    _get(obj, "t", int),
                    _get(obj, "n", int),
                    _get(obj, "kind", str),
                    group,
                    _get(obj, "target", str),
                    phase,
                    _forced(obj.get("detail")),
                    _nodes(obj.get("detail")),
                )
            )
        except _Malformed as exc:
            violations.append(f"{path.name} line {lineno}: malformed ({exc})")
    open_starts: dict[tuple[int, str, str | None, str], list[int]] = defaultdict(list)
    faults = []
    for t, n, kind, group, target, phase, forced, nodes in sorted(events, key=lambda e: e[0]):
        key = (n, kind, group, target)
        if phase == "start":
            open_starts[key].append(t)
        elif open_starts[key]:
            start = open_starts[key].pop(0)
            faults.append(
                _Fault(
                    n=n,
                    kind=kind,
                    group=group,
                    target=target,
                    start=start,
                    end=t,
                    forced=forced,
                    nodes=nodes | {target},
                )
            )
        else:
            notes.append(f"fault {n} ({kind} of {target}): an end without a start, ignored")
    for (n, kind, group, target), starts in open_starts.items():
        for start in starts:
            notes.append(f"fault {n} ({kind} of {target}): no end, taken to end at the window's end")
            end = max(start, window_end)
            faults.append(
                _Fault(n=n, kind=kind, group=group, target=target, start=start, end=end, nodes=frozenset({target}))
            )
    return sorted(faults, key=lambda f: (f.start, f.n))


@dataclass(frozen=True, kw_only=True)
class _Decisions:
    """From ``sync-<group>.jsonl``: every decided (entry, tick) with (broker time, epoch, node) of each decision."""

    decided: dict[tuple[str, int], list[tuple[int, int, str]]]
    by_entry: dict[str, list[int]]  # decided ticks per entry, sorted
    gaps: int
    zombies: int  # decide records ignored: their epoch was superseded when they landed
    claims: dict[int, int] = field(default_factory=dict)  # offset -> broker time of each claim of a live session
    moves: dict[str, list[tuple[int, str, str]]] = field(default_factory=dict)
    """Per entry, (broker time, "claim" or "release", node) of each by a live session, in log order; a release
    record without items (runs before they were logged) counts for every entry of its node."""
    ready: dict[str, list[int]] = field(default_factory=dict)  # node -> broker times of its ready records


def _read_decisions(path: Path, violations: list[str]) -> _Decisions | None:
    """Valid decisions only. A decide record of a session that had ended (said goodbye, or was voted out by an
    ``expire`` naming its latest record, or ended by a genesis), or whose epoch was already superseded, is a
    zombie's (its writer was cut off or paused; the protocol ignores it) and decided nothing. Epochs are claim
    offsets, so epoch ``e`` of an entry is superseded at offset ``o`` when a later claim ``c`` (``e < c < o``) of
    the entry was granted, which shows as decisions with epoch ``c``. (Sessions end as the protocol folds them,
    written here again from its rules, not from its code: docs/protocol.md.)"""
    if not path.exists():
        return None
    nodes: dict[str, str] = {}
    claims: dict[int, int] = {}
    moves: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    blind_releases: list[tuple[int, str]] = []  # releases logged without their items
    ready: dict[str, list[int]] = defaultdict(list)
    items: list[tuple[str, int, int, int, str]] = []  # entry, tick, epoch, broker time, node; in log order
    offsets: list[int] = []
    gaps = dead = 0
    live: dict[str, int] = {}  # session -> offset of its latest record
    ended: set[str] = set()
    quiet: tuple[int, int] | None = None  # (offset, broker time) of the first record after the latest busy one
    log_time = 0
    for lineno, obj in _read_jsonl(path, violations):
        try:
            if "gap" in obj:
                gaps += 1
                quiet = None  # records deleted unread: whatever they were
                continue
            offset, at, kind = _get(obj, "o", int), _get(obj, "t", int), obj.get("k")
            log_time = max(log_time, at)
            busy = kind is not None and kind != "genesis" and not (kind == "wait" and not obj.get("mark"))
            if not busy:
                if kind == "genesis" and quiet is not None and _get(obj, "from", int) == quiet[0]:
                    long_enough = min(_get(obj, "el", int), at - quiet[1]) >= GENESIS_QUIET_MS
                    if long_enough:
                        ended.update(live)
                        live.clear()
                        quiet = None
                        continue
                quiet = quiet or (offset, at)
                continue
            quiet = None
            session = _get(obj, "s", str)
            if kind == "hello":
                lease = obj.get("lease")
                fresh = session not in live and session not in ended
                if fresh and (not isinstance(lease, int) or lease <= MAX_LEASE_MS):
                    nodes[session] = _get(obj, "node", str)
                    live[session] = offset
                continue
            if session not in live:
                dead += kind == "decide"
                continue
            live[session] = offset
            if kind == "goodbye":
                del live[session]
                ended.add(session)
            elif kind == "expire":
                for target, last in _get(obj, "i", list):
                    if target != session and live.get(str(target)) == last:
                        del live[str(target)]
                        ended.add(str(target))
            elif kind == "claim":
                claims[offset] = at
                for entry in _get(obj, "e", list) if "e" in obj else []:
                    moves[str(entry)].append((at, "claim", nodes[session]))
            elif kind == "release":
                if "i" in obj:
                    for entry, _epoch in _get(obj, "i", list):
                        moves[str(entry)].append((at, "release", nodes[session]))
                else:
                    blind_releases.append((at, nodes[session]))
            elif kind == "ready":
                ready[nodes[session]].append(at)
            elif kind == "decide":
                node = nodes[session]
                for entry, epoch, tick in _get(obj, "i", list):
                    items.append((str(entry), int(tick), int(epoch), log_time, node))
                    offsets.append(offset)
        except (_Malformed, ValueError, TypeError) as exc:
            violations.append(f"{path.name} line {lineno}: malformed ({exc})")
    epochs: dict[str, list[int]] = defaultdict(list)  # epochs each entry was decided under, sorted
    for entry, _, epoch, _, _ in items:
        epochs[entry].append(epoch)
    for used in epochs.values():
        used.sort()
    decided: dict[tuple[str, int], list[tuple[int, int, str]]] = defaultdict(list)
    zombies = dead
    for (entry, tick, epoch, at, node), offset in zip(items, offsets, strict=True):
        used = epochs[entry]
        newer = used[bisect.bisect_right(used, epoch)] if bisect.bisect_right(used, epoch) < len(used) else None
        if newer is not None and newer < offset:
            zombies += 1
            continue
        decided[(entry, tick)].append((at, epoch, node))
    by_entry: dict[str, list[int]] = defaultdict(list)
    for entry, tick in decided:
        by_entry[entry].append(tick)
    for ticks in by_entry.values():
        ticks.sort()
    for entry in by_entry:
        for at, node in blind_releases:
            moves[entry].append((at, "release", node))
        moves[entry].sort()
    return _Decisions(
        decided=dict(decided),
        by_entry=dict(by_entry),
        gaps=gaps,
        zombies=zombies,
        claims=claims,
        moves=dict(moves),
        ready=dict(ready),
    )


def _read_replica_logs(logs: Path, group: str, violations: list[str]) -> tuple[dict[str, int], int]:
    """Each replica of ``group`` (``logs/<group>-r<slot>-<n>.log``) must log a kind of record it cannot use at most
    once, and its node's thread must never fail (an unexpected error restarts it from the topic: a record, or a
    fault, that it did not handle). Returns (problem code -> how many replicas logged it, log files read)."""
    kinds: dict[str, int] = defaultdict(int)
    files = sorted(logs.glob(f"{group}-r*.log")) if logs.is_dir() else []
    for path in files:
        text = path.read_bytes()
        codes = [m.group(1).decode("utf-8", "replace") for m in _SKIP_LINE.finditer(text)]
        twice = sorted({c for c in codes if codes.count(c) > 1})
        if twice:
            violations.append(f"logs/{path.name}: records it cannot use logged more than once per kind: {twice}")
        for code in set(codes):
            kinds[code] += 1
        errors = len(_NODE_ERROR_LINE.findall(text))
        if errors:
            violations.append(f"logs/{path.name}: the node's thread failed {errors} time(s) (unexpected error)")
    return dict(sorted(kinds.items())), len(files)


def _read_run(run_dir: Path, notes: list[str]) -> tuple[dict[str, object], tuple[int, int], list[_GroupConfig]]:
    try:
        run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        window = (int(run["window"]["start"]), int(run["window"]["end"]))
        groups = []
        for name, raw in run["groups"].items():
            periods = {}
            for entry, spec in raw["entries"].items():
                if isinstance(spec.get("every"), int | float) and spec["every"] > 0:
                    periods[entry] = round(spec["every"] * 1000)
                else:
                    notes.append(f"{name}: entry {entry} has no interval ('every'), not checked")
            groups.append(
                _GroupConfig(
                    name=name,
                    delivery=DeliveryMode(raw["delivery"]).value,
                    catchup=CatchUp(raw["catchup"]).value,
                    grace_ms=int(raw["grace"]),
                    lease_ms=int(raw["lease"]),
                    periods_ms=periods,
                    probation_ms=int(raw.get("probation", DEFAULT_PROBATION_MS)),
                )
            )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RunDirError(f"{run_dir / 'run.json'}: cannot be read ({type(exc).__name__}: {exc})") from exc
    return run, window, groups


# --- checking ----------------------------------------------------------------------------------------------------


def check(run_dir: Path) -> Report:
    """Check every group of the run in ``run_dir``; raises :class:`RunDirError` if run.json is unusable."""
    notes: list[str] = []
    run, (start, end), configs = _read_run(run_dir, notes)
    violations: list[str] = []
    faults = _read_faults(run_dir / "faults.jsonl", end, violations, notes)
    groups = {}
    for config in configs:
        file_violations: list[str] = []
        messages = _read_messages(run_dir / f"ticks-{config.name}.jsonl", file_violations)
        if not (run_dir / f"ticks-{config.name}.jsonl").exists():
            file_violations.append(f"ticks-{config.name}.jsonl is missing")
        group_faults = [f for f in faults if f.group in (config.name, None)]
        decisions = _read_decisions(run_dir / f"sync-{config.name}.jsonl", file_violations)
        if decisions is None:
            notes.append(f"{config.name}: no sync-{config.name}.jsonl: missing ticks judged by the heuristic rules")
        else:
            if decisions.gaps:
                notes.append(f"{config.name}: the sync log skipped records {decisions.gaps} time(s) (deleted unread)")
            if decisions.zombies:
                notes.append(
                    f"{config.name}: {decisions.zombies} decisions landed too late (session expired, epoch superseded)"
                )
        skipped, log_files = _read_replica_logs(run_dir / "logs", config.name, file_violations)
        result = _check_group(
            config,
            start=start,
            end=end,
            messages=messages,
            faults=group_faults,
            decisions=decisions,
            violations=file_violations,
            notes=notes,
        )
        result = dataclasses.replace(result, skipped_kinds=skipped, replica_logs=log_files)
        groups[config.name] = result
        violations.extend(f"{config.name}: {v}" for v in result.violations)

    def optional_int(key: str) -> int | None:
        value = run.get(key)
        return value if isinstance(value, int) else None

    return Report(
        run_dir=run_dir,
        seed=optional_int("seed"),
        window_start=start,
        window_end=end,
        faults_applied=optional_int("faults_applied"),
        faults_skipped=optional_int("faults_skipped"),
        groups=groups,
        violations=violations,
        notes=notes,
    )


def _examples(items: Sequence[object]) -> str:
    more = f", ... ({len(items)} in all)" if len(items) > _EXAMPLES else ""
    return ", ".join(str(t) for t in items[:_EXAMPLES]) + more


def _check_group(
    config: _GroupConfig,
    *,
    start: int,
    end: int,
    messages: list[_Message],
    faults: list[_Fault],
    decisions: _Decisions | None,
    violations: list[str],
    notes: list[str],
) -> GroupResult:
    by_entry: dict[str, list[_Message]] = defaultdict(list)  # in receive order
    unknown: dict[str, int] = defaultdict(int)
    for m in messages:
        if m.entry in config.periods_ms:
            by_entry[m.entry].append(m)
        else:
            unknown[m.entry] += 1
    if unknown:
        notes.append(f"{config.name}: messages of unknown entries: {dict(sorted(unknown.items()))}")
    outside = sum(1 for m in messages if m.entry in config.periods_ms and not start <= m.tick <= end)
    quiet_windows = _merge((f.start, f.end + config.lease_ms + QUIET_AFTER_MS) for f in faults)
    entries: dict[str, Counts] = {}
    lateness: list[int] = []
    quiet: list[int] = []
    missing: list[_Missing] = []
    for entry, period in config.periods_ms.items():
        counts, entry_lateness, entry_missing = _check_entry(
            config,
            entry=entry,
            period=period,
            start=start,
            end=end,
            messages=by_entry[entry],
            faults=faults,
            decisions=decisions,
            violations=violations,
        )
        entries[entry] = counts
        missing += entry_missing
        for tick, late in entry_lateness:
            lateness.append(late)
            if not _inside(quiet_windows, tick):
                quiet.append(late)
    fault_gaps = _failover(config, by_entry, faults)
    failover = {}
    for kind in sorted({g.kind for g in fault_gaps}):
        of_kind = [g for g in fault_gaps if g.kind == kind]
        failover[kind] = FailoverStats(
            faults=len(of_kind),
            gaps=Distribution.of(g.gap_ms for g in of_kind if g.gap_ms is not None),
            kept=sum(g.kept for g in of_kind),
            owned_nothing=sum(1 for g in of_kind if g.owned == 0),
            unrecovered=sum(g.unrecovered for g in of_kind),
        )
    fault_counts: dict[str, int] = defaultdict(int)
    for kind, _n in sorted({(f.kind, f.n) for f in faults}):
        fault_counts[kind] += 1
    return GroupResult(
        name=config.name,
        delivery=config.delivery,
        catchup=config.catchup,
        grace_ms=config.grace_ms,
        lease_ms=config.lease_ms,
        entries=entries,
        total=sum(entries.values(), Counts()),
        unknown_entry_messages=sum(unknown.values()),
        outside_window_messages=outside,
        lateness_all=Distribution.of(lateness),
        lateness_quiet=Distribution.of(quiet),
        failover=failover,
        fault_gaps=fault_gaps,
        fault_counts=dict(fault_counts),
        near=_near(config, faults, missing),
        violations=violations,
        lateness_ms=lateness,
        zombie_decisions=None if decisions is None else decisions.zombies,
    )


def _check_entry(
    config: _GroupConfig,
    *,
    entry: str,
    period: int,
    start: int,
    end: int,
    messages: list[_Message],
    faults: list[_Fault],
    decisions: _Decisions | None,
    violations: list[str],
) -> tuple[Counts, list[tuple[int, int]], list[_Missing]]:
    """Counts of one entry, (tick, lateness) of each received tick in the window, and its missing ticks."""
    if not messages:
        never = math.ceil((end - start) / period)
        violations.append(f"entry {entry} never dispatched ({never} ticks missing)")
        return Counts(expected=never, missing_not_allowed=never), [], []
    phase = messages[0].tick % period
    copies: dict[int, list[_Message]] = defaultdict(list)  # on-grid ticks of the whole log, copies in receive order
    off_grid = []
    for m in messages:
        if m.tick % period == phase:
            copies[m.tick].append(m)
        elif start <= m.tick <= end:
            off_grid.append(m.tick)
    if off_grid:
        violations.append(f"entry {entry}: off-grid ticks (period {period} ms, phase {phase}): {_examples(off_grid)}")
    received = sorted(copies)
    first = start + (phase - start) % period
    expected = range(first, end + 1, period)

    once = dup_ticks = dup_identical = dup_bad = extra = 0
    bad_dups: list[str] = []
    for tick in received:
        if not start <= tick <= end:
            continue
        n = len(copies[tick])
        if n == 1:
            once += 1
            continue
        dup_ticks += 1
        extra += n - 1
        identical = len({m.id for m in copies[tick]}) == 1
        dup_identical += identical
        explained = _around(faults, tick, config.lease_ms, {m.node for m in copies[tick]})
        if config.delivery == "at-most-once" or not identical or not explained:
            dup_bad += 1
            nodes = ", ".join(m.node for m in copies[tick])
            why = "" if explained else ", no fault of those nodes or the brokers around it"
            bad_dups.append(f"{tick} ({n} copies{', one task id' if identical else ''}; nodes {nodes}{why})")
    if bad_dups:
        violations.append(f"entry {entry}: duplicates not allowed in {config.delivery}: {_examples(bad_dups)}")

    unclean = [f for f in faults if f.unclean]
    missing: list[_Missing] = []
    for tick in expected:
        if tick in copies:
            continue
        i = bisect.bisect_right(received, tick)
        owner = copies[received[i - 1]][0].node if i > 0 else None
        if decisions is not None:
            # The node that decided the entry's latest tick before this one owned it then: the sender of the
            # previous received tick may be the next owner re-sending it (at-least-once), not the owner.
            owner = _decider_before(decisions, entry, tick) or owner
            verdict = _judge_missing(config, entry, tick, decisions, unclean)
        else:
            verdict = _judge_missing_heuristic(config, tick, i, received, copies, unclean)
        charged = _charged(config, tick, owner, faults)
        moving = charged is not None and decisions is not None and _moving_to(decisions, entry, tick, charged, config)
        if moving:
            charged = None  # the entry was moving to the faulted replica: its own cost
        if charged is not None:
            verdict = "lost"
        missing.append(_Missing(entry=entry, tick=tick, owner=owner, verdict=verdict, charged=charged, moving=moving))
    lost = [m.tick for m in missing if m.verdict == "lost" and m.charged is None]
    if lost:
        violations.append(f"entry {entry}: missing ticks, a loss outside the policy: {_examples(lost)}")
    charged_to = [
        f"{m.tick} ({m.charged.kind} #{m.charged.n} of {m.charged.target}; owner {m.owner})"
        for m in missing
        if m.charged is not None
    ]
    if charged_to:
        violations.append(
            f"entry {entry}: ticks of a replica that no fault hit, missing near a fault that must cost them nothing "
            f"(and no other fault of their owner around them): {_examples(charged_to)}"
        )
    missing_once = sum(1 for m in missing if m.verdict == "once")
    missing_amo = sum(1 for m in missing if m.verdict == "at-most-once")
    counts = Counts(
        expected=len(expected),
        once=once,
        duplicate_ticks=dup_ticks,
        duplicate_copies=extra,
        duplicate_ticks_id_identical=dup_identical,
        duplicate_ticks_violating=dup_bad,
        missing_once=missing_once,
        missing_at_most_once=missing_amo,
        missing_not_allowed=sum(1 for m in missing if m.verdict == "lost"),
        missing_near_no_loss_faults=len(charged_to),
        off_grid=len(off_grid),
    )
    lateness = [(t, copies[t][0].recv - t) for t in received if start <= t <= end]
    return counts, lateness, missing


@dataclass(frozen=True, kw_only=True)
class _Missing:
    entry: str
    tick: int
    owner: str | None  # who decided the entry's previous decided tick (else sent its previous received one)
    verdict: str  # "once", "at-most-once" or "lost"
    charged: _Fault | None  # the no-loss fault it is charged to (then verdict is "lost")
    moving: bool = False  # the entry was moving to the replica a no-loss fault hit (see _moving_to)


def _judge_missing_heuristic(  # noqa: PLR0917 - the tick and its place among the received ones
    config: _GroupConfig,
    tick: int,
    i: int,
    received: list[int],
    copies: dict[int, list[_Message]],
    unclean: list[_Fault],
) -> str:
    """Without a sync log: why ``tick`` may be missing, from what arrived (``received[i]`` is its successor)."""
    if config.catchup == "once" and i < len(received):
        successor = copies[received[i]][0]
        previous = copies[received[i - 1]][0] if i > 0 else None
        # Planned afresh: a new claim (epoch) or the owner itself past the grace.
        fresh = previous is None or previous.epoch != successor.epoch
        if (fresh or successor.recv - successor.tick > config.grace_ms) and successor.recv - tick > config.grace_ms:
            return "once"
    if config.delivery == "at-most-once":
        owner = {copies[received[i - 1]][0].node} if i > 0 else None
        if _around(unclean, tick, config.lease_ms, owner):
            return "at-most-once"
    return "lost"


def _around(faults: Iterable[_Fault], tick: int, lease_ms: int, nodes: Iterable[str] | None) -> bool:
    """Whether one of ``faults`` (not one that excuses nothing) hit one of ``nodes`` (any node if None; a broker
    fault or a DeleteRecords hits every node), with ``tick`` between 1 s before its start and lease + 1 s after its
    end."""
    for f in faults:
        if f.kind in EXCUSE_NOTHING_KINDS:
            continue
        lo, hi = f.window(lease_ms)
        if lo <= tick <= hi and (nodes is None or f.kind in GROUP_KINDS or any(f.hits(n) for n in nodes)):
            return True
    return False


def _no_loss_extra_ms(config: _GroupConfig, f: _Fault) -> int:
    """How much longer than lease + 1 s after its end a no-loss fault answers for missing ticks: a deaf or crash-
    looping replica's session may say ``ready`` a probation after its last hello, then take its share."""
    return config.probation_ms if f.kind in ("deaf", "crash-loop") else 0


def _decider_before(decisions: _Decisions, entry: str, tick: int) -> str | None:
    """The node whose decision of ``entry``'s latest tick before ``tick`` came first in the log."""
    ticks = decisions.by_entry.get(entry, [])
    i = bisect.bisect_left(ticks, tick)
    if i == 0:
        return None
    return decisions.decided[(entry, ticks[i - 1])][0][2]


def _moving_to(decisions: _Decisions, entry: str, tick: int, fault: _Fault, config: _GroupConfig) -> bool:
    """Whether ``entry`` was moving to a replica ``fault`` hit when ``tick`` fell due: that replica had claimed it
    (its latest claim before the tick), or its owner had released it and nobody had claimed it since, within
    lease + 1 s after the hit replica said ``ready`` (the release was for it: a rebalance towards a new candidate).
    Either way the entry was the hit replica's, or on its way to it, and the tick answers to that fault."""
    moves = [m for m in decisions.moves.get(entry, []) if m[0] <= tick]
    if not moves:
        return False
    at, what, node = moves[-1]
    if what == "claim":
        return fault.hits(node)
    bound = config.lease_ms + AMO_AFTER_MS
    return any(
        ready <= at <= ready + bound and tick - at <= bound
        for target, times in decisions.ready.items()
        if fault.hits(target)
        for ready in times
    )


def _charged(config: _GroupConfig, tick: int, owner: str | None, faults: list[_Fault]) -> _Fault | None:
    """The no-loss fault (poison, deaf, crash-loop) a missing tick is charged to, if any: the tick lies in the
    fault's window, its owner is not the fault's target, and no other fault (that excuses anything) hit its owner,
    or the whole group, around it."""
    for f in faults:
        if f.kind not in NO_LOSS_KINDS or f.hits(owner):
            continue
        lo, hi = f.window(config.lease_ms, _no_loss_extra_ms(config, f))
        if not lo <= tick <= hi:
            continue
        others = [g for g in faults if g.n != f.n or g.kind != f.kind]
        if not _around(others, tick, config.lease_ms, [owner] if owner is not None else []):
            return f
    return None


def _judge_missing(config: _GroupConfig, entry: str, tick: int, decisions: _Decisions, unclean: list[_Fault]) -> str:
    """Why ``tick`` of ``entry`` may be missing, from the sync topic's decisions: "once", "at-most-once" or "lost".

    Never decided: 'once' allows it when the entry's next decided tick was decided (broker time) more than the grace
    after ``tick``, so that ``tick`` was overdue past the grace when its owner planned. Decided but never published:
    at-most-once allows it when an unclean fault hit the deciding node (or the brokers) around the tick, or while
    the decision was being published: decided (broker time) at most 1 s before the fault began and not after it
    ended (a tick decided late, after an outage, by a node killed or stopped within a second of deciding it).
    """
    decided = decisions.decided.get((entry, tick))
    if decided is None:
        if config.catchup != "once":
            return "lost"
        later = decisions.by_entry.get(entry, [])
        j = bisect.bisect_right(later, tick)
        if j < len(later) and tick < min(at for at, _, _ in decisions.decided[(entry, later[j])]) - config.grace_ms:
            return "once"
        return "lost"
    if config.delivery != "at-most-once":
        return "lost"
    for at, epoch, node in decided:
        for f in unclean:
            lo, hi = f.window(config.lease_ms)
            if not ((lo <= tick <= hi or lo <= at <= f.end) and f.hits(node)):
                continue
            # A deaf replica answers only for the entries it owned before it went deaf: one it was granted while it
            # could not read was taken from someone (it must never take entries it cannot run).
            if f.kind == "deaf" and not decisions.claims.get(epoch, f.start) < f.start:
                continue
            return "at-most-once"
    return "lost"


def _near(config: _GroupConfig, faults: list[_Fault], missing: list[_Missing]) -> dict[str, NearStats]:
    stats = {}
    for kind in sorted({f.kind for f in faults}):
        of_kind = [f for f in faults if f.kind == kind]
        near = healthy = unexplained = 0
        for m in missing:
            covering = [
                f
                for f in of_kind
                if f.window(config.lease_ms, _no_loss_extra_ms(config, f))[0]
                <= m.tick
                <= f.window(config.lease_ms, _no_loss_extra_ms(config, f))[1]
            ]
            if not covering:
                continue
            near += 1
            if m.moving or any(f.hits(m.owner) for f in covering):
                continue
            healthy += 1
            ns = {f.n for f in covering}
            others = [g for g in faults if not (g.kind == kind and g.n in ns)]
            unexplained += not _around(others, m.tick, config.lease_ms, [m.owner] if m.owner is not None else [])
        stats[kind] = NearStats(
            faults=len({f.n for f in of_kind}), missing=near, healthy=healthy, unexplained=unexplained
        )
    return stats


def _failover(config: _GroupConfig, by_entry: dict[str, list[_Message]], faults: list[_Fault]) -> list[FaultGap]:
    recvs = {entry: [m.recv for m in messages] for entry, messages in by_entry.items()}
    # Only the entries of the shortest period: a longer one adds its own wait for the next tick to the gap.
    shortest = min(config.periods_ms.values(), default=0)
    by_entry = {e: ms for e, ms in by_entry.items() if config.periods_ms.get(e) == shortest}
    gaps = []
    for f in faults:
        if f.kind in SILENCE_KINDS:
            gaps.append(_silence(f, config.lease_ms, recvs, by_entry))
            continue
        if f.kind not in FAILOVER_KINDS and f.kind != "broker":
            continue
        owned = kept = unrecovered = 0
        entry_gaps = []
        for entry, messages in by_entry.items():
            i = bisect.bisect_right(recvs[entry], f.start)  # messages[i] is the first received after the start
            if f.kind != "broker" and (i == 0 or messages[i - 1].node != f.target):
                continue
            owned += 1
            if f.kind == "broker":
                if i == len(messages):
                    unrecovered += 1
                else:
                    entry_gaps.append(messages[i].recv - f.start)
                continue
            # The first dispatch by another node; the target's own messages before it are ticks it had already
            # decided (a clean stop publishes them) or, after the fault's end, its return: then it kept the entry.
            other = next((m for m in messages[i:] if m.node != f.target), None)
            back = any(
                m.node == f.target and m.recv > f.end for m in messages[i:] if other is None or m.recv < other.recv
            )
            if back:
                kept += 1
            elif other is None:
                unrecovered += 1
            else:
                entry_gaps.append(other.recv - f.start)
        gaps.append(
            FaultGap(
                n=f.n,
                kind=f.kind,
                target=f.target,
                start=f.start,
                end=f.end,
                owned=owned,
                kept=kept,
                unrecovered=unrecovered,
                gap_ms=max(entry_gaps) if entry_gaps else None,
            )
        )
    return gaps


def _silence(f: _Fault, lease_ms: int, recvs: dict[str, list[int]], by_entry: dict[str, list[_Message]]) -> FaultGap:
    """For a fault that moves nobody's entries: the longest time between two dispatches (receive times) of one entry
    that spans part of [start, end + lease + 1 s] (for an entry every second, 1 s means no pause at all)."""
    lo, hi = f.start, f.end + lease_ms + AMO_AFTER_MS
    silences = []
    unrecovered = 0
    for entry in by_entry:
        r = recvs[entry]
        i, j = bisect.bisect_right(r, lo), bisect.bisect_right(r, hi)
        if i == len(r):
            unrecovered += 1
        points = r[max(0, i - 1) : j + 1]
        silences += [b - a for a, b in itertools.pairwise(points)]
    return FaultGap(
        n=f.n,
        kind=f.kind,
        target=f.target,
        start=f.start,
        end=f.end,
        owned=len(by_entry),
        kept=0,
        unrecovered=unrecovered,
        gap_ms=max(silences) if silences else None,
    )


def _merge(windows: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(windows):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _inside(merged: list[tuple[int, int]], t: int) -> bool:
    i = bisect.bisect_right(merged, (t, math.inf))
    return i > 0 and merged[i - 1][0] <= t <= merged[i - 1][1]


# --- output ------------------------------------------------------------------------------------------------------


def to_json(report: Report) -> dict[str, object]:
    """The report as JSON-ready data (raw lateness samples left out)."""

    def plain(obj: object) -> object:
        if isinstance(obj, Distribution | Counts | FaultGap | FailoverStats | NearStats):
            return {f.name: plain(getattr(obj, f.name)) for f in fields(obj)}
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [plain(v) for v in obj]
        return obj

    groups = {
        name: {f.name: plain(getattr(g, f.name)) for f in fields(g) if f.name != "lateness_ms"} | {"ok": g.ok}
        for name, g in report.groups.items()
    }
    return {
        "run_dir": str(report.run_dir),
        "ok": report.ok,
        "seed": report.seed,
        "window": {"start": report.window_start, "end": report.window_end},
        "faults_applied": report.faults_applied,
        "faults_skipped": report.faults_skipped,
        "groups": groups,
        "violations": report.violations,
        "notes": report.notes,
    }


def _ms(value: int | None) -> str:
    return "-" if value is None else str(value)


def render_text(report: Report, max_violations: int = 20) -> str:
    """A plain-text summary for the console."""
    seconds = (report.window_end - report.window_start) / 1000
    lines = [f"{report.run_dir}: seed {report.seed}, window {seconds:g} s: {'OK' if report.ok else 'FAILED'}"]
    for g in report.groups.values():
        t = g.total
        lines += [
            "",
            f"[{g.name}] {g.delivery}, catch-up {g.catchup}, lease {g.lease_ms} ms: {'ok' if g.ok else 'FAILED'}",
            f"  ticks expected {t.expected}, once {t.once}, duplicated {t.duplicate_ticks} "
            f"(+{t.duplicate_copies} copies; {t.duplicate_ticks_id_identical} id-identical, "
            f"{t.duplicate_ticks_violating} not allowed)",
            f"  missing: allowed by 'once' {t.missing_once}, by at-most-once {t.missing_at_most_once}, "
            f"NOT allowed {t.missing_not_allowed} (near a fault that must cost nothing: "
            f"{t.missing_near_no_loss_faults}); off-grid {t.off_grid}",
            f"  messages ignored: {g.outside_window_messages} outside the window, "
            f"{g.unknown_entry_messages} of unknown entries",
        ]
        for label, d in (("all", g.lateness_all), ("quiet", g.lateness_quiet)):
            lines.append(
                f"  lateness {label:<5} n={d.count} p50 {_ms(d.p50)} p90 {_ms(d.p90)} p99 {_ms(d.p99)} "
                f"max {_ms(d.max)} ms"
            )
        faults = ", ".join(f"{kind} {n}" for kind, n in sorted(g.fault_counts.items())) or "none"
        lines.append(f"  faults: {faults}")
        for kind, s in g.failover.items():
            lines.append(
                f"  failover {kind:<10} faults {s.faults}, gap p50 {_ms(s.gaps.p50)} p99 {_ms(s.gaps.p99)} "
                f"max {_ms(s.gaps.max)} ms; kept {s.kept}, owned nothing {s.owned_nothing}"
                + (f", never resumed {s.unrecovered}" if s.unrecovered else "")
            )
        for kind, near in g.near.items():
            lines.append(
                f"  missing near {kind:<14} {near.missing} (of replicas it did not hit {near.healthy}, "
                f"no other fault of theirs around {near.unexplained})"
            )
        skipped = ", ".join(f"{code} {n}" for code, n in g.skipped_kinds.items()) or "none"
        lines.append(f"  records skipped (kind: replicas that logged it, of {g.replica_logs}): {skipped}")
    if report.notes:
        lines += ["", "notes:"] + [f"  {n}" for n in report.notes]
    if report.violations:
        lines += ["", f"violations ({len(report.violations)}):"]
        lines += [f"  {v}" for v in report.violations[:max_violations]]
        if len(report.violations) > max_violations:
            lines.append(f"  ... and {len(report.violations) - max_violations} more (see check.json)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``check RUN``: print the summary, write RUN/check.json; 1 when a rule is violated, 2 when RUN is unusable."""
    parser = argparse.ArgumentParser(prog="python -m proof.chaos check", description="Check a chaos run directory.")
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        report = check(args.run_dir)
    except RunDirError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(render_text(report))
    (args.run_dir / "check.json").write_text(json.dumps(to_json(report), indent=2) + "\n", encoding="utf-8")
    return 0 if report.ok else 1
