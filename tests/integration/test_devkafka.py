"""celery_kafka_beat.testing.devkafka against real brokers: topics, idempotent produce, failover, start errors, CLI,
broker clock steps (libfaketime) and partition leader moves."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import (
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

# The admin classes are documented there but not re-exported in a way mypy's strict mode accepts.
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType  # type: ignore[attr-defined]

from celery_kafka_beat.testing.devkafka import DEFAULT_KAFKA_VERSION, DevKafkaError, KafkaCluster, assemble, faketime
from celery_kafka_beat.testing.devkafka.assembly import find_java
from celery_kafka_beat.testing.devkafka.reassign import decode_response, encode_request

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Why 60 s: generous bound for admin/produce/consume round trips that take milliseconds on loopback, and
# several seconds only while leadership moves after a broker crash (3 s session timeout).
EVENT_TIMEOUT_S = 60.0
# Why 0.1 s: interval for polling cluster metadata until a condition holds (not a synchronising sleep).
POLL_INTERVAL_S = 0.1


def wait_until(condition: Callable[[], bool], what: str, timeout: float = EVENT_TIMEOUT_S) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


def create_topic(admin: AdminClient, name: str, config: dict[str, str], replication_factor: int = -1) -> None:
    """Create a 1-partition topic (replication factor -1 = broker default) and wait for the result."""
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=1, replication_factor=replication_factor, config=config)],
        operation_timeout=30,
    )
    futures[name].result(timeout=EVENT_TIMEOUT_S)


def produce(bootstrap: str, topic: str, values: list[str]) -> list[Message]:
    """Produce ``values`` with an idempotent acks=all producer; return the delivery reports in order."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 0,
            # Why: librdkafka's 10 s default backoff would slow reconnecting after a broker restart.
            "reconnect.backoff.max.ms": 1000,
            # Why 60 s (default 300 s): an undeliverable record must fail well inside the test timeout.
            "message.timeout.ms": int(EVENT_TIMEOUT_S * 1000),
        }
    )
    reports: list[Message] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        reports.append(msg)

    for value in values:
        producer.produce(topic, key=value.encode(), value=value.encode(), on_delivery=on_delivery)
    remaining = producer.flush(EVENT_TIMEOUT_S)  # returns once every delivery report has been served
    assert remaining == 0, f"{remaining} records still in flight"
    assert errors == []
    assert len(reports) == len(values)
    return reports


def consume_all(bootstrap: str, topic: str, count: int) -> list[Message]:
    """Read ``count`` records of partition 0 from offset 0 by manual assignment (no group membership)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"devkafka-test-{uuid.uuid4().hex}",  # required by librdkafka; nothing joins it
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
            "reconnect.backoff.max.ms": 1000,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        records: list[Message] = []
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        while len(records) < count and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            records.append(msg)
        assert len(records) == count, f"read {len(records)} of {count} records"
        return records
    finally:
        consumer.close()


def values_of(messages: list[Message]) -> list[str]:
    return [(m.value() or b"").decode() for m in messages]


# ------------------------------------------------------------------------------------------ single broker


@pytest.mark.kafka
def test_topic_with_one_partition_and_log_append_time(admin: AdminClient, topic_name: str) -> None:
    create_topic(admin, topic_name, {"message.timestamp.type": "LogAppendTime"})

    metadata = admin.list_topics(topic_name, timeout=EVENT_TIMEOUT_S)
    assert list(metadata.topics[topic_name].partitions) == [0]
    resource = ConfigResource(ResourceType.TOPIC, topic_name)
    configs = admin.describe_configs([resource])[resource].result(timeout=EVENT_TIMEOUT_S)
    assert configs["message.timestamp.type"].value == "LogAppendTime"


@pytest.mark.kafka
def test_idempotent_produce_and_assigned_consume(kafka_bootstrap: str, admin: AdminClient, topic_name: str) -> None:
    create_topic(admin, topic_name, {"message.timestamp.type": "LogAppendTime"})
    values = [f"value-{i}" for i in range(20)]
    before_ms = int(time.time() * 1000)

    reports = produce(kafka_bootstrap, topic_name, values)
    records = consume_all(kafka_bootstrap, topic_name, len(values))

    assert values_of(records) == values
    assert [r.offset() for r in records] == list(range(len(values)))
    assert [r.offset() for r in reports] == list(range(len(values)))
    for report, record in zip(reports, records, strict=True):
        assert record.timestamp()[0] == TIMESTAMP_LOG_APPEND_TIME
        # The delivery report already carries the broker's append time (reading your own write).
        assert report.timestamp() == record.timestamp()
    # Broker clock vs. ours on the same machine; 5 s of slack for clock granularity.
    assert records[0].timestamp()[1] >= before_ms - 5000


# ---------------------------------------------------------------------------------------------- 3 nodes


@pytest.mark.kafka3
def test_three_nodes_survive_leader_crash(kafka_cluster3: KafkaCluster, topic_name: str) -> None:
    cluster = kafka_cluster3
    bootstrap = cluster.bootstrap_servers
    admin = AdminClient({"bootstrap.servers": bootstrap})
    create_topic(admin, topic_name, {"message.timestamp.type": "LogAppendTime"}, replication_factor=3)

    def partition() -> Any:
        """Partition 0's metadata (leader, replicas, isr), or None while brokers don't know it yet."""
        topic = admin.list_topics(topic_name, timeout=EVENT_TIMEOUT_S).topics.get(topic_name)
        return None if topic is None or topic.error is not None else topic.partitions.get(0)

    wait_until(lambda: (p := partition()) is not None and len(p.isrs) == 3, "all 3 replicas in sync")
    before = [f"before-{i}" for i in range(20)]
    produce(bootstrap, topic_name, before)
    leader = partition().leader
    assert leader in range(3)  # broker index == node.id

    cluster.kill_broker(leader)
    try:
        assert cluster.broker_pid(leader) is None
        after = [f"after-{i}" for i in range(20)]
        produce(bootstrap, topic_name, after)  # retries until a new leader takes over, then acks=all
        assert values_of(consume_all(bootstrap, topic_name, 40)) == before + after
        assert partition().leader not in (leader, -1)  # moved within produce()'s wait
    finally:
        cluster.restart_broker(leader)

    assert leader in admin.list_topics(timeout=EVENT_TIMEOUT_S).brokers
    wait_until(lambda: leader in partition().isrs, f"broker {leader} back in the in-sync replicas")
    assert cluster.broker_rss_bytes(leader) > 50 * 2**20


# ----------------------------------------------------------------------------------------- start errors


@pytest.mark.kafka
def test_invalid_property_raises_with_cause_and_log_tail(tmp_path: Path) -> None:
    cluster = KafkaCluster(nodes=1, workdir=tmp_path, extra_props={"num.io.threads": "many"})

    with pytest.raises(DevKafkaError) as info:
        cluster.start()

    error = info.value
    assert "Invalid value many for configuration num.io.threads" in error.summary
    assert str(cluster.log_path(0)) in error.summary
    assert "--- last lines of" in error.details
    assert "ConfigException" in error.details
    assert not cluster.is_running(0)


@pytest.mark.kafka
def test_single_node_stop_port_in_use_restart_pause_resume(tmp_path: Path) -> None:
    # A broker restarted after a crash waits until the controller expires the old session: keep it short.
    with KafkaCluster(nodes=1, workdir=tmp_path, broker_session_timeout_ms=3000) as cluster:
        port = cluster.broker_port(0)
        cluster.stop_broker(0)  # graceful: fenced at once, so the restarts below need not wait for expiry
        assert not cluster.is_running(0)
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            with pytest.raises(DevKafkaError) as info:
                cluster.restart_broker(0)
        error = info.value
        assert "exited with code" in error.summary
        assert "Address already in use" in error.summary
        assert "--- last error in" in error.details
        assert "--- last lines of" in error.details

        cluster.restart_broker(0)  # same ports and data once the port is free again
        assert cluster.broker_pid(0) is not None
        assert AdminClient({"bootstrap.servers": cluster.bootstrap_servers}).list_topics(timeout=10).brokers

        cluster.pause_broker(0)  # SIGSTOP: connections are accepted by the kernel but never answered
        with pytest.raises(KafkaException):
            AdminClient({"bootstrap.servers": cluster.bootstrap_servers}).list_topics(timeout=1)
        cluster.resume_broker(0)
        assert AdminClient({"bootstrap.servers": cluster.bootstrap_servers}).list_topics(timeout=10).brokers


# --------------------------------------------------------------------------------------------- Kafka 3.9


@pytest.mark.kafka
def test_kafka_3_9_single_node(topic_name: str) -> None:
    with KafkaCluster(nodes=1, version="3.9.1") as cluster:
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap_servers})
        create_topic(admin, topic_name, {"message.timestamp.type": "LogAppendTime"})
        produce(cluster.bootstrap_servers, topic_name, ["a", "b"])
        records = consume_all(cluster.bootstrap_servers, topic_name, 2)
        assert values_of(records) == ["a", "b"]
        assert records[0].timestamp()[0] == TIMESTAMP_LOG_APPEND_TIME
        log = cluster.log_path(0).read_text(encoding="utf-8")
        assert "Kafka version: 3.9.1" in log  # reload4j logging works


# ------------------------------------------------------------------------------------ assembly and CLI


def test_cache_needs_no_maven_and_incomplete_copy_is_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = assemble(DEFAULT_KAFKA_VERSION, home=tmp_path)
    marker = dist.root / "ASSEMBLED.json"
    assert marker.is_file()
    assert any(dist.libs.glob("kafka_2.13-*.jar"))

    java_only = tmp_path / "bin"
    java_only.mkdir()
    (java_only / "java").symlink_to(find_java())
    monkeypatch.setenv("PATH", str(java_only))
    assert assemble(DEFAULT_KAFKA_VERSION, home=tmp_path) == dist  # cached: neither Maven nor network

    marker.unlink()  # as if the copy had been interrupted
    with pytest.raises(DevKafkaError, match=r"mvn not found.*apt-get install openjdk-17-jre-headless maven"):
        assemble(DEFAULT_KAFKA_VERSION, home=tmp_path)

    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(DevKafkaError, match="java not found"):
        find_java()

    monkeypatch.undo()
    assert assemble(DEFAULT_KAFKA_VERSION, home=tmp_path) == dist
    assert marker.is_file()


def test_maven_failure_shows_its_output(tmp_path: Path) -> None:
    with pytest.raises(DevKafkaError, match=r"Maven failed \(exit code 1\) assembling Kafka 3\.99\.99") as info:
        assemble("3.99.99", home=tmp_path)
    assert "kafka_2.13" in info.value.details
    assert not (tmp_path / "kafka-3.99.99" / "ASSEMBLED.json").exists()


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CKB_DEVKAFKA_HOME": str(home), "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "celery_kafka_beat.testing.devkafka", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.kafka
def test_cli_start_status_stop(tmp_path: Path) -> None:
    # Reuse the already assembled jars instead of copying them again into this temporary home.
    cached = assemble(DEFAULT_KAFKA_VERSION)
    (tmp_path / cached.root.name).symlink_to(cached.root)

    started = run_cli(tmp_path, "start")
    try:
        assert started.returncode == 0, started.stderr
        bootstrap = started.stdout.strip().splitlines()[-1]
        assert bootstrap.startswith("127.0.0.1:")
        assert f"export CKB_KAFKA_BOOTSTRAP={bootstrap}" in started.stderr
        state = tmp_path / "cluster.json"
        assert state.is_file()

        status = run_cli(tmp_path, "status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "brokers listed in metadata: [0]" in status.stdout

        again = run_cli(tmp_path, "start")
        assert again.returncode == 1
        assert again.stderr.strip().splitlines()[-1].startswith("devkafka: error: a devkafka cluster is already")
    finally:
        stopped = run_cli(tmp_path, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not state.exists()
    assert run_cli(tmp_path, "status").returncode == 1


def test_cli_reports_errors_in_one_line(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "fetch", "--version", "2.8.0")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "devkafka: error: unsupported Kafka version '2.8.0': expected X.Y.Z with X >= 3 (tested: 4.1.1, 3.9.1)"
    ]


# ------------------------------------------------------------------------ clock steps and leader moves


def broker_environ(cluster: KafkaCluster, i: int) -> dict[str, str]:
    """The environment broker ``i``'s JVM runs with (from /proc)."""
    pid = cluster.broker_pid(i)
    assert pid is not None, f"broker {i} is not running"
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def faketime_shm(pids: list[int]) -> list[str]:
    """What libfaketime keeps in /dev/shm for these processes."""
    names = {f"faketime_shm_{pid}" for pid in pids} | {f"sem.faketime_sem_{pid}" for pid in pids}
    return sorted(names & set(os.listdir("/dev/shm")))


def append_time_offset(bootstrap: str, topic: str, value: str) -> float:
    """Produce ``value`` and return its LogAppendTime minus this host's time when it was sent (seconds)."""
    sent = time.time()
    (report,) = produce(bootstrap, topic, [value])
    kind, stamp = report.timestamp()
    assert kind == TIMESTAMP_LOG_APPEND_TIME
    return float(stamp / 1000 - sent)


def replicas_in_sync(cluster: KafkaCluster, topic: str) -> int:
    """How many replicas of the topic's partition are in sync (0 while the metadata lacks the topic)."""
    try:
        return len(cluster.partition_state(topic).isr)
    except DevKafkaError:
        return 0


def test_reassignment_request_bytes_and_errors() -> None:
    frame = encode_request("t", 0, [2, 0, 1], 30000, correlation_id=7)
    client = b"celery-kafka-beat-devkafka"
    header = b"\x00\x2d" + b"\x00\x00" + b"\x00\x00\x00\x07" + len(client).to_bytes(2, "big") + client + b"\x00"
    body = (
        (30000).to_bytes(4, "big")  # timeout_ms
        + b"\x02"  # one topic (compact array: length + 1)
        + b"\x02t"  # its name (compact string)
        + b"\x02"  # one partition
        + b"\x00\x00\x00\x00"  # partition 0
        + b"\x04"  # three replicas
        + b"\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x01"
        + b"\x00\x00\x00"  # no tagged fields in the partition, the topic and the request
    )
    assert frame == (len(header) + len(body)).to_bytes(4, "big") + header + body
    cancel = encode_request("t", 0, None, 1000, 1)
    assert cancel.endswith(b"\x02t\x02" + b"\x00\x00\x00\x00" + b"\x00" + b"\x00\x00\x00")  # replicas: null

    def response(code: int, message: bytes | None, partition_code: int) -> bytes:
        msg = b"\x00" if message is None else bytes([len(message) + 1]) + message
        return (
            b"\x00\x00\x00\x07"  # correlation id
            + b"\x00"  # header tagged fields
            + b"\x00\x00\x00\x00"  # throttle
            + code.to_bytes(2, "big")
            + msg
            + b"\x02"  # one topic
            + b"\x02t"
            + b"\x02"  # one partition
            + b"\x00\x00\x00\x00"
            + partition_code.to_bytes(2, "big")
            + b"\x00"  # its message: null
            + b"\x00\x00\x00"  # tagged fields: partition, topic, response
        )

    decode_response(response(0, None, 0), 7)
    with pytest.raises(DevKafkaError, match=r"of t-0 failed: UNKNOWN_TOPIC_OR_PART \(error code 3\)"):
        decode_response(response(0, None, 3), 7)
    with pytest.raises(DevKafkaError, match=r"request failed: CLUSTER_AUTHORIZATION_FAILED .*: denied"):
        decode_response(response(31, b"denied", 0), 7)
    with pytest.raises(DevKafkaError, match="response to request 7, expected 8"):
        decode_response(response(0, None, 0), 8)


def test_missing_libfaketime_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(faketime.LIBFAKETIME_ENV, raising=False)
    monkeypatch.setattr(faketime, "LIBFAKETIME_GLOBS", (str(tmp_path / "nowhere" / "libfaketimeMT.so.1"),))
    cluster = KafkaCluster(nodes=1, workdir=tmp_path / "cluster", clock_skewable=(0,))
    with pytest.raises(DevKafkaError, match=r"libfaketime not found .*: apt-get install libfaketime"):
        cluster.start()
    assert not (tmp_path / "cluster").exists()  # failed before creating anything
    monkeypatch.setenv(faketime.LIBFAKETIME_ENV, str(tmp_path / "libfaketimeMT.so.1"))
    with pytest.raises(DevKafkaError, match=r"\$CKB_LIBFAKETIME=.*: no such file"):
        faketime.find_libfaketime()
    with pytest.raises(ValueError, match=r"must be in 0\.\.2"):
        KafkaCluster(nodes=3, clock_skewable=(3,))
    with pytest.raises(ValueError, match=r"must be in 0\.\.0"):
        KafkaCluster(nodes=1, broker_env={1: {"X": "y"}})


@pytest.mark.kafka
def test_clock_offset_env_restart_and_shm_cleanup(topic_name: str) -> None:
    """One broker under libfaketime: its LogAppendTime follows set_clock_offset at once, a crash and a restart keep
    the environment and the offset, and nothing of libfaketime's stays in /dev/shm."""
    pids: list[int] = []
    with KafkaCluster(
        nodes=1, broker_session_timeout_ms=3000, clock_skewable=(0,), broker_env={0: {"CKB_DEVKAFKA_TEST": "yes"}}
    ) as cluster:
        bootstrap = cluster.bootstrap_servers
        env = broker_environ(cluster, 0)
        assert Path(env["LD_PRELOAD"].split(":")[0]).name == "libfaketimeMT.so.1"
        assert env["FAKETIME_TIMESTAMP_FILE"] == str(cluster.workdir / "node-0" / "faketime.rc")
        assert env["FAKETIME_DONT_FAKE_MONOTONIC"] == "1"
        assert env["CKB_DEVKAFKA_TEST"] == "yes"
        assert cluster.clock_offset(0) == 0
        create_topic(
            AdminClient({"bootstrap.servers": bootstrap}), topic_name, {"message.timestamp.type": "LogAppendTime"}
        )
        assert abs(append_time_offset(bootstrap, topic_name, "true")) < 5

        cluster.set_clock_offset(0, 60)
        assert cluster.clock_offset(0) == 60
        assert abs(append_time_offset(bootstrap, topic_name, "ahead") - 60) < 5
        cluster.set_clock_offset(0, -60.0)
        assert abs(append_time_offset(bootstrap, topic_name, "behind") + 60) < 5

        pid = cluster.broker_pid(0)
        assert pid is not None
        pids.append(pid)
        wait_until(lambda: bool(faketime_shm([pid])), "libfaketime's files of the running broker")
        cluster.kill_broker(0)  # SIGKILL: libfaketime cannot remove its files itself
        assert faketime_shm([pid]) == []
        cluster.restart_broker(0)
        new_pid = cluster.broker_pid(0)
        assert new_pid is not None
        pids.append(new_pid)
        assert broker_environ(cluster, 0)["FAKETIME_TIMESTAMP_FILE"] == env["FAKETIME_TIMESTAMP_FILE"]
        assert cluster.clock_offset(0) == -60
        assert abs(append_time_offset(bootstrap, topic_name, "behind again") + 60) < 5

        with pytest.raises(ValueError, match="whole seconds"):
            cluster.set_clock_offset(0, 1.5)
        cluster.set_clock_offset(0, 0)
        assert abs(append_time_offset(bootstrap, topic_name, "true again")) < 5
    assert faketime_shm(pids) == []


@pytest.mark.kafka3
def test_move_leader_and_quorum_leader(kafka_cluster3: KafkaCluster, topic_name: str) -> None:
    cluster = kafka_cluster3
    bootstrap = cluster.bootstrap_servers
    admin = AdminClient({"bootstrap.servers": bootstrap})
    create_topic(admin, topic_name, {"message.timestamp.type": "LogAppendTime"}, replication_factor=3)
    wait_until(lambda: replicas_in_sync(cluster, topic_name) == 3, "all 3 replicas in sync")
    assert cluster.quorum_leader() in range(3)
    with pytest.raises(DevKafkaError, match="broker 0 has no steppable clock"):
        cluster.set_clock_offset(0, 60)

    start = cluster.partition_state(topic_name).leader
    for target in [b for b in range(3) if b != start] + [start]:
        began = time.monotonic()
        cluster.move_leader(topic_name, 0, target)
        took = time.monotonic() - began
        state = cluster.partition_state(topic_name)
        assert state.leader == target
        assert state.replicas[0] == target  # also the preferred leader now
        assert sorted(state.replicas) == [0, 1, 2]
        print(f"\nleader moved to broker {target} in {took:.2f} s")
        produce(bootstrap, topic_name, [f"led by {target}"])
    cluster.move_leader(topic_name, 0, start)  # already there: nothing to do
    order = [b for b in range(3) if b != start] + [start]
    assert values_of(consume_all(bootstrap, topic_name, 3)) == [f"led by {b}" for b in order]

    lonely = f"{topic_name}-rf1"
    admin.create_topics([NewTopic(lonely, num_partitions=1, replica_assignment=[[1]])])[lonely].result(
        timeout=EVENT_TIMEOUT_S
    )
    wait_until(lambda: replicas_in_sync(cluster, lonely) == 1, "the single replica in sync")
    with pytest.raises(DevKafkaError, match=r"broker 0 holds no replica of .*-rf1-0 \(replicas \(1,\)\)"):
        cluster.move_leader(lonely, 0, 0)


@pytest.mark.kafka3
def test_log_append_time_follows_the_leaders_clock(kafka_cluster3_skewable: KafkaCluster, topic_name: str) -> None:
    """The clock step as the clock-step tests make it: only records the skewed broker appends as leader move."""
    cluster = kafka_cluster3_skewable
    skewed = cluster.clock_skewable[0]
    true = next(b for b in range(3) if b not in cluster.clock_skewable)
    assert cluster.quorum_leader() not in (None, skewed)  # start() keeps the controller on a true clock
    bootstrap = cluster.bootstrap_servers
    create_topic(AdminClient({"bootstrap.servers": bootstrap}), topic_name, {"message.timestamp.type": "LogAppendTime"})
    wait_until(lambda: replicas_in_sync(cluster, topic_name) == 3, "all 3 replicas in sync")
    cluster.move_leader(topic_name, 0, true)
    try:
        cluster.set_clock_offset(skewed, 60)
        assert abs(append_time_offset(bootstrap, topic_name, "follower skewed")) < 5
        cluster.move_leader(topic_name, 0, skewed)
        assert abs(append_time_offset(bootstrap, topic_name, "leader ahead") - 60) < 5
        cluster.set_clock_offset(skewed, -60)
        assert abs(append_time_offset(bootstrap, topic_name, "leader behind") + 60) < 5
        cluster.move_leader(topic_name, 0, true)
        assert abs(append_time_offset(bootstrap, topic_name, "leader true again")) < 5
    finally:
        cluster.set_clock_offset(skewed, 0)
        cluster.move_leader(topic_name, 0, true)
