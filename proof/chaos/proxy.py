"""TCP proxies that can cut a client off from Kafka while it keeps running: the harness's network partition.

Each replica slot reaches every broker only through its own proxies (one per broker, on the ports the broker
advertises for that slot's listener, see ``KafkaCluster(client_listeners=...)``), so cutting a slot partitions
exactly that replica from the whole cluster, while it still reaches the Celery broker. The harness gives every
replica two slots, one for its consumer and one for its other clients (producer, admin): cutting both is a
network partition, cutting the consumer's alone makes a replica that can write but not read.

A cut behaves like a network that drops packets, not like one that refuses them: nothing is closed, bytes
already on their way are held (in the proxy's stream buffers and the kernel's) and
connections accepted meanwhile are not connected onwards. On heal everything held flows again, in order, so a
request a replica sent before or during the partition can reach the broker long after it was sent: the late
write of a zombie, which the protocol must fence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Coroutine
from typing import Any

__all__ = ["Partitioner"]

log = logging.getLogger(__name__)

_CHUNK = 65536


class Partitioner:
    """Proxies grouped by slot, run by one asyncio loop in a daemon thread; :meth:`cut` / :meth:`heal` a slot."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._gates: dict[int, asyncio.Event] = {}
        self._servers: list[asyncio.Server] = []
        self._thread = threading.Thread(target=self._loop.run_forever, name="partitioner", daemon=True)
        self._thread.start()

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def add(self, slot: int, listen_port: int, target_port: int) -> None:
        """Listen on 127.0.0.1:``listen_port`` and forward to 127.0.0.1:``target_port`` while ``slot`` is open."""
        self._call(self._add(slot, listen_port, target_port))

    async def _add(self, slot: int, listen_port: int, target_port: int) -> None:
        gate = self._gates.setdefault(slot, asyncio.Event())
        gate.set()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._connection(gate, target_port, reader, writer)

        self._servers.append(await asyncio.start_server(accept, "127.0.0.1", listen_port, reuse_address=True))

    def cut(self, slot: int) -> None:
        """Close ``slot``'s gate; returns once it is closed (nothing passes it after this returns)."""
        self._call(self._gate(slot, open_=False))

    def heal(self, slot: int) -> None:
        """Open ``slot``'s gate again; returns once it is open."""
        self._call(self._gate(slot, open_=True))

    async def _gate(self, slot: int, *, open_: bool) -> None:
        if open_:
            self._gates[slot].set()
        else:
            self._gates[slot].clear()

    def close(self) -> None:
        async def shutdown() -> None:
            for server in self._servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self._call(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    @staticmethod
    async def _connection(
        gate: asyncio.Event, target_port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            await gate.wait()  # a connection made during a cut hangs, as a SYN into a partition would
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:  # the broker is down: refuse, as it would
            writer.close()
            return
        except asyncio.CancelledError:  # the proxy is closing
            writer.close()
            raise
        await asyncio.gather(_pipe(gate, reader, up_writer), _pipe(gate, up_reader, writer))


async def _pipe(gate: asyncio.Event, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(_CHUNK)
            await gate.wait()  # held while cut, then delivered in order
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
