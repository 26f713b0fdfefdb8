"""The benchmark scenarios. Each takes the running :class:`~bench.harness.Services` and a run directory and returns
a JSON-able dict of figures; :mod:`bench.__main__` runs them in turn and :mod:`bench.report` renders them."""

from __future__ import annotations

import json
import math
import random
import re
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from celery import Celery
from confluent_kafka import Consumer, Producer, TopicPartition

from celery_kafka_beat import wire
from proof.bench.harness import (
    Beat,
    Deployment,
    Drainer,
    Received,
    Recorder,
    Services,
    cpu_seconds,
    now_ms,
    rss_mb,
    summary,
)
from proof.chaos.recorder import SyncLog

Log = Callable[[str], None]

#: Systems in the failover scenario: (label, system, replicas, settings). Stock beat runs alone under a supervisor
#: that restarts it at once; RedBeat runs one active and one standby.
FAILOVER_SYSTEMS: list[tuple[str, str, int, dict[str, Any]]] = [
    ("celery-kafka-beat, defaults (lease 3 s)", "kafka", 3, {}),
    (
        "celery-kafka-beat, lease 0.5 s",
        "kafka",
        3,
        {"kafka_beat_lease": 0.5, "kafka_beat_heartbeat": 0.1, "kafka_beat_decision_lead": 0.1},
    ),
    ("RedBeat, lock 5 s (beat_max_loop_interval 1 s)", "redbeat", 2, {"beat_max_loop_interval": 1}),
    ("stock beat + instant supervisor restart", "stock", 1, {}),
]


def _wait(predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)  # polling a file or a recorder: there is no event to wait on across processes
    return False


def _all_ticking(rec: Recorder, entries: list[str], since: int) -> bool:
    seen = {r.entry for r in rec.snapshot() if r.received >= since}
    return seen >= set(entries)


def _grid_outcome(received: list[Received], entries: list[str], start: int, end: int) -> dict[str, int]:
    """Per entry every whole second in ``[start, end)`` is a tick; count those never sent and those sent more than
    once (by due time), and messages sent more than once with the same task id (re-sends)."""
    by_due: dict[tuple[str, int], list[Received]] = defaultdict(list)
    for r in received:
        if r.due is not None:
            by_due[(r.entry, round(r.due / 1000))].append(r)
    expected = missing = dups = same_id = 0
    for entry in entries:
        for second in range(math.ceil(start / 1000), end // 1000):
            expected += 1
            got = by_due.get((entry, second), [])
            if not got:
                missing += 1
            elif len(got) > 1:
                dups += len(got) - 1
                same_id += len(got) - len({r.task_id for r in got})
    return {"expected": expected, "missing": missing, "duplicates": dups, "resent_same_id": same_id}


def failover(services: Services, run_dir: Path, kills: int, seed: int, log: Log) -> dict[str, Any]:
    """SIGKILL and SIGTERM of the replica that dispatches an entry (the active beat, for RedBeat and stock beat),
    at a random instant within the second: the time until each of its entries is dispatched by another process."""
    out: dict[str, Any] = {"kills": kills, "systems": []}
    for label, system, replicas, conf in FAILOVER_SYSTEMS:
        log(f"failover: {label}")
        out["systems"].append(
            _failover_one(
                services,
                run_dir / f"failover-{system}-{len(out['systems'])}",
                label,
                system,
                replicas,
                conf,
                kills,
                seed,
                log,
            )
        )
    return out


def _failover_one(
    services: Services,
    run_dir: Path,
    label: str,
    system: str,
    replicas: int,
    conf: Mapping[str, Any],
    kills: int,
    seed: int,
    log: Log,
) -> dict[str, Any]:
    rng = random.Random(seed)
    n = 30
    entries = [f"e{i:06d}" for i in range(n)]
    faults: list[dict[str, Any]] = []
    dep = Deployment(services, system, run_dir, {"n": n, "kind": "grid", "period": 1}, conf)
    sync = SyncLog(services.kafka, dep.topic, run_dir / "sync.jsonl") if system == "kafka" else None
    if sync is not None:
        sync.start()
    with dep, Recorder(services.redis_url, dep.queue) as rec:
        for _ in range(replicas):
            dep.start()
            if system == "redbeat":
                time.sleep(0.5)  # the first one takes the lock; the order only makes the run's start repeatable
        if not _wait(lambda: _all_ticking(rec, entries, now_ms() - 1500), 60, 0.1):
            raise RuntimeError(f"{label}: not every entry ticked within 60 s of the start")
        time.sleep(3)
        start = now_ms()
        for k in range(2 * kills):
            signum = signal.SIGKILL if k % 2 == 0 else signal.SIGTERM
            faults.append(_one_fault(dep, rec, entries, system, signum, rng, k, log))
        end = now_ms() - 2000
        received = rec.snapshot()
    if sync is not None:
        sync.stop()
    for fault in faults:
        fault["takeover_ms"] = _takeover(dep, fault)
    outcome = _grid_outcome(received, entries, start, end)
    result: dict[str, Any] = {
        "label": label,
        "system": system,
        "replicas": replicas,
        "conf": dict(conf),
        "faults": faults,
        **outcome,
    }
    for name in ("SIGKILL", "SIGTERM"):
        gaps = [f["gap_ms"] for f in faults if f["signal"] == name and f["gap_ms"] is not None]
        delays = [f["delay_ms"] for f in faults if f["signal"] == name and f["delay_ms"] is not None]
        takeovers = [f["takeover_ms"] for f in faults if f["signal"] == name and f["takeover_ms"] is not None]
        result[name] = summary(gaps) | {
            "censored": sum(1 for f in faults if f["signal"] == name and f["gap_ms"] is None),
            "delay": summary(delays),
            "takeover": summary(takeovers),
        }
    return result


def _one_fault(
    dep: Deployment,
    rec: Recorder,
    entries: list[str],
    system: str,
    signum: int,
    rng: random.Random,
    k: int,
    log: Log,
) -> dict[str, Any]:
    name = signal.Signals(signum).name
    target_entry = entries[k % len(entries)]
    last_sender: dict[str, int] = {}
    for r in rec.snapshot():
        last_sender[r.entry] = r.pid
    victim_pid = last_sender.get(target_entry)
    victim = next((b for b in dep.live() if b.pid == victim_pid), None)
    if victim is None:
        raise RuntimeError(f"no live beat sent {target_entry} last (pid {victim_pid})")
    # A random instant within the second (ticks are on whole seconds).
    phase = rng.random()
    wake = (now_ms() // 1000 + 1) * 1000 + phase * 1000
    time.sleep(max(0.0, wake / 1000 - time.time()))
    last_sender = {r.entry: r.pid for r in rec.snapshot()}
    moved = sorted(e for e, pid in last_sender.items() if pid == victim.pid)
    at = victim.signal(signum)
    gap: int | None = None
    timeout = 60.0
    if system == "stock":
        victim.wait(30)
        dep.start(f"stock-{len(dep.beats)}")  # the supervisor's restart

    def moved_all() -> bool:
        received = rec.snapshot()
        firsts = _firsts_after(received, moved, victim.pid, at)
        return len(firsts) == len(moved) and len(_next_tick_delays(received, moved, victim.pid, at)) == len(moved)

    delay: int | None = None
    if _wait(moved_all, timeout):
        received = rec.snapshot()
        firsts = _firsts_after(received, moved, victim.pid, at)
        gap = max(firsts.values()) - at
        first = min(firsts.values()) - at
        delay = max(_next_tick_delays(received, moved, victim.pid, at).values(), default=None)
    else:
        first = None
    victim.wait(30)
    if system != "stock":
        joined = dep.start(f"{system}-{len(dep.beats)}")
        if system == "kafka":
            _wait(lambda: any(r.pid == joined.pid for r in rec.snapshot()), 30, 0.05)
        # Let the newcomer settle (kafka: take its whole share; redbeat: import and block on the lock as standby).
        time.sleep(1.5 if system == "kafka" else 2.0)
    else:
        time.sleep(1.0)
    log(
        f"  {name} #{k // 2 + 1} {victim.name}: {len(moved)} entries, all moved after "
        f"{'-' if gap is None else gap} ms (first {'-' if first is None else first} ms), next tick late by {delay} ms"
    )
    return {
        "signal": name,
        "victim": victim.name,
        "pid": victim.pid,
        "moved": moved,
        "at": at,
        "phase": round(phase, 3),
        "entries": len(moved),
        "gap_ms": gap,
        "first_ms": first,
        "delay_ms": delay,
    }


def _log_times(path: Path, needle: str | re.Pattern[str]) -> list[int]:
    """Epoch ms of the Celery log lines (``[2026-11-29 08:00:00,123: INFO/...] ...``) that contain ``needle`` (a
    string, or a pattern to search for)."""
    times = []
    for line in path.read_text(errors="replace").splitlines():
        found = needle in line if isinstance(needle, str) else needle.search(line) is not None
        if found and line.startswith("["):
            try:
                at = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
            except ValueError:
                continue
            times.append(round(at.timestamp() * 1000))
    return times


def _takeover(dep: Deployment, fault: dict[str, Any]) -> int | None:
    """When another process took the victim's entries over, from what it wrote, not from a tick: celery-kafka-beat,
    the first claim of each of them by another session in the sync topic (broker time), worst entry; RedBeat, the
    standby's "Acquired lock" log line; stock beat, the restarted beat's "Starting" line."""
    at = fault["at"]
    if dep.system == "kafka":
        path = dep.run_dir / "sync.jsonl"
        lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        victim = {x["s"] for x in lines if x.get("k") == "hello" and f":{fault['pid']}:" in x.get("node", "")}
        firsts: dict[str, int] = {}
        for x in lines:
            if x.get("k") == "claim" and x["t"] >= at and x["s"] not in victim:
                for entry in x["e"]:
                    firsts.setdefault(entry, x["t"])
        if not fault["moved"] or any(e not in firsts for e in fault["moved"]):
            return None
        return max(firsts[e] for e in fault["moved"]) - at
    needle = "Acquired lock" if dep.system == "redbeat" else "beat: Starting..."
    times = [t for b in dep.beats if b.pid != fault["pid"] for t in _log_times(b.log, needle) if t >= at]
    return min(times) - at if times else None


def _next_tick_delays(received: list[Received], entries: list[str], victim: int, at: int) -> dict[str, int]:
    """Per entry, the first tick due after the fault that the victim did not send itself (a clean stop publishes
    what it had decided), and how late another process dispatched that tick or, if it was skipped, a later one."""
    own = {(r.entry, round(r.due / 1000)) for r in received if r.pid == victim and r.due is not None}
    delays = {}
    for entry in entries:
        second = at // 1000 + 1
        while (entry, second) in own:
            second += 1
        later = [
            r.received
            for r in received
            if r.entry == entry and r.pid != victim and r.received > at and r.due is not None and r.due >= second * 1000
        ]
        if later:
            delays[entry] = min(later) - second * 1000
    return delays


def _firsts_after(received: list[Received], entries: list[str], victim: int, at: int) -> dict[str, int]:
    wanted, firsts = set(entries), {}
    for r in received:
        if r.received > at and r.pid != victim and r.entry in wanted and r.entry not in firsts:
            firsts[r.entry] = r.received
    return firsts


def redbeat_default(services: Services, run_dir: Path, wait_s: float, log: Log) -> dict[str, Any]:
    """RedBeat with its defaults: SIGKILL of the active beat, then watch the standby for ``wait_s`` seconds and
    read the lock's remaining time from Redis right after the kill."""
    n = 30
    entries = [f"e{i:06d}" for i in range(n)]
    dep = Deployment(services, "redbeat", run_dir, {"n": n, "kind": "grid", "period": 1}, {})
    with dep, Recorder(services.redis_url, dep.queue) as rec:
        active = dep.start()
        time.sleep(0.5)
        standby = dep.start()
        if not _wait(lambda: _all_ticking(rec, entries, now_ms() - 1500), 60, 0.1):
            raise RuntimeError("RedBeat: not every entry ticked within 60 s of the start")
        time.sleep(2)
        client = services.client()
        client_rb = type(client).from_url(services.redis_url.rsplit("/", 1)[0] + "/1")
        lock_key = f"redbeat-{dep.tag}:lock"
        at = active.signal(signal.SIGKILL)
        ttl_ms = client_rb.pttl(lock_key)
        log(f"redbeat defaults: killed the active beat; lock {lock_key} has {ttl_ms} ms left; watching {wait_s:.0f} s")
        took = _wait(lambda: any(r.pid == standby.pid for r in rec.snapshot()), wait_s, 0.2)
        firsts = [r.received for r in rec.snapshot() if r.pid == standby.pid]
    return {
        "lock_ttl_after_kill_ms": ttl_ms,
        "watched_s": wait_s,
        "standby_dispatched": took,
        "gap_ms": (min(firsts) - at) if firsts else None,
    }


# -- lateness and throughput -----------------------------------------------------------------------------------------


def spread_period(n: int, rate: float) -> float:
    """The base period P of ``n`` spread entries (periods P..2P) that tick ``rate`` times a second on average."""
    return n * math.log(2) / rate


def _load_run(
    services: Services,
    run_dir: Path,
    system: str,
    replicas: int,
    n: int,
    rate: float,
    measure_s: float,
    conf: Mapping[str, Any],
) -> dict[str, Any]:
    """Start ``replicas`` beats with ``n`` spread entries at ``rate`` ticks/s; after the first round of ticks began
    and 2 s more, measure ``measure_s`` seconds: lateness of every tick due in the window, ticks published versus
    due, CPU and memory of the beats."""
    period = spread_period(n, rate)
    dep = Deployment(services, system, run_dir, {"n": n, "kind": "spread", "period": period}, conf)
    with dep, Drainer(services.client(), dep.queue):
        beats = [dep.start() for _ in range(1 if system != "kafka" else replicas)]
        t0 = now_ms()
        # The first tick of the shortest entry is one period after the start (ckb: after the claim).
        if not _wait(lambda: any(dep.run_dir.glob("pub-*.csv")), period + 90, 0.1):
            raise RuntimeError(f"{system}: nothing published within {period + 90:.0f} s")
        first_pub = min(p.published for p in dep.publishes())
        # Measure once every entry is past its first tick's round (all ticking), or 2 s after the first tick when
        # the periods are short.
        begin = max(first_pub + 2000, t0 + round(period * 1000) + 2000)
        time.sleep(max(0.0, begin / 1000 - time.time()))
        cpu0 = {b.pid: cpu_seconds(b.pid) for b in beats if b.alive()}
        time.sleep(measure_s)
        end = now_ms()
        cpu1 = {b.pid: cpu_seconds(b.pid) for b in beats if b.alive() and b.pid in cpu0}
        rss = [rss_mb(b.pid) for b in beats if b.alive()]
        time.sleep(1.5)  # publishes of ticks due near the end
        pubs = dep.publishes()
        dead = [b.name for b in beats if not b.alive()]
    window = [p for p in pubs if p.due is not None and begin <= p.due < end]
    late = [float(p.late) for p in window if p.late is not None]
    periods = [period * (1 + i / n) for i in range(n)]
    expected = sum(measure_s / p for p in periods)
    per_entry = Counter((p.entry, p.due) for p in window)
    return {
        "system": system,
        "replicas": len(beats),
        "entries": n,
        "rate": rate,
        "period_s": round(period, 3),
        "ticks": len(window),
        "expected": round(expected),
        "duplicates": sum(c - 1 for c in per_entry.values() if c > 1),
        "late_ms": summary(late),
        "cpu": round(sum(cpu1[pid] - cpu0[pid] for pid in cpu1) / measure_s, 3),
        "rss_mb": round(max(rss, default=math.nan), 1),
        "dead": dead,
    }


LOAD_SYSTEMS: list[tuple[str, str, int]] = [
    ("celery-kafka-beat ×1", "kafka", 1),
    ("celery-kafka-beat ×3", "kafka", 3),
    ("RedBeat", "redbeat", 1),
    ("stock beat", "stock", 1),
]


def lateness(
    services: Services, run_dir: Path, sizes: list[int], rate: float, measure_s: float, log: Log
) -> dict[str, Any]:
    rows = []
    for n in sizes:
        for label, system, replicas in LOAD_SYSTEMS:
            log(f"lateness: {label}, {n} entries, {rate:g} ticks/s")
            row = _load_run(
                services, run_dir / f"late-{system}{replicas}-{n}", system, replicas, n, rate, measure_s, {}
            )
            row["label"] = label
            log(
                f"  {row['ticks']} ticks (expected ~{row['expected']}), late p50/p99/max "
                f"{row['late_ms']['p50']}/{row['late_ms']['p99']}/{row['late_ms']['max']} ms, cpu {row['cpu']}"
            )
            rows.append(row)
    return {"rate": rate, "measure_s": measure_s, "rows": rows}


def throughput(
    services: Services, run_dir: Path, n: int, rates: list[float], measure_s: float, log: Log
) -> dict[str, Any]:
    """For each system, the rates in turn until one fails: lateness p99 over 100 ms, or fewer than 98 % of the
    ticks due in the window published."""
    out = []
    for label, system, replicas in LOAD_SYSTEMS:
        steps = []
        best = 0.0
        for rate in rates:
            log(f"throughput: {label}, {rate:g} ticks/s over {n} entries")
            row = _load_run(
                services, run_dir / f"tp-{system}{replicas}-{rate:g}", system, replicas, n, rate, measure_s, {}
            )
            ok = row["late_ms"]["p99"] < 100 and row["ticks"] >= 0.98 * row["expected"] and not row["dead"]
            row["ok"] = ok
            steps.append(row)
            log(
                f"  {'ok' if ok else 'FAIL'}: {row['ticks']} of ~{row['expected']} ticks, "
                f"p99 {row['late_ms']['p99']} ms, "
                f"cpu {row['cpu']}"
            )
            if not ok:
                break
            best = rate
        out.append({"label": label, "system": system, "replicas": replicas, "best_rate": best, "steps": steps})
    return {"entries": n, "measure_s": measure_s, "systems": out}


# -- idle cost ----------------------------------------------------------------------------------------------------


def _end_offset(services: Services, system: str, topic: str) -> int:
    if system != "kafka":
        return 0
    consumer = Consumer({"bootstrap.servers": services.kafka, "group.id": "bench-idle"})
    try:
        return int(consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1])
    finally:
        consumer.close()


def _redis_commands(client: Any) -> int:
    return sum(int(v["calls"]) for v in client.info("commandstats").values())


def idle(services: Services, run_dir: Path, measure_s: float, log: Log) -> dict[str, Any]:
    """100 hourly entries (nothing due while measuring): CPU and memory of each replica, and what it writes to
    its coordination store (records/s to Kafka; Redis commands/s for RedBeat)."""
    rows = []
    for label, system, replicas in [
        ("celery-kafka-beat", "kafka", 3),
        ("RedBeat", "redbeat", 2),
        ("stock beat", "stock", 1),
    ]:
        log(f"idle: {label} ×{replicas}")
        dep = Deployment(services, system, run_dir / f"idle-{system}", {"n": 100, "kind": "grid", "period": 3600}, {})
        with dep:
            beats = [dep.start() for _ in range(replicas)]
            time.sleep(15)  # start-up and the first claims are not idle
            client = services.client()
            topic = dep.topic

            off0, cmd0 = _end_offset(services, system, topic), _redis_commands(client)
            cpu0 = {b.pid: cpu_seconds(b.pid) for b in beats}
            time.sleep(measure_s)
            cpu1 = {b.pid: cpu_seconds(b.pid) for b in beats}
            off1, cmd1 = _end_offset(services, system, topic), _redis_commands(client)
            rss = [rss_mb(b.pid) for b in beats]
        per = [(cpu1[p] - cpu0[p]) / measure_s for p in cpu0]
        rows.append(
            {
                "label": label,
                "system": system,
                "replicas": replicas,
                "cpu_per_replica": [round(c, 4) for c in per],
                "rss_mb": [round(r, 1) for r in rss],
                "kafka_records_per_s": round((off1 - off0) / measure_s, 2) if system == "kafka" else None,
                # commands from the harness's own two INFO calls are in this figure too (2 of them)
                "redis_commands_per_s": round((cmd1 - cmd0 - 2) / measure_s, 2),
            }
        )
        log(
            f"  cpu {rows[-1]['cpu_per_replica']}, rss {rows[-1]['rss_mb']}, "
            f"kafka rec/s {rows[-1]['kafka_records_per_s']}, "
            f"redis cmd/s {rows[-1]['redis_commands_per_s']}"
        )
    return {"measure_s": measure_s, "rows": rows}


# -- rebalance ----------------------------------------------------------------------------------------------------


def rebalance(services: Services, run_dir: Path, joins: int, log: Log) -> dict[str, Any]:
    """Two replicas with 60 entries every second; a third joins (a new process), and later leaves again with
    SIGTERM. Time from its spawn, and from its first dispatch, until it dispatched every entry it ends up with;
    missed and duplicated ticks around the join."""
    n = 60
    entries = [f"e{i:06d}" for i in range(n)]
    dep = Deployment(services, "kafka", run_dir / "rebalance", {"n": n, "kind": "grid", "period": 1}, {})
    results = []
    with dep, Recorder(services.redis_url, dep.queue) as rec:
        dep.start()
        dep.start()
        if not _wait(lambda: _all_ticking(rec, entries, now_ms() - 1500), 60, 0.1):
            raise RuntimeError("rebalance: not every entry ticked")
        time.sleep(3)
        start = now_ms()
        for j in range(joins):
            joiner = dep.start(f"joiner-{j}")
            time.sleep(12)
            share_from = now_ms() - 3000
            snap = rec.snapshot()
            share = {r.entry for r in snap if r.pid == joiner.pid and r.received >= share_from}
            mine = [r for r in snap if r.pid == joiner.pid]
            firsts: dict[str, int] = {}
            for r in mine:
                firsts.setdefault(r.entry, r.received)
            first_any = min(firsts.values(), default=None)
            done = max((firsts[e] for e in share), default=None)
            results.append(
                {
                    "share": len(share),
                    "spawn_to_share_ms": None if done is None else done - joiner.started,
                    "first_to_share_ms": None if done is None or first_any is None else done - first_any,
                    "spawn_to_first_ms": None if first_any is None else first_any - joiner.started,
                }
            )
            log(
                f"  join #{j + 1}: share {len(share)} of {n}, spawn->first {results[-1]['spawn_to_first_ms']} ms, "
                f"first->share {results[-1]['first_to_share_ms']} ms"
            )
            joiner.signal(signal.SIGTERM)
            joiner.wait(20)
            time.sleep(3)
        end = now_ms() - 2000
        outcome = _grid_outcome(rec.snapshot(), entries, start, end)
    return {
        "joins": results,
        **outcome,
        "spawn_to_share": summary(
            [float(r["spawn_to_share_ms"]) for r in results if r["spawn_to_share_ms"] is not None]
        ),
        "first_to_share": summary(
            [float(r["first_to_share_ms"]) for r in results if r["first_to_share_ms"] is not None]
        ),
    }


# -- start-up -----------------------------------------------------------------------------------------------------


def startup(services: Services, run_dir: Path, sizes: list[int], history: int, log: Log) -> dict[str, Any]:
    """A ``celery beat`` process with N hourly entries and one probe entry every 0.1 s: time from spawn until it
    publishes the probe's first tick (the scheduler is up and dispatching), for a first start and for a restart on
    the state the first one left; memory after it. celery-kafka-beat also logs when it owns all N entries, and is
    restarted once more after ``history`` more records were appended to its topic (a long history that no snapshot
    covers, as if truncation had not run)."""
    rows = []
    for n in sizes:
        for label, system in [("celery-kafka-beat", "kafka"), ("RedBeat", "redbeat"), ("stock beat", "stock")]:
            dep = Deployment(
                services,
                system,
                run_dir / f"startup-{system}-{n}",
                {"n": n, "kind": "grid", "period": 3600, "probe": 0.1},
                {},
            )
            row: dict[str, Any] = {"label": label, "system": system, "entries": n}
            phases = ["first", "restart"] + (["history"] if system == "kafka" and history else [])
            with dep:
                for phase in phases:
                    if phase == "history":
                        row["history_records"] = append_history(services.kafka, dep.topic, history)
                    beat = dep.start(f"{system}-{phase}")
                    row[f"{phase}_probe_ms"] = _until_probe(dep, beat, 900)
                    row[f"{phase}_owning_ms"] = _until_owning(beat, 900) if system == "kafka" else None
                    row[f"{phase}_rss_mb"] = round(rss_mb(beat.pid), 1)
                    beat.stop()
            log(
                f"startup: {label}, {n} entries: "
                + ", ".join(f"{k} {v}" for k, v in row.items() if k.endswith(("_ms", "_mb", "records")))
            )
            rows.append(row)
    return {"rows": rows, "history": history}


def append_history(bootstrap: str, topic: str, count: int) -> int:
    """Append a session of ``count`` heartbeats (hello, heartbeats, goodbye) to ``topic``: valid records that a
    starting node must read and fold."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True, "acks": "all"})
    session = f"history-{time.time_ns()}"
    records: list[wire.Record] = [wire.Hello(session=session, seq=1, node="history", lease_ms=3_600_000, catalog="-")]
    records += [wire.Heartbeat(session=session, seq=i + 2) for i in range(count)]
    records.append(wire.Goodbye(session=session, seq=count + 2))
    for record in records:
        key, value = wire.encode(record)
        while True:
            try:
                producer.produce(topic, value, key, partition=0)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120) != 0:
        raise RuntimeError("could not append the history records")
    return len(records)


def _until_probe(dep: Deployment, beat: Beat, timeout: float) -> int | None:
    path = dep.run_dir / f"pub-{beat.pid}.csv"
    if not _wait(lambda: path.exists() and "probe" in path.read_text(), timeout, 0.01):
        return None
    for p in dep.publishes():
        if p.pid == beat.pid and p.entry == "probe":
            return p.published - beat.started
    return None  # pragma: no cover - the file said it was there


_OWNS_ALL = re.compile(r"owns (\d+) of \1 entries")


def _until_owning(beat: Beat, timeout: float) -> int | None:
    """Spawn to the log line saying the node owns all its entries (N, the probe, and Celery's default ones)."""
    if not _wait(lambda: bool(_log_times(beat.log, _OWNS_ALL)), timeout, 0.05):
        return None
    return _log_times(beat.log, _OWNS_ALL)[0] - beat.started


# -- calibration --------------------------------------------------------------------------------------------------


def celery_publish_cost(services: Services, messages: int = 5000) -> dict[str, Any]:
    """CPU and wall time of Celery's own ``send_task`` to this Redis, in this process, one message after another:
    the floor under every beat's per-tick cost on this machine."""
    app = Celery("bench-calibrate", broker=services.redis_url)
    queue = f"bench-calibrate-{time.time_ns()}"
    with app.producer_or_acquire() as producer:
        for i in range(200):  # warm up (connections, routes)
            app.send_task("bench.tick", (), {}, producer=producer, queue=queue, task_id=f"w{i}", retry=False)
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(messages):
            app.send_task(
                "bench.tick",
                (),
                {},
                producer=producer,
                queue=queue,
                task_id=f"m{i}",
                retry=False,
                headers={"bench_entry": "e", "bench_pid": "0"},
            )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    services.client().delete(queue)
    return {
        "messages": messages,
        "cpu_us": round(cpu / messages * 1e6),
        "wall_us": round(wall / messages * 1e6),
        "per_s": round(messages / wall),
    }
