"""Broker wall clocks that tests can step at runtime: libfaketime preloaded into a broker's JVM.

The broker reads its offset from a file (``FAKETIME_TIMESTAMP_FILE``, e.g. ``+60``) on every clock call, so
rewriting the file steps its clock at once. What each setting is for (measured with libfaketime 0.9.10 and
OpenJDK 17, Debian 12):

* The ``MT`` (multi-threaded) variant of the library: the plain one, re-reading the file on every call, races
  between threads (they re-parse one shared buffer): 0.4 % of ``currentTimeMillis`` calls from 4 threads returned
  the real time while the file said ``+60``.
* ``FAKETIME_NO_CACHE=1``: re-read the file on every call, so a change shows at once (about 2.6 us per
  ``currentTimeMillis`` instead of 40 ns; an idle broker's CPU stays within the spread of the others, about 4 %
  of a core). The default cache would apply a change up to 10 s late.
* ``FAKETIME_DONT_FAKE_MONOTONIC=1``: ``System.nanoTime`` stays real (only the wall clock steps, like an NTP step).
* ``FAKETIME_FORCE_MONOTONIC_FIX=0``: otherwise the JVM's timed waits on ``CLOCK_MONOTONIC`` condition variables
  (``Thread.sleep``, ``Object.wait``, ``parkNanos``) return at once, and the broker spins a whole core.
* ``NO_FAKE_STAT=1``: file times stay real (Kafka reads segment files' modification times).

libfaketime leaves ``/dev/shm/faketime_shm_<pid>`` and ``/dev/shm/sem.faketime_sem_<pid>`` behind when a process
is killed (it removes them itself only at a normal exit): :func:`remove_shm` deletes them for a reaped process.
"""

from __future__ import annotations

import contextlib
import glob
import os
from pathlib import Path

from .assembly import DevKafkaError

__all__ = ["LIBFAKETIME_ENV", "faketime_env", "find_libfaketime", "read_offset", "remove_shm", "write_offset"]

#: Names the library file to use instead of searching for it.
LIBFAKETIME_ENV = "CKB_LIBFAKETIME"
#: Where Debian's and Ubuntu's ``libfaketime`` package (any architecture) and a ``make install`` put the library.
LIBFAKETIME_GLOBS = (
    "/usr/lib/*/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
    "/usr/local/lib/faketime/libfaketimeMT.so.1",
)
#: The offset file, in each skewable broker's node directory.
OFFSET_FILE = "faketime.rc"
_SHM_DIR = Path("/dev/shm")


def find_libfaketime() -> Path:
    """The multi-threaded libfaketime preload library; :class:`DevKafkaError` saying how to install it if absent."""
    named = os.environ.get(LIBFAKETIME_ENV, "").strip()
    if named:
        if not Path(named).is_file():
            raise DevKafkaError(f"${LIBFAKETIME_ENV}={named}: no such file")
        return Path(named)
    for pattern in LIBFAKETIME_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[0])
    raise DevKafkaError(
        "libfaketime not found (brokers with a steppable clock need it; looked for "
        f"{', '.join(LIBFAKETIME_GLOBS)}): apt-get install libfaketime, or set ${LIBFAKETIME_ENV} to libfaketimeMT.so.1"
    )


def faketime_env(library: Path, offset_file: Path, inherited: dict[str, str]) -> dict[str, str]:
    """The environment of a broker whose wall clock follows ``offset_file``: ``inherited`` without any libfaketime
    setting of its own (a ``FAKETIME`` there would override the file), plus ours."""
    env = {k: v for k, v in inherited.items() if not k.startswith("FAKETIME") and k != "NO_FAKE_STAT"}
    preload = env.get("LD_PRELOAD", "").strip()
    env |= {
        "LD_PRELOAD": f"{library}:{preload}" if preload else str(library),
        "FAKETIME_TIMESTAMP_FILE": str(offset_file),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_FORCE_MONOTONIC_FIX": "0",
        "NO_FAKE_STAT": "1",
    }
    return env


def write_offset(offset_file: Path, seconds: int) -> None:
    """Set the offset, atomically (libfaketime, reading the file on every clock call, never sees half of it)."""
    tmp = offset_file.with_name(offset_file.name + ".tmp")
    tmp.write_text(f"{seconds:+d}\n", encoding="ascii")
    os.replace(tmp, offset_file)


def read_offset(offset_file: Path) -> int:
    """The offset in ``offset_file`` (seconds)."""
    return int(offset_file.read_text(encoding="ascii").strip())


def remove_shm(pid: int) -> None:
    """Delete the shared memory files libfaketime created for process ``pid`` (call only once it is reaped).

    Should the pid already belong to another process under libfaketime, that process keeps its mappings: only
    children it started with ``FAKETIME_SHARED`` would notice, and brokers start none.
    """
    for name in (f"faketime_shm_{pid}", f"sem.faketime_sem_{pid}"):
        with contextlib.suppress(FileNotFoundError):
            (_SHM_DIR / name).unlink()
