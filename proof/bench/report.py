"""Renders a benchmark run (``results.json``) as ``docs/benchmarks.md`` with PNG plots beside it."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import confluent_kafka

COMMAND = "python -m proof.bench run --out docs/benchmarks.md"


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in _lines("/proc/cpuinfo") if line.startswith("model name")), "")
    mem = next((line.split(":", 1)[1].strip() for line in _lines("/proc/meminfo")), "")
    versions = {}
    for package in ("celery", "kombu", "celery-redbeat", "confluent-kafka", "redis"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "-"
    versions["librdkafka"] = confluent_kafka.libversion()[0]
    try:
        out = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
        versions["redis-server"] = out.split("v=", 1)[1].split()[0] if "v=" in out else out.strip()
    except (OSError, subprocess.SubprocessError):
        versions["redis-server"] = "-"
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "python": platform.python_version(),
        "versions": versions,
    }


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def _ms(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.0f}"


def _s(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value / 1000:.2f}"


def _ratio(a: Any, b: Any) -> str:
    if not a or not b or any(isinstance(x, float) and math.isnan(x) for x in (a, b)):
        return "-"
    return f"{a / b:.1f}×"


def write(results: dict[str, Any], out: Path, run_dir: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    images = out.parent
    lines: list[str] = []
    add = lines.append
    m = results.get("machine", {})
    add("# Benchmarks")
    add("")
    add(
        "celery-kafka-beat side by side with stock Celery beat (`PersistentScheduler`) and celery-redbeat, measured in "
        "one run on one machine. Reproduce with:"
    )
    add("")
    add("```")
    add(COMMAND)
    add("```")
    add("")
    add(
        "It starts its own Kafka broker and redis-server, runs every scenario one after another (about 45 minutes; "
        "`--only failover,lateness` picks some, `--quick` is a smoke run whose figures are not for publishing), keeps "
        "logs, publish records and `results.json` in `bench-runs/<time>/`, and writes this page and its plots. "
        "`python -m proof.bench report bench-runs/<time>` renders a kept run again."
    )
    add("")
    add(
        f"This run: {results.get('started', '?')} to {results.get('finished', '?')}"
        f"{' (QUICK: smoke figures, not for publishing)' if results.get('quick') else ''}; "
        f"{m.get('cpus', '?')} CPUs ({m.get('cpu', '?')}), {m.get('memory', '?')} RAM, shared by everything below; "
        f"Python {m.get('python', '?')}, Kafka {m.get('kafka') or '?'} (one broker, KRaft), "
        + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
        + "."
    )
    add("")
    _summary(results, add)
    _method(add, results.get("params", {}))
    if "calibrate" in results:
        c = results["calibrate"]
        add("## The floor: Celery's own publish")
        add("")
        add(
            f"Every beat hands each tick to Celery's `send_task`. On this machine one call costs **{c['cpu_us']} µs of "
            f"CPU** ({c['wall_us']} µs wall, {c['per_s']:,} messages/s from one process, one after another, to the "
            f"same Redis; {c['messages']:,} messages). No scheduler can publish faster than that per process; with "
            f"{m.get('cpus', '?')} cores shared by the broker, Redis and the beats, it bounds the throughput below."
        )
        add("")
    if "failover" in results:
        _failover(results, add, images, out)
    if "lateness" in results:
        _lateness(results["lateness"], add, images, out)
    if "throughput" in results:
        _throughput(results["throughput"], results.get("calibrate"), add, images, out)
    if "startup" in results:
        _startup(results["startup"], add)
    if "idle" in results:
        _idle(results["idle"], add)
    if "rebalance" in results:
        _rebalance(results["rebalance"], add)
    _caveats(add)
    out.write_text("\n".join(lines) + "\n")


def _summary(results: dict[str, Any], add: Any) -> None:
    add("## Targets and what this run measured")
    add("")
    add("| target | measured | met |")
    add("|---|---|---|")
    fo = {s["label"]: s for s in results.get("failover", {}).get("systems", [])}
    default = next((s for s in fo.values() if s["system"] == "kafka" and not s["conf"]), None)
    short = next((s for s in fo.values() if s["system"] == "kafka" and s["conf"]), None)
    if default:
        p99 = default["SIGKILL"]["p99"]
        add(
            f"| failover after SIGKILL, defaults: p99 < 5 s | p99 {_s(p99)} s (max {_s(default['SIGKILL']['max'])} s,"
            f" {default['SIGKILL']['n']} kills) | {'yes' if p99 < 5000 else 'no'} |"
        )
        term = default["SIGTERM"]["delay"]["p99"]
        add(
            f"| SIGTERM handover: p99 < 200 ms | next tick {_ms(term)} ms late at p99 (until another replica "
            f"dispatched: p99 {_ms(default['SIGTERM']['p99'])} ms, which includes waiting for the tick) | "
            f"{'yes' if term < 200 else 'no'} |"
        )
    if short:
        p99 = short["SIGKILL"]["p99"]
        ok = p99 < 1000 and short["duplicates"] == 0
        add(
            f"| short lease: SIGKILL failover p99 < 1 s, 0 duplicates | until another replica dispatched: p99 "
            f"{_ms(p99)} ms, which includes waiting for the next tick (takeover p99 "
            f"{_ms(short['SIGKILL'].get('takeover', {}).get('p99'))} ms, next tick late by p99 "
            f"{_ms(short['SIGKILL']['delay']['p99'])} ms); {short['duplicates']} duplicates | "
            f"{'yes' if ok else 'no, by the literal measure'} |"
        )
    for row in results.get("lateness", {}).get("rows", []):
        if row["system"] == "kafka" and row["entries"] in (1000, 10_000) and row["replicas"] == 3:
            bound = 10 if row["entries"] == 1000 else 50
            p99 = row["late_ms"]["p99"]
            add(
                f"| lateness p99 < {bound} ms at {row['entries']:,} entries | p99 {_ms(p99)} ms (3 replicas) | "
                f"{'yes' if p99 < bound else 'no'} |"
            )
    for system in results.get("throughput", {}).get("systems", []):
        if system["system"] == "kafka" and system["replicas"] == 3:
            best = system["best_rate"]
            add(
                f"| ≥ 5,000 ticks/s with 3 replicas | {best:,.0f} ticks/s (see the throughput section: CPU-bound on "
                f"this 2-core machine) | {'yes' if best >= 5000 else 'no'} |"
            )
    for row in results.get("startup", {}).get("rows", []):
        if row["system"] == "kafka" and row["entries"] == 100_000:
            t = max(x for x in (row.get("first_owning_ms"), row.get("restart_owning_ms")) if x is not None)
            add(
                f"| start-up with 100,000 entries < 5 s | owning all after {_s(row.get('first_owning_ms'))} s "
                f"(first start) / {_s(row.get('restart_owning_ms'))} s (restart) | {'yes' if t < 5000 else 'no'} |"
            )
    for row in results.get("idle", {}).get("rows", []):
        if row["system"] == "kafka":
            worst = max(row["cpu_per_replica"])
            add(
                f"| idle replica < 1% of a core | {worst * 100:.2f}% (worst of {row['replicas']}) | "
                f"{'yes' if worst < 0.01 else 'no'} |"
            )
    add("")


def _method(add: Any, params: dict[str, Any]) -> None:
    add("## Method")
    add("")
    add(
        "- **Processes**: every system runs as real `celery beat` processes (`celery -A proof.bench.app beat -S ...`); "
        "the schedulers are subclassed only to record, right after Celery handed a tick's message to Redis, a line "
        "`entry,due,published` (`proof/bench/app.py`). The due time is the tick for celery-kafka-beat and, for stock "
        "beat and RedBeat, the entry's due time from its `last_run_at` "
        "(`now + schedule.remaining_estimate(last_run_at)`, the arithmetic their `is_due` uses). Lateness is "
        "published minus due."
    )
    add(
        "- **Messages** carry the entry, the sending process and the due time in headers. In the failover and "
        "rebalance scenarios a consumer in the harness reads every message from Redis (kombu, as a worker would): "
        "duplicates and misses are counted on what arrived, not on what a beat says it sent."
    )
    add(
        "- **Failover**: 30 entries every second (`relative=True`: ticks on whole seconds). celery-kafka-beat runs 3 "
        "replicas; the victim is the replica that last sent entry *k* (a third of the entries). RedBeat runs an active "
        "beat and a standby; stock beat runs alone under an instant supervisor restart (the best a single beat can "
        "do). Faults alternate SIGKILL and SIGTERM at a random instant within the second (seeded), and the victim "
        "is restarted after each. *Until another replica dispatches*: fault to the first message of each of the "
        "victim's entries from another process, worst entry (this includes waiting for the entry's next tick, up "
        "to 1 s). *Next tick late by*: how late the first tick due after the fault that the victim did not send "
        "itself reached Redis, worst entry: what a user sees. *Takeover*: when another process took the entries "
        "over, from what it wrote rather than from a tick (celery-kafka-beat: its claim in the sync topic, broker "
        "time, worst entry; RedBeat: the standby's `Acquired lock` log line; stock beat: the restarted beat's "
        "`Starting` line). Missed and duplicated ticks are counted per entry and whole second over the whole fault "
        "sequence."
    )
    add(
        "- **Lateness**: N entries with periods spread evenly between P and 2P (not relative), so that ticks arrive "
        f"about 200 per second, evenly, rather than in bursts; measured over {params.get('late_s', '?')} s once every "
        "entry ticks. "
        "celery-kafka-beat with 1 and with 3 replicas."
    )
    add(
        "- **Throughput**: 10,000 such entries at a rising rate; a rate passes when lateness p99 stays under 100 ms "
        f"and at least 98 % of the ticks due in the {params.get('tp_s', '?')} s window were published."
    )
    add(
        "- **Start-up**: a beat with N hourly entries and one probe entry every 0.1 s; spawn to the probe's first "
        "publish, and for celery-kafka-beat spawn to the log line saying it owns all entries. First start on empty "
        "state, then a restart on the state the first left; celery-kafka-beat once more after a long history was "
        "appended to its topic (records no snapshot covers). RSS of the beat after start-up."
    )
    add(
        f"- **Idle**: 100 hourly entries, nothing due; CPU of each replica over {params.get('idle_s', '?')} s "
        "(from /proc), RSS, records/s "
        "written to the Kafka topic and Redis commands/s (RedBeat's lock renewals and schedule reads)."
    )
    add(
        "- **Rebalance**: 2 replicas with 60 entries every second; a third process joins; its share is what it "
        "dispatches 9-12 s later; time from spawn (Python and Celery start-up included) and from its first dispatch "
        "until it has dispatched every entry of its share; then it leaves with SIGTERM. Repeated."
    )
    add("")


def _failover(results: dict[str, Any], add: Any, images: Path, out: Path) -> None:
    data = results["failover"]
    add("## Failover and handover")
    add("")
    add(f"{data['kills']} SIGKILLs and {data['kills']} SIGTERMs per system, alternating. Times in milliseconds.")
    add("")
    add(
        "| system | fault | until another replica dispatches p50 / p99 / max | next tick late by p50 / p99 / max "
        "| takeover p50 / p99 / max | no takeover within 60 s |"
    )
    add("|---|---|---|---|---|---|")
    for s in data["systems"]:
        for sig in ("SIGKILL", "SIGTERM"):
            f = s[sig]
            d, t = f["delay"], f.get("takeover", {})
            add(
                f"| {s['label']} | {sig} | {_ms(f['p50'])} / {_ms(f['p99'])} / {_ms(f['max'])} | "
                f"{_ms(d['p50'])} / {_ms(d['p99'])} / {_ms(d['max'])} | "
                f"{_ms(t.get('p50'))} / {_ms(t.get('p99'))} / {_ms(t.get('max'))} | {f['censored']} |"
            )
    rd = results.get("redbeat_default")
    if rd:
        add(
            f"| RedBeat, defaults (lock 1,500 s, standby retries every 300 s) | SIGKILL (1) | "
            f"{_ms(rd['gap_ms']) if rd['standby_dispatched'] else 'none within ' + str(int(rd['watched_s'])) + ' s'}"
            f"; the lock had {_ms(rd['lock_ttl_after_kill_ms'])} ms left right after the kill | - | - |"
        )
    add("")
    add("Missed and duplicated ticks over each system's whole fault sequence (every entry, every whole second):")
    add("")
    add("| system | ticks due | missed | duplicated | of which re-sends with the same task id |")
    add("|---|---:|---:|---:|---:|")
    for s in data["systems"]:
        add(f"| {s['label']} | {s['expected']:,} | {s['missing']:,} | {s['duplicates']:,} | {s['resent_same_id']:,} |")
    add("")
    add(
        "celery-kafka-beat runs with its default catch-up `once` (what stock beat does): ticks that fell due while "
        "nobody owned an entry collapse into one run, so a SIGKILL misses about one lease's worth of ticks per entry "
        "(catch-up `all` would run each of them, late). RedBeat and stock beat also run an overdue entry once. "
        "Duplicates with the same task id are at-least-once re-sends: a tick published but not yet confirmed in the "
        "log when its replica died."
    )
    add("")
    base = next((s for s in data["systems"] if s["system"] == "kafka" and not s["conf"]), None)
    if base:
        add(
            "Ratios, each system against celery-kafka-beat with its defaults, in this run (higher: slower than "
            "celery-kafka-beat):"
        )
        add("")
        add("| system | SIGKILL p50 | SIGKILL p99 | SIGTERM next-tick p99 |")
        add("|---|---:|---:|---:|")
        for s in data["systems"]:
            if s is base:
                continue
            add(
                f"| {s['label']} | {_ratio(s['SIGKILL']['p50'], base['SIGKILL']['p50'])} | "
                f"{_ratio(s['SIGKILL']['p99'], base['SIGKILL']['p99'])} | "
                f"{_ratio(s['SIGTERM']['delay']['p99'], base['SIGTERM']['delay']['p99'])} |"
            )
        add("")
    png = _plot_failover(data, images / "bench-failover.png")
    if png:
        add(f"![failover]({os.path.relpath(png, out.parent)})")
        add("")


def _lateness(data: dict[str, Any], add: Any, images: Path, out: Path) -> None:
    add("## Dispatch lateness")
    add("")
    add(
        f"About {data['rate']:g} ticks per second, spread evenly; {data['measure_s']} s window. Milliseconds from "
        "the tick's due time to the message handed to Redis."
    )
    add("")
    add(
        "| entries | system | ticks | p50 | p99 | max | CPU (cores, all replicas) | RSS MB "
        "| p99 vs celery-kafka-beat ×3 |"
    )
    add("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in data["rows"]:
        base = next(
            (
                r
                for r in data["rows"]
                if r["entries"] == row["entries"] and r["system"] == "kafka" and r["replicas"] == 3
            ),
            None,
        )
        ratio = _ratio(row["late_ms"]["p99"], base["late_ms"]["p99"]) if base and row is not base else ""
        add(
            f"| {row['entries']:,} | {row['label']} | {row['ticks']:,} of ~{row['expected']:,} | "
            f"{_ms(row['late_ms']['p50'])} | {_ms(row['late_ms']['p99'])} | {_ms(row['late_ms']['max'])} | "
            f"{row['cpu']:.2f} | {row['rss_mb']:.0f} | {ratio} |"
        )
    add("")
    add(
        "Fewer ticks than expected means the scheduler fell behind: stock beat looks at every entry on every tick "
        "(`schedules_equal` and its heap), one due entry per call."
    )
    add("")
    png = _plot_lateness(data, images / "bench-lateness.png")
    if png:
        add(f"![lateness]({os.path.relpath(png, out.parent)})")
        add("")


def _throughput(data: dict[str, Any], calib: dict[str, Any] | None, add: Any, images: Path, out: Path) -> None:
    add("## Throughput")
    add("")
    add(
        f"{data['entries']:,} entries; each rate for {data['measure_s']} s; a rate passes with lateness p99 under "
        "100 ms and ≥ 98 % of the due ticks published."
    )
    add("")
    add("| system | highest passing rate (ticks/s) | steps (rate: p99, ticks published / expected, CPU cores) |")
    add("|---|---:|---|")
    for s in data["systems"]:
        steps = "; ".join(
            f"{st['rate']:g}: {_ms(st['late_ms']['p99'])} ms, {st['ticks']:,}/{st['expected']:,} ticks, "
            f"{st['cpu']:.2f}{'' if st['ok'] else ' **fail**'}"
            for st in s["steps"]
        )
        add(f"| {s['label']} | {s['best_rate']:,.0f} | {steps} |")
    add("")
    if calib:
        add(
            f"The bound: Celery's `send_task` alone costs {calib['cpu_us']} µs of CPU per message here, so 5,000 "
            f"ticks/s need {5000 * calib['cpu_us'] / 1e6:.1f} cores for the publish calls alone, before the "
            "scheduler, Redis and the Kafka broker, on a machine with 2 cores for all of them. Three replicas on one "
            "2-core machine share those cores; on three machines each would bring its own."
        )
        add("")
    png = _plot_throughput(data, images / "bench-throughput.png")
    if png:
        add(f"![throughput]({os.path.relpath(png, out.parent)})")
        add("")


def _startup(data: dict[str, Any], add: Any) -> None:
    add("## Start-up")
    add("")
    if data.get("note"):
        add(f"({data['note']}.)")
        add("")
    add(
        "Seconds from spawning `celery beat` (Python and Celery start-up included, about 1 s) until it published the "
        "probe's first tick; for celery-kafka-beat also until it logged owning every entry. RSS in MB after start-up."
    )
    add("")
    add(
        "| entries | system | first start: probe / owning all | restart: probe / owning all | after a long history "
        "| RSS MB (first / restart) |"
    )
    add("|---:|---|---|---|---|---|")
    for r in data["rows"]:
        hist = "-"
        if r.get("history_probe_ms") is not None or r.get("history_owning_ms") is not None:
            hist = (
                f"{_s(r.get('history_probe_ms'))} / {_s(r.get('history_owning_ms'))} "
                f"({r.get('history_records', 0):,} records)"
            )
        add(
            f"| {r['entries']:,} | {r['label']} | {_s(r.get('first_probe_ms'))} / {_s(r.get('first_owning_ms'))} | "
            f"{_s(r.get('restart_probe_ms'))} / {_s(r.get('restart_owning_ms'))} | {hist} | "
            f"{r.get('first_rss_mb', '-')} / {r.get('restart_rss_mb', '-')} |"
        )
    add("")
    add(
        "The protocol node alone, without Celery (cold start, reading the topic back, restart), at 100,000 entries: "
        "`python proof/bench/startup.py --entries 100000`."
    )
    add("")


def _idle(data: dict[str, Any], add: Any) -> None:
    add("## Idle cost")
    add("")
    add(f"100 hourly entries, nothing due, {data['measure_s']} s.")
    add("")
    add(
        "| system | replicas | CPU per replica (% of a core) | RSS MB per replica | Kafka records/s "
        "| Redis commands/s |"
    )
    add("|---|---:|---|---|---:|---:|")
    for r in data["rows"]:
        cpu = ", ".join(f"{c * 100:.2f}" for c in r["cpu_per_replica"])
        rss = ", ".join(f"{x:.0f}" for x in r["rss_mb"])
        kafka = "-" if r["kafka_records_per_s"] is None else f"{r['kafka_records_per_s']:.2f}"
        add(f"| {r['label']} | {r['replicas']} | {cpu} | {rss} | {kafka} | {r['redis_commands_per_s']:.2f} |")
    add("")
    add(
        "celery-kafka-beat's records are heartbeats (one per replica per second by default, a third of the lease). "
        "Redis commands/s counts every client of that Redis (about 0.03 of it is the harness's own INFO call). "
        "RedBeat with its defaults wakes every `beat_max_loop_interval` (300 s) to renew its lock and read the "
        "schedule, so a window shorter than that sees none of it; with a 1 s loop (its short-lock setting above) it "
        "renews every second."
    )
    add("")


def _rebalance(data: dict[str, Any], add: Any) -> None:
    add("## Rebalance: a replica joins")
    add("")
    s1, s2 = data["spawn_to_share"], data["first_to_share"]
    add(
        f"{len(data['joins'])} joins. Spawn to owning (dispatching) its whole share: p50 {_s(s1['p50'])} s, max "
        f"{_s(s1['max'])} s; its first dispatch to its whole share: p50 {_s(s2['p50'])} s, max {_s(s2['max'])} s. "
        f"Shares: {', '.join(str(j['share']) for j in data['joins'])} of 60 entries. Over the whole sequence "
        f"({data['expected']:,} ticks due): {data['missing']} missed, {data['duplicates']} duplicated."
    )
    add("")
    add("RedBeat and stock beat have no rebalance: one beat sends everything, whatever joins.")
    add("")


def _caveats(add: Any) -> None:
    add("## Caveats")
    add("")
    add(
        "- One machine runs everything: the Kafka broker, redis-server, up to three beats and the harness share its "
        "cores, so absolute times include CPU contention. Compare the systems within this run, not with other "
        "machines; ratios are taken pair by pair in the same run."
    )
    add(
        "- One Kafka broker (replication factor 1): a production cluster with three brokers adds a replication round "
        "trip to each append (a few ms on a LAN). The chaos runs (docs/reliability.md) use three brokers."
    )
    add(
        "- *Expected* ticks are the schedule's long-run average over the window. A spread schedule's first round "
        "is up to 1.44 times denser (all entries start together), so counts above the expectation are normal. "
        "RedBeat runs every new entry at once on its first start (an entry that never ran is due), which shifts "
        "all its phases by that burst: its counts can fall short of the expectation without a tick lost."
    )
    add(
        "- RedBeat and stock beat are measured with the same Celery, kombu and Redis; RedBeat's lock and schedule "
        "live in database 1 of the same redis-server."
    )
    add(
        "- Stock beat has no failover; its rows show a supervisor that restarts it at once (systemd with "
        "`RestartSec=0`, say), which no real supervisor beats, and which cannot cover a machine that is gone."
    )
    add(
        "- RedBeat's defaults cannot be measured 30 times in an hour (the lock outlives a kill by up to 25 minutes); "
        "its row shows one kill, the lock's remaining time read from Redis, and whether the standby took over "
        "within the watch."
    )
    add("")


def _plt() -> Any:
    try:
        import matplotlib  # noqa: PLC0415 - optional (dev extra): without it the report has no plots

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plot_failover(data: dict[str, Any], path: Path) -> Path | None:
    plt = _plt()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, sig in zip(axes, ("SIGKILL", "SIGTERM"), strict=True):
        labels, values = [], []
        for s in data["systems"]:
            v = [f["delay_ms"] / 1000 for f in s["faults"] if f["signal"] == sig and f["delay_ms"] is not None]
            labels.append(s["label"].replace(", ", "\n").replace(" (", "\n("))
            values.append(v or [math.nan])
        ax.boxplot(values, whis=(0, 100))
        ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
        ax.set_ylabel("next tick late by (s)")
        ax.set_title(f"{sig}: how late the first tick after the fault went out")
        ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, path)


def _plot_lateness(data: dict[str, Any], path: Path) -> Path | None:
    plt = _plt()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = sorted({r["label"] for r in data["rows"]})
    for label in labels:
        rows = sorted((r for r in data["rows"] if r["label"] == label), key=lambda r: r["entries"])
        ax.plot([r["entries"] for r in rows], [max(r["late_ms"]["p99"], 0.5) for r in rows], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("entries")
    ax.set_ylabel("lateness p99 (ms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _plot_throughput(data: dict[str, Any], path: Path) -> Path | None:
    plt = _plt()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in data["systems"]:
        ax.plot(
            [st["rate"] for st in s["steps"]],
            [max(st["late_ms"]["p99"], 0.5) for st in s["steps"]],
            marker="o",
            label=s["label"],
        )
    ax.axhline(100, color="grey", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("ticks per second (offered)")
    ax.set_ylabel("lateness p99 (ms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)
