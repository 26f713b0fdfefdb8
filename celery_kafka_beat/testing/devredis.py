"""A throwaway local Redis for the demo and the end-to-end tests (the Celery broker; KafkaScheduler itself never
uses Redis). Runs the system's ``redis-server`` (Debian: ``apt-get install redis-server``) on a free loopback port,
without persistence, in a temporary directory."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Final

__all__ = ["LocalRedis", "RedisUnavailable", "redis_answers"]

# Why 15 s: redis-server answers within milliseconds of starting; a loaded CI machine still fits.
_START_TIMEOUT_S: Final = 15.0


class RedisUnavailable(RuntimeError):
    """redis-server is missing or did not start; the message says what to do."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis server answers PING at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class LocalRedis:
    """``with LocalRedis() as redis: redis.url`` — a redis-server process for the duration of the block."""

    def __init__(self) -> None:
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, port: int | None = None) -> LocalRedis:
        """Start redis-server, on ``port`` if given (a restart after :meth:`stop`), else on a free port."""
        binary = shutil.which("redis-server") or next(
            (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if Path(p).exists()), None
        )
        if binary is None:
            raise RedisUnavailable("redis-server is not installed: apt-get install redis-server")
        self._workdir = tempfile.TemporaryDirectory(prefix="ckb-redis-")
        log = Path(self._workdir.name) / "redis.log"
        self.port = port or _free_port()
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", self._workdir.name, "--logfile", str(log)]
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not redis_answers("127.0.0.1", self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                self.stop()
                raise RedisUnavailable(f"redis-server on port {self.port} did not start:\n{tail}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
