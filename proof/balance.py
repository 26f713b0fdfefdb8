"""How evenly the balancer spreads entries, and how much a join or a leave moves: ``python -m proof.balance``.

Runs :class:`~celery_kafka_beat.protocol.assignment.Balancer` the way the nodes do (every node asks it afresh from
the folded state, and the nodes then own what it answered) over a grid of cluster sizes and entry counts, and
prints, against the bounds the issue set:

* equal periods: the most entries one replica owns, against ``ceil(n/k) + 1`` (n from 1 to 10,000, k 2 to 20);
* mixed periods (1 s to 1 day): the highest tick rate one replica carries over the mean, for ``n >= 3k``, split by
  whether the heaviest entry weighs at most a quarter of the mean (otherwise no assignment can stay within
  1.25x the mean, and the bound is ``mean + heaviest``);
* a join: what it moves over the newcomer's ideal share (entries with equal periods, tick rate with mixed);
* a leave: what it moves besides the leaver's own entries (with mixed periods, a light entry or two may make room
  for a heavy one of the leaver's).

Deterministic (seeded); ``--quick`` samples fewer cases (the unit tests use it).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from celery_kafka_beat.protocol.assignment import Balancer

#: Periods (seconds) of the mixed schedules: every second to once a day.
MIXED_PERIODS = (1, 5, 10, 30, 60, 300, 600, 3600, 86400)
#: Entry counts sampled besides every count from 1 to 40.
COUNTS = (50, 64, 99, 100, 128, 250, 333, 500, 999, 1000, 2500, 3333, 5000, 9999, 10000)


@dataclass
class Figures:
    cases: int = 0
    equal_over_bound: int = 0
    """Cases (equal periods) where a replica owned more than ceil(n/k) + 1 entries."""
    equal_worst_over_ceil: int = -(10**9)
    """The most entries any replica owned above ceil(n/k)."""
    mixed_feasible_worst: float = 0.0
    """Highest load over the mean, n >= 3k, heaviest entry at most a quarter of the mean."""
    mixed_heavy_worst_over_bound: float = 0.0
    """Highest load over ``mean + heaviest``, n >= 3k, heaviest entry above a quarter of the mean."""
    mixed_heavy_cases: int = 0
    join_worst: dict[str, float] = field(default_factory=dict)
    """Moved over the ideal share, by kind of case."""
    join_mean: dict[str, float] = field(default_factory=dict)
    leave_extra: int = 0
    """The most entries a leave moved besides the leaver's."""
    seconds: float = 0.0


def settle(
    balancer: Balancer, weights: Mapping[str, int], sessions: list[str], owned: Mapping[str, set[str]]
) -> dict[str, set[str]]:
    """What the sessions own once they own what the balancer says (asked from ``owned``); checks the answer is
    stable (asked again, it moves nothing)."""
    candidates = dict.fromkeys(weights, frozenset(sessions))
    answer = balancer.balance(weights, candidates, owned)
    result: dict[str, set[str]] = {s: set() for s in sessions}
    for entry, session in answer.items():
        result[session].add(entry)
    moved = balancer.moves(weights, candidates, result)
    if moved:
        raise AssertionError(f"not settled: asked again, the balancer moves {len(moved)}")
    return result


def cases(quick: bool, seed: int = 2026) -> Iterator[tuple[int, int, bool, random.Random]]:
    rnd = random.Random(seed)
    counts = [*range(1, 41), *COUNTS]
    for n in counts:
        for k in range(2, 21):
            if quick and rnd.random() > 0.08:
                continue
            yield n, k, True, rnd
            if n >= 3 * k or rnd.random() < 0.3:
                yield n, k, False, rnd


def measure(quick: bool = False) -> Figures:
    figures = Figures()
    started = time.monotonic()
    balancer = Balancer()
    joins: dict[str, list[float]] = {}
    for n, k, equal, rnd in cases(quick):
        figures.cases += 1
        tag = f"{n}-{k}-{'eq' if equal else 'mix'}"
        weights = {f"{tag}-e{i}": 1000 if equal else round(86_400_000 / rnd.choice(MIXED_PERIODS)) for i in range(n)}
        sessions = [f"{tag}-s{j}" for j in range(k)]
        owned = settle(balancer, weights, sessions, {})
        loads = {s: sum(weights[e] for e in es) for s, es in owned.items()}
        total, heaviest = sum(weights.values()), max(weights.values())
        mean = total / k
        if equal:
            most = max(len(es) for es in owned.values())
            figures.equal_worst_over_ceil = max(figures.equal_worst_over_ceil, most - math.ceil(n / k))
            figures.equal_over_bound += most > math.ceil(n / k) + 1
        elif n >= 3 * k:
            if heaviest <= mean / 4:
                figures.mixed_feasible_worst = max(figures.mixed_feasible_worst, max(loads.values()) / mean)
            else:
                figures.mixed_heavy_cases += 1
                figures.mixed_heavy_worst_over_bound = max(
                    figures.mixed_heavy_worst_over_bound, max(loads.values()) / (mean + heaviest)
                )
        # A join: the newcomer's ideal share is n/(k+1) entries (equal) or W/(k+1) tick rate (mixed).
        joined = settle(balancer, weights, [*sessions, f"{tag}-new"], owned)
        before = {e: s for s, es in owned.items() for e in es}
        moved = [e for s, es in joined.items() for e in es if before[e] != s]
        if equal:
            ratio = len(moved) / max(1, math.ceil(n / (k + 1)))
        else:
            ratio = sum(weights[e] for e in moved) / (total / (k + 1))
        kind = f"{'equal' if equal else 'mixed'}, n {'>=' if n >= 3 * k else '<'} 3k"
        joins.setdefault(kind, []).append(ratio)
        # A leave: only the leaver's entries should move.
        gone = sessions[0]
        left = settle(balancer, weights, sessions[1:], {s: es for s, es in owned.items() if s != gone})
        after = {e: s for s, es in left.items() for e in es}
        figures.leave_extra = max(figures.leave_extra, sum(1 for e, s in before.items() if s != gone and after[e] != s))
    figures.join_worst = {kind: max(r) for kind, r in sorted(joins.items())}
    figures.join_mean = {kind: sum(r) / len(r) for kind, r in sorted(joins.items())}
    figures.seconds = time.monotonic() - started
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="sample about a tenth of the cases")
    args = parser.parse_args(argv)
    f = measure(args.quick)
    print(f"{f.cases} cases in {f.seconds:.0f} s (n 1..10,000, k 2..20)")
    print(
        f"equal periods: most entries on one replica above ceil(n/k): {f.equal_worst_over_ceil} "
        f"(cases above ceil(n/k) + 1: {f.equal_over_bound})"
    )
    print(f"mixed periods, n >= 3k, heaviest <= mean/4: highest load {f.mixed_feasible_worst:.3f}x the mean")
    print(
        f"mixed periods, n >= 3k, heaviest > mean/4 ({f.mixed_heavy_cases} cases): highest load "
        f"{f.mixed_heavy_worst_over_bound:.3f}x (mean + heaviest)"
    )
    for kind in f.join_worst:
        print(
            f"join, {kind}: moved {f.join_mean[kind]:.2f}x the ideal share on average, "
            f"{f.join_worst[kind]:.2f}x at most"
        )
    print(f"leave: entries moved besides the leaver's: at most {f.leave_extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
