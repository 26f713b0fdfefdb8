"""The chaos harness: real ``celery beat`` replicas on a real 3-broker Kafka cluster, a real Celery broker (Redis),
a recorder, and a fault plan drawn from a seed.

One run holds one or more *groups*, each a separate deployment (its own topic, queue, replicas and settings, e.g.
one per delivery mode) sharing the Kafka cluster and the Redis. Every replica fault of the plan is applied to
each group at once (each group's own target); a broker fault hits every group. The plan is printed and written
to ``plan.json``; the same seed gives the same plan. What a fault hits is chosen when it is applied ("the
owner of entry e07", "the third live replica"), so a replay meets the same faults, not necessarily the same
process states: real processes are not deterministic.

Fault kinds (see ``KINDS``): SIGKILL and restart, SIGTERM and restart, SIGSTOP longer than the lease, a network
partition from Kafka (per-replica TCP proxies, :mod:`.proxy`), SIGKILL and restart of a broker (often the leader
of the sync topic's partition), a restart with the wall clock minutes off, scale up, scale down, a rolling
restart of every replica, and the faults that issue 12 reproduced against real processes: a burst of poison records
written straight to the sync topic (:mod:`.poison`), a replica that can write but not read (``deaf``: only its
consumer's proxies are cut; every replica has separate proxy slots for its consumer and for its other clients), a
joiner that is SIGKILLed soon after its hello, again and again (``crash-loop``, before its probation ends), and an
operator's ``DeleteRecords`` of the sync topic at a random offset (``delete-records``).

Everything lands in the run directory: ``run.json``, ``plan.json``, ``faults.jsonl``, ``ticks-<group>.jsonl``
and ``logs/``; :mod:`.checker` reads it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

import celery_kafka_beat
from celery_kafka_beat.protocol.node import NodeSettings
from celery_kafka_beat.testing.devkafka import KafkaCluster
from celery_kafka_beat.testing.devredis import LocalRedis

from .poison import poison_values
from .proxy import Partitioner
from .recorder import Recorder, SyncLog

__all__ = ["KINDS", "GroupSpec", "Harness", "PlannedFault", "make_plan"]

log = logging.getLogger(__name__)

PACKAGE_PARENT = Path(celery_kafka_beat.__file__).resolve().parent.parent
SCHEDULER = "proof.chaos.app:ChaosScheduler"  # KafkaScheduler, its consumer on its own proxies

#: Fault kinds and their weight in the random part of a plan (every kind also comes once, first, in random order).
KINDS: dict[str, int] = {
    "kill": 3,
    "term": 2,
    "stop": 2,
    "partition": 3,
    "broker": 2,
    "clock": 1,
    "scale-up": 1,
    "scale-down": 1,
    "rolling": 1,
    "poison": 2,
    "deaf": 2,
    "crash-loop": 1,
    "delete-records": 1,
}
MAX_REPLICAS = 5  # per group; each replica slot has two proxy slots (consumer, other clients)
MIN_REPLICAS = 2  # scale-down stops here
INITIAL_REPLICAS = 3
ROLLING_PAUSE_S = 1.0  # between the steps of a rolling restart (part of the fault, not a synchronisation)
STOP_TIMEOUT_S = 20.0
#: crash-loop: an incarnation is SIGKILLed CRASH_AFTER_S after its start, and never before LIVE_MARGIN_S after its
#: hello was read back (its log says "is live"), so that every incarnation does say hello: far less than the
#: probation (5 s). If no hello comes within CRASH_LIVE_TIMEOUT_S, it is killed anyway (and the log says so).
CRASH_AFTER_S = (1.0, 2.0)
LIVE_MARGIN_S = (0.3, 1.0)
CRASH_LIVE_TIMEOUT_S = 8.0
LIVE_LINE = b" is live at offset "
#: Kafka's default (9 s) keeps a crashed broker in the ISR that long, and acks=all writes (every heartbeat) wait
#: for it: every lease ends. 4 s is a common low-latency setting; docs/reliability.md says which was used.
BROKER_SESSION_TIMEOUT_MS = 4000  # a SIGTERMed replica that takes longer is SIGKILLed (and that is reported)


@dataclass(frozen=True)
class GroupSpec:
    """One deployment: its name (prefix of its node names), delivery mode, catch-up policy and entries."""

    name: str
    delivery: str
    catchup: str
    entries: dict[str, float]  # entry -> interval in seconds
    lease: float = 3.0
    decision_lead: float = 0.25
    probation: float = 5.0

    def conf(self) -> dict[str, Any]:
        return {
            "kafka_beat_delivery": self.delivery,
            "kafka_beat_catchup": self.catchup,
            "kafka_beat_lease": self.lease,
            "kafka_beat_decision_lead": self.decision_lead,
            "kafka_beat_probation": self.probation,
            "kafka_beat_topic_replication_factor": 3,
            "kafka_beat_topic_min_insync_replicas": 2,
        }


def default_entries(count: int = 16) -> dict[str, float]:
    """``count`` entries every second, plus two every 2 s and one every 5 s."""
    entries = {f"e{i:02d}": 1.0 for i in range(count)}
    entries |= {"s00": 2.0, "s01": 2.0, "f00": 5.0}
    return entries


@dataclass(frozen=True)
class PlannedFault:
    n: int
    at: float  # seconds after the fault phase starts
    kind: str
    owner: bool  # target the owner of an entry (else a replica by position)
    pick: int  # which entry / replica / broker, modulo what exists when it is applied
    duration: float  # seconds until the end action (restart, SIGCONT, heal)
    leader: bool = False  # broker faults: the partition leader of the sync topic
    offset_s: int = 0  # clock faults


def make_plan(seed: int, seconds: float, lease: float, kinds: Sequence[str] = tuple(KINDS)) -> list[PlannedFault]:
    """The fault plan of a run: every kind once (random order, even past ``seconds``), then random kinds by
    weight until ``seconds``; one fault every 4-10 s."""
    rng = random.Random(seed)
    first = list(kinds)
    rng.shuffle(first)
    weighted = [k for k in kinds for _ in range(KINDS[k])]
    plan: list[PlannedFault] = []
    at = 3.0
    while first or at < seconds:
        kind = first.pop(0) if first else rng.choice(weighted)
        duration = {
            "kill": rng.uniform(0.5, 2 * lease),
            "term": rng.uniform(0.5, lease),
            "stop": rng.uniform(1.3, 3.0) * lease,
            "partition": rng.uniform(0.5, 3.0) * lease,
            "broker": rng.uniform(2.0, 10.0),
            "deaf": rng.uniform(2.0, 6.0) * lease,
            "crash-loop": rng.uniform(20.0, 40.0),
        }.get(kind, 0.0)
        plan.append(
            PlannedFault(
                n=len(plan) + 1,
                at=round(at, 3),
                kind=kind,
                owner=rng.random() < 0.7,
                pick=rng.randrange(1 << 30),
                duration=round(duration, 3),
                leader=kind == "broker" and rng.random() < 0.6,
                offset_s=rng.choice((-1, 1)) * rng.randint(60, 900) if kind == "clock" else 0,
            )
        )
        at += rng.uniform(4.0, 10.0)
    return plan


def now_ms() -> int:
    return round(time.time() * 1000)


@dataclass
class Replica:
    group: str
    slot: int
    incarnation: int
    offset_s: int
    proc: subprocess.Popen[bytes]
    busy: bool = False  # under a fault (or being stopped): not a target for another one
    expected_exit: bool = False

    @property
    def name(self) -> str:
        return f"{self.group}-r{self.slot}-{self.incarnation}"


@dataclass
class Group:
    spec: GroupSpec
    index: int
    topic: str
    queue: str
    recorder: Recorder
    sync: SyncLog
    replicas: dict[int, Replica] = field(default_factory=dict)  # by slot
    reserved: set[int] = field(default_factory=set)  # slots of crash loops (between incarnations too)
    incarnations: int = 0


class Harness:
    """Runs one chaos run into ``run_dir``; :meth:`run` returns once everything is stopped."""

    def __init__(  # noqa: PLR0917 - run_dir, seed, seconds and groups define a run
        self,
        run_dir: Path,
        seed: int,
        fault_seconds: float,
        groups: Sequence[GroupSpec],
        kinds: Sequence[str] = tuple(KINDS),
        echo: Callable[[str], None] = print,
    ) -> None:
        self.run_dir = run_dir
        self.seed = seed
        self.fault_seconds = fault_seconds
        self.specs = list(groups)
        self.kinds = list(kinds)
        self.echo = echo
        self.plan = make_plan(seed, fault_seconds, min(g.lease for g in groups), self.kinds)
        self.rng = random.Random(seed + 1)  # runtime choices only (never changes the plan)
        self.groups: list[Group] = []
        self.unexpected_exits: list[str] = []
        self.applied = 0
        self.skipped: list[str] = []
        self._lock = threading.RLock()
        self._faults_out: IO[str] | None = None
        self._cluster: KafkaCluster | None = None
        self._partitioner: Partitioner | None = None
        self._redis_url = ""
        self._broker_busy = False
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    # -- the run ---------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise ValueError(f"run directory {self.run_dir} is not empty: logs of two runs would mix; choose another")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(exist_ok=True)
        (self.run_dir / "plan.json").write_text(json.dumps([asdict(f) for f in self.plan], indent=1))
        self.echo(f"chaos: seed {self.seed}, {len(self.plan)} faults planned over {self.fault_seconds:.0f} s:")
        for fault in self.plan:
            self.echo(f"  #{fault.n:<4} +{fault.at:7.1f} s  {self._describe(fault)}")
        started = now_ms()
        with (
            LocalRedis() as redis,
            KafkaCluster(
                3,
                client_listeners=2 * self._slots,
                broker_session_timeout_ms=BROKER_SESSION_TIMEOUT_MS,
                extra_props={"num.network.threads": 1},
            ) as cluster,
        ):
            self._cluster, self._redis_url = cluster, redis.url
            self._partitioner = Partitioner()
            self._faults_out = (self.run_dir / "faults.jsonl").open("a", encoding="utf-8")
            try:
                return self._run(started)
            finally:
                self._teardown()

    def _run(self, started: int) -> dict[str, Any]:
        cluster, partitioner = self._cluster, self._partitioner
        assert cluster is not None
        assert partitioner is not None
        for k in range(2 * self._slots):
            for i in range(3):
                listen, advertised = cluster.client_listener(i, k)
                partitioner.add(k, advertised, listen)
        tag = uuid.uuid4().hex[:6]
        for index, spec in enumerate(self.specs):
            queue = f"chaos-{spec.name}-{tag}"
            recorder = Recorder(self._redis_url, queue, self.run_dir / f"ticks-{spec.name}.jsonl")
            recorder.start()
            topic = f"ckb-chaos-{spec.name}-{tag}"
            sync = SyncLog(cluster.bootstrap_servers, topic, self.run_dir / f"sync-{spec.name}.jsonl")
            sync.start()
            self.groups.append(Group(spec, index, topic, queue, recorder, sync))
        for group in self.groups:
            for slot in range(INITIAL_REPLICAS):
                self._start_replica(group, slot)
        self._await_first_ticks(timeout=120)
        window_start = now_ms() + 1000
        self.echo(f"chaos: every entry dispatched; faults start (window from {window_start})")
        self._run_plan()
        self.echo("chaos: fault phase over; waiting for the faults still running to end")
        for thread in self._threads:
            thread.join(120)
        window_end = now_ms() + 2000
        settled = self._settle(window_start, window_end, timeout=90)
        self.echo(f"chaos: settled={settled}; stopping")
        self._stop_all()
        summary: dict[str, Any] = {
            "seed": self.seed,
            "started": started,
            "command": " ".join(sys.argv),
            "window": {"start": window_start, "end": window_end},
            "groups": {
                g.spec.name: {
                    "delivery": g.spec.delivery,
                    "catchup": g.spec.catchup,
                    "grace": NodeSettings(node="-").catchup_grace_ms,
                    "lease": round(g.spec.lease * 1000),
                    "decision_lead": round(g.spec.decision_lead * 1000),
                    "probation": round(g.spec.probation * 1000),
                    "entries": {e: {"every": every} for e, every in g.spec.entries.items()},
                    "topic": g.topic,
                }
                for g in self.groups
            },
            "faults_planned": len(self.plan),
            "faults_applied": self.applied,
            "faults_skipped": len(self.skipped),
            "skipped": self.skipped,
            "unexpected_exits": self.unexpected_exits,
            "settled": settled,
        }
        (self.run_dir / "run.json").write_text(json.dumps(summary, indent=1))
        return summary

    def _teardown(self) -> None:
        self._stopping.set()  # fault threads end their waits and start no replica any more
        for thread in self._threads:
            thread.join(STOP_TIMEOUT_S)
        self._stop_all()
        for group in self.groups:
            group.recorder.stop()
            group.sync.stop()
        if self._partitioner is not None:
            self._partitioner.close()
        if self._faults_out is not None:
            self._faults_out.close()

    def _await_first_ticks(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            waiting = [
                f"{g.spec.name}/{e}" for g in self.groups for e in g.spec.entries if e not in g.recorder.first_ticks()
            ]
            if not waiting:
                return
            self._check_exits()
            if time.monotonic() > deadline:
                raise RuntimeError(f"no tick of {waiting[:5]} (of {len(waiting)}) within {timeout:.0f} s of start")
            time.sleep(0.2)

    def _settle(self, start: int, end: int, timeout: float) -> bool:
        """Wait until every entry has a tick past ``end`` (caught up) and groups that may lose nothing (at-least-once
        with catch-up ``all``) have every tick in [start, end]; False after ``timeout`` (the checker judges)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._settled(g, start, end) for g in self.groups):
                return True
            self._check_exits()
            time.sleep(0.5)
        return False

    def _settled(self, group: Group, start: int, end: int) -> bool:
        latest = group.recorder.latest_ticks()
        if any(latest.get(entry, 0) < end for entry in group.spec.entries):
            return False
        if group.spec.delivery == "at-least-once" and group.spec.catchup == "all":
            return group.recorder.missing(self._grids(group), start, end) == 0
        return True

    @staticmethod
    def _grids(group: Group) -> dict[str, tuple[int, int]]:
        firsts = group.recorder.first_ticks()
        return {e: (firsts[e], round(every * 1000)) for e, every in group.spec.entries.items() if e in firsts}

    def _run_plan(self) -> None:
        begin = time.monotonic()
        for fault in self.plan:
            while (left := begin + fault.at - time.monotonic()) > 0:
                self._check_exits()
                time.sleep(min(left, 0.2))
            self.echo(f"chaos: #{fault.n} {self._describe(fault)}")
            if fault.kind == "broker":
                self._spawn(self._broker_fault, fault)
            else:
                for group in self.groups:
                    self._spawn(self._replica_fault, fault, group)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        def guarded() -> None:
            try:
                target(*args)
            except Exception:
                log.exception("fault %s failed", args[0])
                self._skip(args[0], args[1] if len(args) > 1 else None, "failed: see the harness log")

        thread = threading.Thread(target=guarded, daemon=True)
        self._threads.append(thread)
        thread.start()

    # -- replicas --------------------------------------------------------------------------------------------

    @property
    def _slots(self) -> int:
        """Replica slots of the whole run; proxy slot ``k`` carries the producer and admin client of replica slot
        ``k``, proxy slot ``_slots + k`` its consumer."""
        return len(self.specs) * MAX_REPLICAS

    def _proxy_slots(self, group: Group, slot: int) -> tuple[int, int]:
        """(other clients, consumer) proxy slots of a replica slot."""
        k = group.index * MAX_REPLICAS + slot
        return k, self._slots + k

    def _free_slot(self, group: Group) -> int | None:
        return min(set(range(MAX_REPLICAS)) - set(group.replicas) - group.reserved, default=None)

    def _start_replica(self, group: Group, slot: int, offset_s: int = 0, *, busy: bool = False) -> Replica:
        assert self._cluster is not None
        with self._lock:
            if self._stopping.is_set():
                raise RuntimeError("the run is stopping: no new replica")
            group.incarnations += 1
            incarnation = group.incarnations
        name = f"{group.spec.name}-r{slot}-{incarnation}"
        clients, consumer = self._proxy_slots(group, slot)
        env = dict(os.environ)
        env.update(
            PYTHONPATH=str(PACKAGE_PARENT) + os.pathsep + env.get("PYTHONPATH", ""),
            PYTHONUNBUFFERED="1",
            CKB_CHAOS_BROKER=self._redis_url,
            CKB_CHAOS_KAFKA=self._cluster.bootstrap_via(clients),
            CKB_CHAOS_CONSUMER_KAFKA=self._cluster.bootstrap_via(consumer),
            CKB_CHAOS_TOPIC=group.topic,
            CKB_CHAOS_QUEUE=group.queue,
            CKB_CHAOS_SCHEDULE=json.dumps({e: {"every": every} for e, every in group.spec.entries.items()}),
            CKB_CHAOS_CONF=json.dumps(group.spec.conf() | {"kafka_beat_node_name": name}),
        )
        env.pop("CKB_CHAOS_CLOCK_OFFSET_S", None)
        if offset_s:
            env["CKB_CHAOS_CLOCK_OFFSET_S"] = str(offset_s)
        argv = [sys.executable, "-m", "celery", "-A", "proof.chaos.app", "beat", "-S", SCHEDULER]
        argv += ["--loglevel", "INFO", "--schedule", str(self.run_dir / "logs" / f"{name}.schedule")]
        with (self.run_dir / "logs" / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=str(PACKAGE_PARENT),
                start_new_session=True,
            )
        replica = Replica(group.spec.name, slot, incarnation, offset_s, proc, busy=busy)
        with self._lock:
            group.replicas[slot] = replica
        return replica

    def _check_exits(self) -> None:
        with self._lock:
            for group in self.groups:
                for replica in group.replicas.values():
                    code = replica.proc.poll()
                    if code is not None and not replica.expected_exit:
                        replica.expected_exit = True  # report once
                        self.unexpected_exits.append(f"{replica.name} exited with {code} (no fault stopped it)")
                        self.echo(f"chaos: UNEXPECTED EXIT of {replica.name} ({code})")

    def _terminate(self, replica: Replica, *, signalled: bool = False) -> bool:
        """SIGTERM (unless ``signalled``) and wait for the exit; SIGKILL after STOP_TIMEOUT_S. True when it exited
        by itself."""
        replica.expected_exit = True
        try:
            if not signalled:
                replica.proc.send_signal(signal.SIGTERM)
            replica.proc.wait(STOP_TIMEOUT_S)
            return True
        except subprocess.TimeoutExpired:
            self.unexpected_exits.append(f"{replica.name} did not exit within {STOP_TIMEOUT_S:.0f} s of SIGTERM")
            replica.proc.kill()
            replica.proc.wait()
            return False

    def _stop_all(self) -> None:
        replicas = []
        for group in self.groups:
            with self._lock:
                replicas += [r for r in group.replicas.values() if r.proc.poll() is None]
                group.replicas.clear()
        for replica in replicas:  # all at once: a clean stop takes a moment each
            replica.expected_exit = True
            replica.proc.send_signal(signal.SIGCONT)
            replica.proc.send_signal(signal.SIGTERM)
        for replica in replicas:
            self._terminate(replica, signalled=True)
        if self._partitioner is not None:
            for k in range(2 * self._slots):
                self._partitioner.heal(k)

    # -- faults ----------------------------------------------------------------------------------------------

    def _describe(self, fault: PlannedFault) -> str:
        target = "the owner of an entry" if fault.owner else "a replica"
        text = f"{fault.kind:<10} {target} (pick {fault.pick})"
        if fault.kind == "broker":
            text = f"{fault.kind:<10} {'partition leader' if fault.leader else 'a follower'}"
        elif fault.kind in ("poison", "delete-records"):
            text = f"{fault.kind:<10} the sync topic (pick {fault.pick})"
        elif fault.kind in ("crash-loop", "scale-up"):
            text = f"{fault.kind:<10} a new replica"
        if fault.duration:
            text += f" for {fault.duration:.1f} s"
        if fault.offset_s:
            text += f" clock {fault.offset_s:+d} s"
        return text

    def _event(self, fault: PlannedFault, group: str | None, target: str, phase: str, **detail: Any) -> None:
        line = {"n": fault.n, "kind": fault.kind, "group": group, "target": target, "phase": phase, "t": now_ms()}
        line["detail"] = detail
        with self._lock:
            assert self._faults_out is not None
            self._faults_out.write(json.dumps(line) + "\n")
            self._faults_out.flush()

    def _skip(self, fault: PlannedFault, group: Group | None, why: str) -> None:
        where = f" in {group.spec.name}" if group is not None else ""
        with self._lock:
            self.skipped.append(f"#{fault.n} {fault.kind}{where}: {why}")
        self.echo(f"chaos: #{fault.n} {fault.kind}{where} skipped: {why}")

    def _target(self, fault: PlannedFault, group: Group) -> Replica | None:
        """The replica a fault hits (marked busy), or None when every replica is already under a fault."""
        with self._lock:
            live = [r for _, r in sorted(group.replicas.items()) if not r.busy and r.proc.poll() is None]
            if not live:
                return None
            chosen = live[fault.pick % len(live)]
            if fault.owner:
                entries = sorted(group.spec.entries)
                owner = group.recorder.owner(entries[fault.pick % len(entries)])
                chosen = next((r for r in live if r.name == owner), chosen)
            chosen.busy = True
            return chosen

    def _replica_fault(self, fault: PlannedFault, group: Group) -> None:
        kind = fault.kind
        if kind == "scale-up":
            with self._lock:
                slot = self._free_slot(group)
                if slot is None:
                    return self._skip(fault, group, f"already {MAX_REPLICAS} replicas")
                added = self._start_replica(group, slot)
                self.applied += 1
            self._event(fault, group.spec.name, added.name, "start")
            self._event(fault, group.spec.name, added.name, "end")
            return None
        if kind == "rolling":
            return self._rolling(fault, group)
        if kind == "poison":
            return self._poison(fault, group)
        if kind == "delete-records":
            return self._delete_records(fault, group)
        if kind == "crash-loop":
            return self._crash_loop(fault, group)
        with self._lock:
            live = [r for r in group.replicas.values() if not r.busy and r.proc.poll() is None]
            if kind == "scale-down" and len(live) <= MIN_REPLICAS:
                return self._skip(fault, group, f"only {len(live)} replicas not under another fault")
            replica = self._target(fault, group)
            if replica is None:
                return self._skip(fault, group, "every replica is under another fault")
            self.applied += 1
        name = replica.name
        if kind == "kill":
            replica.expected_exit = True
            self._event(fault, group.spec.name, name, "start")
            replica.proc.kill()
            replica.proc.wait()
            self._stopping.wait(fault.duration)
            new = self._start_replica(group, replica.slot)
            self._event(fault, group.spec.name, name, "end", restarted_as=new.name)
        elif kind in ("term", "clock", "scale-down"):
            self._event(fault, group.spec.name, name, "start", offset_s=fault.offset_s)
            clean = self._terminate(replica)
            if kind == "scale-down":
                with self._lock:
                    group.replicas.pop(replica.slot, None)
                self._event(fault, group.spec.name, name, "end", clean=clean)
                return None
            self._stopping.wait(fault.duration)
            new = self._start_replica(group, replica.slot, offset_s=fault.offset_s)
            self._event(fault, group.spec.name, name, "end", restarted_as=new.name, clean=clean)
        elif kind == "stop":
            self._event(fault, group.spec.name, name, "start")
            replica.proc.send_signal(signal.SIGSTOP)
            try:
                self._stopping.wait(fault.duration)
            finally:
                replica.proc.send_signal(signal.SIGCONT)
            self._event(fault, group.spec.name, name, "end")
            replica.busy = False
        elif kind in ("partition", "deaf"):
            # A partition cuts all of the replica's clients; deaf only its consumer (it still writes). The start is
            # logged once the cut is in force: whatever the replica read was appended before it.
            assert self._partitioner is not None
            clients, consumer = self._proxy_slots(group, replica.slot)
            slots = [consumer] if kind == "deaf" else [clients, consumer]
            if kind == "partition":
                self._event(fault, group.spec.name, name, "start")
            for k in slots:
                self._partitioner.cut(k)
            if kind == "deaf":
                self._event(fault, group.spec.name, name, "start")
            try:
                self._stopping.wait(fault.duration)
            finally:
                for k in slots:
                    self._partitioner.heal(k)
            self._event(fault, group.spec.name, name, "end")
            replica.busy = False
        return None

    def _poison(self, fault: PlannedFault, group: Group) -> None:
        """Write one burst of :func:`.poison.poison_values` to the group's sync topic, straight to the brokers."""
        assert self._cluster is not None
        rng = random.Random(fault.pick * 101 + group.index)
        latest = group.recorder.latest_ticks()
        next_ticks = {
            e: latest[e] + round(every * 1000) for e, every in sorted(group.spec.entries.items()) if e in latest
        }
        values = poison_values(
            rng,
            offset=group.sync.position,
            sessions=group.sync.sessions(),
            entries=sorted(group.spec.entries),
            next_ticks=next_ticks,
            now_ms=now_ms(),
        )
        with self._lock:
            self.applied += 1
        target = f"topic:{group.spec.name}"
        labels: dict[str, int] = {}
        for label, _ in values:
            labels[label] = labels.get(label, 0) + 1
        self._event(fault, group.spec.name, target, "start", records=len(values), labels=labels)
        producer = Producer({"bootstrap.servers": self._cluster.bootstrap_servers, "linger.ms": 5, "log_level": 0})
        failed: list[str] = []

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                failed.append(str(err))

        for _, value in values:
            producer.produce(group.topic, value, key=b"poison", partition=0, on_delivery=delivered)
        left = producer.flush(30)
        self._event(fault, group.spec.name, target, "end", undelivered=left, failed=failed[:5])

    def _delete_records(self, fault: PlannedFault, group: Group) -> None:
        """An operator's DeleteRecords of the group's sync topic before a random offset between its watermarks."""
        assert self._cluster is not None
        bootstrap = self._cluster.bootstrap_servers
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "ckb-chaos-operator", "log_level": 0})
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(group.topic, 0), timeout=10, cached=False)
        except Exception as exc:
            return self._skip(fault, group, f"cannot read the watermarks: {exc}")
        finally:
            consumer.close()
        before = random.Random(fault.pick * 101 + group.index).randint(low, high)
        # The harness's own reader of the topic logs every record before it is deleted (it is no replica: what it
        # misses, the checker's fold would miss).
        observed = group.sync.wait_position(before, timeout=10)
        with self._lock:
            self.applied += 1
        target = f"topic:{group.spec.name}"
        self._event(fault, group.spec.name, target, "start", low=low, high=high, before=before, observed=observed)
        try:
            result = admin.delete_records([TopicPartition(group.topic, 0, before)])[
                TopicPartition(group.topic, 0, before)
            ].result(30)
            outcome: dict[str, Any] = {"low": getattr(result, "low_watermark", None)}
        except Exception as exc:
            outcome = {"error": str(exc)}
        self._event(fault, group.spec.name, target, "end", before=before, **outcome)
        return None

    def _crash_loop(self, fault: PlannedFault, group: Group) -> None:
        """A joiner in a free slot, SIGKILLed soon after each start (after its hello, before its probation ends)
        and started again at once, for ``fault.duration`` seconds; then the slot is free again."""
        with self._lock:
            slot = self._free_slot(group)
            if slot is None:
                return self._skip(fault, group, f"already {MAX_REPLICAS} replicas")
            group.reserved.add(slot)
            self.applied += 1
        rng = random.Random(fault.pick * 101 + group.index)
        target = f"{group.spec.name}-r{slot}-loop"
        self._event(fault, group.spec.name, target, "start", slot=slot)
        lives: list[dict[str, Any]] = []
        deadline = time.monotonic() + fault.duration
        try:
            while time.monotonic() < deadline and not self._stopping.is_set():
                try:
                    replica = self._start_replica(group, slot, busy=True)  # no other fault's target
                except RuntimeError:  # the run is stopping
                    break
                born = time.monotonic()
                live_at = self._await_line(replica, LIVE_LINE, CRASH_LIVE_TIMEOUT_S)
                kill_at = born + rng.uniform(*CRASH_AFTER_S)
                if live_at is not None:
                    kill_at = max(kill_at, live_at + rng.uniform(*LIVE_MARGIN_S))
                self._stopping.wait(max(0.0, kill_at - time.monotonic()))
                self._check_exits()  # an incarnation that died by itself is reported, not taken for a kill
                replica.expected_exit = True
                replica.proc.kill()
                replica.proc.wait()
                lives.append(
                    {
                        "name": replica.name,
                        "lived_ms": round((time.monotonic() - born) * 1000),
                        "live_after_ms": None if live_at is None else round((live_at - born) * 1000),
                    }
                )
        finally:
            with self._lock:
                group.replicas.pop(slot, None)
                group.reserved.discard(slot)
            self._event(
                fault,
                group.spec.name,
                target,
                "end",
                nodes=[life["name"] for life in lives],
                lives=lives,
                never_live=sum(1 for life in lives if life["live_after_ms"] is None),
            )
        return None

    def _await_line(self, replica: Replica, needle: bytes, timeout: float) -> float | None:
        """Monotonic time at which ``needle`` was seen in the replica's log; None on timeout or exit."""
        path = self.run_dir / "logs" / f"{replica.name}.log"
        deadline = time.monotonic() + timeout
        seen = b""
        with path.open("rb") as log_file:
            while time.monotonic() < deadline and not self._stopping.is_set():
                seen = seen[-len(needle) :] + log_file.read()
                if needle in seen:
                    return time.monotonic()
                if replica.proc.poll() is not None:
                    return None
                time.sleep(0.05)
        return None

    def _rolling(self, fault: PlannedFault, group: Group) -> None:
        with self._lock:
            replicas = [r for _, r in sorted(group.replicas.items()) if not r.busy and r.proc.poll() is None]
            for replica in replicas:
                replica.busy = True
            if not replicas:
                return self._skip(fault, group, "every replica is under another fault")
            self.applied += 1
        for step, replica in enumerate(replicas, 1):  # the ones not restarted yet stay busy until their turn
            self._event(fault, group.spec.name, replica.name, "start", step=step, of=len(replicas))
            clean = self._terminate(replica)
            self._start_replica(group, replica.slot)
            self._event(fault, group.spec.name, replica.name, "end", step=step, of=len(replicas), clean=clean)
            self._stopping.wait(ROLLING_PAUSE_S)
        return None

    def _broker_fault(self, fault: PlannedFault) -> None:
        cluster = self._cluster
        assert cluster is not None
        with self._lock:
            if self._broker_busy or not all(cluster.is_running(i) for i in range(3)):
                return self._skip(fault, None, "a broker is already down")
            self._broker_busy = True
        try:
            leader = self._leader(self.groups[fault.pick % len(self.groups)].topic)
            if fault.leader and leader is not None:
                broker = leader
            else:
                others = [i for i in range(3) if i != leader]
                broker = others[fault.pick % len(others)]
            with self._lock:
                self.applied += 1
            target = f"broker:{broker}"
            self._event(fault, None, target, "start", leader=broker == leader)
            cluster.kill_broker(broker)
            self._stopping.wait(fault.duration)
            cluster.restart_broker(broker)
            self._event(fault, None, target, "end", leader=broker == leader)
        finally:
            with self._lock:
                self._broker_busy = False
        return None

    def _leader(self, topic: str) -> int | None:
        assert self._cluster is not None
        admin = AdminClient({"bootstrap.servers": self._cluster.bootstrap_servers})
        try:
            meta = admin.list_topics(topic, timeout=5)
            partitions = meta.topics[topic].partitions
            return partitions[0].leader if partitions else None
        except Exception:
            return None
