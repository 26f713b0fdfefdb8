"""One Kafka request spoken over a raw socket: AlterPartitionReassignments (API key 45, version 0).

Why this exists: moving a partition's leader to a chosen broker takes two steps, putting that broker first in
the replica list (a reassignment to the same replicas in another order; no data moves) and then a preferred
leader election. confluent-kafka (librdkafka) binds the election (``AdminClient.elect_leaders``) but not the
reassignment, and starting Kafka's own ``kafka-reassign-partitions`` tool means a JVM start (about a second) per
move. Version 0 of the request is accepted by every Kafka this package runs (3.x and 4.x); any broker forwards it
to the KRaft controller. Only what :meth:`KafkaCluster.move_leader` needs is here: one partition, no
authentication, PLAINTEXT.
"""

from __future__ import annotations

import itertools
import socket
import struct
from collections.abc import Sequence

from confluent_kafka import KafkaError

from .assembly import DevKafkaError

__all__ = ["alter_partition_reassignment", "decode_response", "encode_request"]

API_KEY = 45  # AlterPartitionReassignments
API_VERSION = 0  # a "flexible" version: compact strings and arrays, tagged fields
CLIENT_ID = "celery-kafka-beat-devkafka"
_correlation = itertools.count(1)


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if not n:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _compact_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return _uvarint(len(raw) + 1) + raw


def encode_request(
    topic: str, partition: int, replicas: Sequence[int] | None, timeout_ms: int, correlation_id: int
) -> bytes:
    """The request frame (size prefix included). ``replicas=None`` cancels a pending reassignment."""
    body = struct.pack(">i", timeout_ms)
    body += _uvarint(1 + 1) + _compact_string(topic)  # topics: a compact array of one
    body += _uvarint(1 + 1) + struct.pack(">i", partition)  # partitions: a compact array of one
    if replicas is None:
        body += _uvarint(0)  # a null compact array
    else:
        body += _uvarint(len(replicas) + 1) + b"".join(struct.pack(">i", r) for r in replicas)
    body += b"\x00\x00\x00"  # no tagged fields (partition, topic, request)
    client = CLIENT_ID.encode("ascii")
    # Request header v2: key, version, correlation id, client id (a classic int16-length string), tagged fields.
    header = struct.pack(">hhih", API_KEY, API_VERSION, correlation_id, len(client)) + client + b"\x00"
    frame = header + body
    return struct.pack(">i", len(frame)) + frame


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def fixed(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return int(value)

    def uvarint(self) -> int:
        shift = result = 0
        while True:
            byte = self.data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7

    def compact_nullable_string(self) -> str | None:
        n = self.uvarint()
        if n == 0:
            return None
        text = self.data[self.pos : self.pos + n - 1].decode("utf-8", errors="replace")
        self.pos += n - 1
        return text

    def skip_tagged_fields(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self.pos += self.uvarint()  # size, then the data


def _error(code: int, message: str | None, where: str) -> DevKafkaError:
    name = KafkaError(code).name()
    return DevKafkaError(f"AlterPartitionReassignments {where} failed: {name} (error code {code}): {message or ''}")


def decode_response(data: bytes, correlation_id: int) -> None:
    """Check a response (without its size prefix); raise :class:`DevKafkaError` naming any error it carries."""
    r = _Reader(data)
    got = r.fixed(">i")
    if got != correlation_id:
        raise DevKafkaError(f"AlterPartitionReassignments: response to request {got}, expected {correlation_id}")
    r.skip_tagged_fields()  # response header v1
    r.fixed(">i")  # throttle time
    code = r.fixed(">h")
    message = r.compact_nullable_string()
    if code:
        raise _error(code, message, "request")
    for _ in range(r.uvarint() - 1):
        topic = r.compact_nullable_string()
        for _ in range(r.uvarint() - 1):
            partition = r.fixed(">i")
            code = r.fixed(">h")
            message = r.compact_nullable_string()
            r.skip_tagged_fields()
            if code:
                raise _error(code, message, f"of {topic}-{partition}")
        r.skip_tagged_fields()
    r.skip_tagged_fields()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        buf += chunk
    return bytes(buf)


def alter_partition_reassignment(
    bootstrap: str, topic: str, partition: int, replicas: Sequence[int] | None, timeout_ms: int = 30_000
) -> None:
    """Ask the cluster to reassign ``topic``-``partition`` to ``replicas`` (in that order; the first is the
    preferred leader). Tries each ``host:port`` of ``bootstrap`` until one answers; raises :class:`DevKafkaError`
    when none does or the controller refuses."""
    failures: list[str] = []
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        correlation_id = next(_correlation)
        frame = encode_request(topic, partition, replicas, timeout_ms, correlation_id)
        try:
            # Why + 5 s: the controller may take up to timeout_ms itself before it answers.
            with socket.create_connection((host, int(port)), timeout=timeout_ms / 1000 + 5) as sock:
                sock.sendall(frame)
                (size,) = struct.unpack(">i", _recv_exact(sock, 4))
                data = _recv_exact(sock, size)
        except OSError as exc:
            failures.append(f"{address}: {exc}")
            continue
        decode_response(data, correlation_id)
        return
    raise DevKafkaError(f"AlterPartitionReassignments: no broker answered ({'; '.join(failures)})")
