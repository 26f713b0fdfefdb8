"""Start-up with many entries: how long a node takes to rebuild its state from the topic and to own everything.

    python proof/bench/startup.py [--entries 100000] [--bootstrap HOST:PORT]

Without ``--bootstrap`` it starts a 1-node local Kafka (devkafka). Phase 1: a node starts on an empty topic with N
hourly entries and claims them all (a snapshot is forced by a small ``snapshot_records``); it stops cleanly.
Phase 2: the topic is read back and folded as a starting node does (snapshot + tail). Phase 3: a fresh node starts
on that topic and the time until it is live and owns all N entries is measured. Figures are wall-clock seconds on
this machine; compare them side by side, not across machines.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import time
import uuid
from collections.abc import Iterator

from celery_kafka_beat.protocol import NodeSettings
from celery_kafka_beat.protocol.schedules import IntervalSchedule
from celery_kafka_beat.runtime.kafka import KafkaNode, read_cluster_state
from celery_kafka_beat.testing.devkafka import KafkaCluster


@contextlib.contextmanager
def _kafka(bootstrap: str | None) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    with KafkaCluster(nodes=1) as cluster:
        yield cluster.bootstrap_servers


def _until_owning(node: KafkaNode, n: int, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if node.live and len(node.owned) == n:
            return time.monotonic() - started
        time.sleep(0.05)  # polling a status the node thread updates
    raise SystemExit(f"node {node.node} did not own {n} entries within {timeout} s (owns {len(node.owned)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--bootstrap")
    args = parser.parse_args()
    periods = {f"entry-{i:06d}": 3_600_000 for i in range(args.entries)}
    topic = f"ckb-bench-startup-{uuid.uuid4().hex[:8]}"
    settings = NodeSettings(node="bench", snapshot_records=1000)
    with _kafka(args.bootstrap) as bootstrap:
        first = KafkaNode(bootstrap, topic, settings, periods, IntervalSchedule(periods), lambda d: None)
        first.start()
        cold = _until_owning(first, args.entries, 300)
        first.stop(30)
        t = time.monotonic()
        state = read_cluster_state(bootstrap, topic)
        fold = time.monotonic() - t
        assert len(state.entries) == args.entries
        second = KafkaNode(bootstrap, topic, settings, periods, IntervalSchedule(periods), lambda d: None)
        t = time.monotonic()
        second.start()
        warm = _until_owning(second, args.entries, 300)
        second.stop(30)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"entries: {args.entries}")
    print(f"cold start on an empty topic, until live and owning all: {cold:.2f} s")
    print(f"read the topic and rebuild the state (snapshot + tail): {fold:.2f} s")
    print(f"restart on that topic, until live and owning all: {warm:.2f} s")
    print(f"peak RSS of this process (both nodes, one at a time): {rss:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
