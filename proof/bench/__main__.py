"""``python -m proof.bench``: the benchmark suite (celery-kafka-beat, stock Celery beat and RedBeat, side by side in one
run, on one machine) and its report.

    python -m proof.bench run [--quick] [--only failover,lateness,...] [--kills 30] [--out docs/benchmarks.md]
    python -m proof.bench report RUN_DIR [--out docs/benchmarks.md]

``run`` starts its own Kafka broker (devkafka, KRaft, from Maven Central) and redis-server (Debian's), runs the
scenarios one after another, keeps everything in a run directory (``bench-runs/<time>``: beat logs, publish
records, ``results.json``, updated after each scenario) and writes the report. ``--quick`` is a smoke run (few
kills, short windows, small sizes) whose figures are not for publishing.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from proof.bench import report, scenarios
from proof.bench.harness import ROOT, Services

ALL = ["calibrate", "failover", "lateness", "throughput", "startup", "idle", "rebalance"]


def _log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def _params(quick: bool, kills: int | None) -> dict[str, Any]:
    if quick:
        return {
            "kills": kills or 2,
            "late_sizes": [100, 1000],
            "late_s": 8,
            "rate": 200.0,
            "tp_rates": [500.0, 1000.0],
            "tp_entries": 2000,
            "tp_s": 6,
            "startup_sizes": [1000],
            "history": 20_000,
            "idle_s": 10,
            "joins": 1,
            "redbeat_wait": 10,
        }
    return {
        "kills": kills or 30,
        "late_sizes": [100, 1000, 10_000],
        "late_s": 20,
        "rate": 200.0,
        "tp_rates": [500.0, 1000.0, 1500.0, 2000.0, 2500.0, 3000.0, 4000.0, 5000.0],
        "tp_entries": 10_000,
        "tp_s": 10,
        "startup_sizes": [1000, 10_000, 100_000],
        "history": 1_000_000,
        "idle_s": 30,
        "joins": 5,
        "redbeat_wait": 120,
    }


def run(args: argparse.Namespace) -> int:
    only = args.only.split(",") if args.only else ALL
    unknown = set(only) - set(ALL)
    if unknown:
        raise SystemExit(f"--only: unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(ALL)}")
    params = _params(args.quick, args.kills)
    run_dir = Path(args.run_dir or ROOT / "bench-runs" / time.strftime("%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=False)
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "params": params,
        "quick": args.quick,
        "seed": args.seed,
        "machine": report.machine(),
    }
    out = run_dir / "results.json"

    def save() -> None:
        out.write_text(json.dumps(results, indent=1, default=str))

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    _log(f"run directory {run_dir}; scenarios: {', '.join(only)}")
    with Services.started() as services:
        results["machine"]["kafka"] = services.cluster.describe().get("version") if services.cluster else None
        for name in only:
            t = time.monotonic()
            _log(f"== {name}")
            if name == "calibrate":
                results[name] = scenarios.celery_publish_cost(services)
            elif name == "failover":
                results[name] = scenarios.failover(services, run_dir, params["kills"], args.seed, _log)
                results["redbeat_default"] = scenarios.redbeat_default(
                    services, run_dir / "failover-redbeat-default", params["redbeat_wait"], _log
                )
            elif name == "lateness":
                results[name] = scenarios.lateness(
                    services, run_dir, params["late_sizes"], params["rate"], params["late_s"], _log
                )
            elif name == "throughput":
                results[name] = scenarios.throughput(
                    services, run_dir, params["tp_entries"], params["tp_rates"], params["tp_s"], _log
                )
            elif name == "startup":
                results[name] = scenarios.startup(services, run_dir, params["startup_sizes"], params["history"], _log)
            elif name == "idle":
                results[name] = scenarios.idle(services, run_dir, params["idle_s"], _log)
            elif name == "rebalance":
                results[name] = scenarios.rebalance(services, run_dir, params["joins"], _log)
            results.setdefault("durations_s", {})[name] = round(time.monotonic() - t)
            save()
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    save()
    _log(f"results: {out}")
    if args.out:
        report.write(results, Path(args.out), run_dir)
        _log(f"report: {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proof.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the scenarios and write the report")
    r.add_argument("--quick", action="store_true", help="a smoke run: few kills, short windows, small sizes")
    r.add_argument("--only", help=f"comma-separated scenarios (default all: {','.join(ALL)})")
    r.add_argument("--kills", type=int, help="SIGKILLs (and as many SIGTERMs) per system (default 30)")
    r.add_argument("--seed", type=int, default=1, help="seed of the fault instants")
    r.add_argument("--run-dir", help="where to keep the run (default bench-runs/<time>)")
    r.add_argument("--out", default=None, help="write the report here (e.g. docs/benchmarks.md)")
    p = sub.add_parser("report", help="render a run's results.json")
    p.add_argument("run_dir")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args)
    run_dir = Path(args.run_dir)
    report.write(json.loads((run_dir / "results.json").read_text()), Path(args.out), run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
