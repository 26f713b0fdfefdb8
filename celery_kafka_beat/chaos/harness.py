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
of the sync topic's partition), a restart with the wall clock minutes off, scale up, scale down, and a rolling
restart of every replica.

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

from confluent_kafka.admin import AdminClient

import celery_kafka_beat
from celery_kafka_beat.devkafka import KafkaCluster
from celery_kafka_beat.devredis import LocalRedis
from celery_kafka_beat.protocol.node import NodeSettings

from .proxy import Partitioner
from .recorder import Recorder, SyncLog

__all__ = ["KINDS", "GroupSpec", "Harness", "PlannedFault", "make_plan"]

log = logging.getLogger(__name__)

PACKAGE_PARENT = Path(celery_kafka_beat.__file__).resolve().parent.parent

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
}
MAX_REPLICAS = 5  # per group; also the number of proxy slots per group
MIN_REPLICAS = 2  # scale-down stops here
INITIAL_REPLICAS = 3
ROLLING_PAUSE_S = 1.0  # between the steps of a rolling restart (part of the fault, not a synchronisation)
STOP_TIMEOUT_S = 20.0
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

    def conf(self) -> dict[str, Any]:
        return {
            "kafka_beat_delivery": self.delivery,
            "kafka_beat_catchup": self.catchup,
            "kafka_beat_lease": self.lease,
            "kafka_beat_decision_lead": self.decision_lead,
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
        slots = len(self.specs) * MAX_REPLICAS
        with (
            LocalRedis() as redis,
            KafkaCluster(
                3,
                client_listeners=slots,
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
        for k in range(len(self.specs) * MAX_REPLICAS):
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
            for _ in range(INITIAL_REPLICAS):
                self._start_replica(group, self._free_slot(group))
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

    def _free_slot(self, group: Group) -> int:
        return min(set(range(MAX_REPLICAS)) - set(group.replicas))

    def _start_replica(self, group: Group, slot: int, offset_s: int = 0) -> Replica:
        assert self._cluster is not None
        with self._lock:
            if self._stopping.is_set():
                raise RuntimeError("the run is stopping: no new replica")
            group.incarnations += 1
            incarnation = group.incarnations
        name = f"{group.spec.name}-r{slot}-{incarnation}"
        env = dict(os.environ)
        env.update(
            PYTHONPATH=str(PACKAGE_PARENT) + os.pathsep + env.get("PYTHONPATH", ""),
            PYTHONUNBUFFERED="1",
            CKB_CHAOS_BROKER=self._redis_url,
            CKB_CHAOS_KAFKA=self._cluster.bootstrap_via(group.index * MAX_REPLICAS + slot),
            CKB_CHAOS_TOPIC=group.topic,
            CKB_CHAOS_QUEUE=group.queue,
            CKB_CHAOS_SCHEDULE=json.dumps({e: {"every": every} for e, every in group.spec.entries.items()}),
            CKB_CHAOS_CONF=json.dumps(group.spec.conf() | {"kafka_beat_node_name": name}),
        )
        env.pop("CKB_CHAOS_CLOCK_OFFSET_S", None)
        if offset_s:
            env["CKB_CHAOS_CLOCK_OFFSET_S"] = str(offset_s)
        argv = [sys.executable, "-m", "celery", "-A", "celery_kafka_beat.chaos.app", "beat", "-S", "kafka"]
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
        replica = Replica(group.spec.name, slot, incarnation, offset_s, proc)
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
            for k in range(len(self.groups) * MAX_REPLICAS):
                self._partitioner.heal(k)

    # -- faults ----------------------------------------------------------------------------------------------

    def _describe(self, fault: PlannedFault) -> str:
        target = "the owner of an entry" if fault.owner else "a replica"
        text = f"{fault.kind:<10} {target} (pick {fault.pick})"
        if fault.kind == "broker":
            text = f"{fault.kind:<10} {'partition leader' if fault.leader else 'a follower'}"
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
                if len(group.replicas) >= MAX_REPLICAS:
                    return self._skip(fault, group, f"already {MAX_REPLICAS} replicas")
                added = self._start_replica(group, self._free_slot(group))
                self.applied += 1
            self._event(fault, group.spec.name, added.name, "start")
            self._event(fault, group.spec.name, added.name, "end")
            return None
        if kind == "rolling":
            return self._rolling(fault, group)
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
        elif kind == "partition":
            assert self._partitioner is not None
            slot = group.index * MAX_REPLICAS + replica.slot
            self._event(fault, group.spec.name, name, "start")
            self._partitioner.cut(slot)
            try:
                self._stopping.wait(fault.duration)
            finally:
                self._partitioner.heal(slot)
            self._event(fault, group.spec.name, name, "end")
            replica.busy = False
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
