"""Assemble an Apache Kafka broker from Maven Central jars and cache it on disk.

Maven copies ``org.apache.kafka:kafka_2.13`` and its runtime dependencies into
``<home>/kafka-<version>/libs``; a marker file written after a complete copy makes later starts offline.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_KAFKA_VERSION",
    "INSTALL_HINT",
    "TESTED_KAFKA_VERSIONS",
    "DevKafkaError",
    "KafkaDistribution",
    "assemble",
    "devkafka_home",
    "find_java",
    "find_maven",
    "tail_text",
]

DEFAULT_KAFKA_VERSION = "4.1.1"
# Versions this tool is tested with; other 3.x/4.x releases usually work (3.x selects log4j 1 logging).
TESTED_KAFKA_VERSIONS = ("4.1.1", "3.9.1")
INSTALL_HINT = "install Java 17+ and Maven, e.g. `apt-get install openjdk-17-jre-headless maven`"
HOME_ENV = "CKB_DEVKAFKA_HOME"

# Why 900 s: the first assembly downloads ~45 MB of jars plus Maven plugins; slow links need minutes, but a
# hung Maven must still end with an error rather than block a test session forever.
MAVEN_TIMEOUT_S = 900.0
# Why 40 lines: enough to show a Java stack trace's head or Maven's [ERROR] block, short enough to read.
TAIL_LINES = 40

log = logging.getLogger(__name__)

_PACKAGE_DIR = Path(__file__).resolve().parent
_MARKER = "ASSEMBLED.json"
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")

# Kafka 3.x logs through reload4j (log4j 1 API); stdout goes to the node's server.log, as with log4j2.xml.
_LOG4J1_PROPERTIES = """\
# log4j 1 configuration for Kafka 3.x brokers started by celery_kafka_beat.testing.devkafka.
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
# Config dumps are hundreds of lines and would push errors out of the quoted log tail.
log4j.logger.org.apache.kafka.common.config.AbstractConfig=WARN
log4j.logger.kafka.server.KafkaConfig=WARN
log4j.logger.org.apache.kafka.clients=WARN
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
"""


class DevKafkaError(RuntimeError):
    """Kafka could not be assembled, started or stopped.

    ``summary`` is one line naming the cause; ``details`` holds supporting output such as a log tail.
    """

    def __init__(self, summary: str, details: str = "") -> None:
        self.summary = summary
        self.details = details
        super().__init__(f"{summary}\n{details}" if details else summary)


def tail_text(text: str, lines: int = TAIL_LINES) -> str:
    """Return the last ``lines`` lines of ``text``."""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def _project_root() -> Path | None:
    """The checkout root when this package runs from a source tree, else None."""
    root = _PACKAGE_DIR.parents[2]
    try:
        meta = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return root if meta.get("project", {}).get("name") == "celery-kafka-beat" else None


def devkafka_home() -> Path:
    """Directory holding assembled Kafka versions, cluster workdirs and the CLI state file.

    ``$CKB_DEVKAFKA_HOME`` if set; else ``<checkout>/.devkafka`` (git-ignored) when running from a checkout;
    else ``$XDG_CACHE_HOME/celery-kafka-beat/devkafka`` (default ``~/.cache/...``).
    """
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser().resolve()
    root = _project_root()
    if root is not None:
        return root / ".devkafka"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "celery-kafka-beat" / "devkafka"


def find_java() -> str:
    """Path of the ``java`` executable (``$JAVA_HOME/bin/java`` first, then ``PATH``)."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise DevKafkaError(f"java not found (JAVA_HOME unset or invalid, none on PATH): {INSTALL_HINT}")
    return found


def find_maven() -> str:
    """Path of ``mvn``; only needed when a Kafka version is not cached yet."""
    found = shutil.which("mvn")
    if found is None:
        raise DevKafkaError(
            f"mvn not found on PATH; Maven is needed once to download Kafka from Maven Central: {INSTALL_HINT}"
        )
    return found


def parse_version(version: str) -> tuple[int, int, int]:
    """Validate a Kafka release number such as ``4.1.1``; KRaft-only tooling needs 3.x or later."""
    match = _VERSION_RE.match(version)
    if match is None or int(match.group(1)) < 3:
        raise DevKafkaError(
            f"unsupported Kafka version {version!r}: expected X.Y.Z with X >= 3 "
            f"(tested: {', '.join(TESTED_KAFKA_VERSIONS)})"
        )
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


@dataclass(frozen=True)
class KafkaDistribution:
    """An assembled Kafka version: a folder of jars plus how to configure its logging."""

    version: str
    root: Path

    @property
    def libs(self) -> Path:
        return self.root / "libs"

    @property
    def classpath(self) -> str:
        # The JVM expands a trailing `*` to every jar in the folder.
        return str(self.libs / "*")

    @property
    def uses_log4j1(self) -> bool:
        """Kafka 3.x logs through log4j 1 (reload4j); 4.x through log4j2."""
        return parse_version(self.version)[0] < 4

    def write_log_config(self, directory: Path) -> list[str]:
        """Write the logging config into ``directory``; return the JVM options that select it."""
        if self.uses_log4j1:
            path = directory / "log4j.properties"
            path.write_text(_LOG4J1_PROPERTIES, encoding="utf-8")
            return [f"-Dlog4j.configuration={path.as_uri()}"]
        path = directory / "log4j2.xml"
        shutil.copyfile(_PACKAGE_DIR / "log4j2.xml", path)
        return [f"-Dlog4j2.configurationFile={path}"]


def _complete(root: Path) -> bool:
    """True when the marker exists and every jar it lists is present."""
    try:
        marker = json.loads((root / _MARKER).read_text(encoding="utf-8"))
        jars = marker["jars"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    libs = root / "libs"
    return bool(jars) and all((libs / name).is_file() for name in jars)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock so concurrent test sessions/CLIs don't assemble the same version twice."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def assemble(version: str = DEFAULT_KAFKA_VERSION, home: Path | None = None) -> KafkaDistribution:
    """Return the cached Kafka ``version``, downloading it with Maven first if needed.

    Needs no network (nor Maven) once cached. An interrupted download leaves no marker and is redone.
    """
    parse_version(version)
    home = devkafka_home() if home is None else home
    home.mkdir(parents=True, exist_ok=True)
    dist = KafkaDistribution(version, home / f"kafka-{version}")
    if _complete(dist.root):
        return dist
    with _locked(home / f"kafka-{version}.lock"):
        if _complete(dist.root):  # another process finished while we waited for the lock
            return dist
        _download(dist)
    return dist


def _download(dist: KafkaDistribution) -> None:
    find_java()  # Maven needs Java too; this error message is clearer than Maven's.
    mvn = find_maven()
    root = dist.root
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    pom = root / "pom.xml"
    shutil.copyfile(_PACKAGE_DIR / "pom.xml", pom)
    partial = root / "libs.partial"
    cmd = [
        mvn,
        "-B",
        "-ntp",
        "-Dstyle.color=never",
        "-f",
        str(pom),
        f"-Dkafka.version={dist.version}",
        *(["-Plog4j1"] if dist.uses_log4j1 else []),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={partial}",
    ]
    log_path = root / "maven.log"
    log.info("assembling Kafka %s from Maven Central into %s (once per version)", dist.version, dist.libs)
    try:
        with log_path.open("wb") as out:
            result = subprocess.run(
                cmd, cwd=root, stdout=out, stderr=subprocess.STDOUT, timeout=MAVEN_TIMEOUT_S, check=False
            )
    except subprocess.TimeoutExpired as exc:
        raise DevKafkaError(
            f"Maven did not finish assembling Kafka {dist.version} within {MAVEN_TIMEOUT_S:.0f} s (log: {log_path})",
            tail_text(log_path.read_text(encoding="utf-8", errors="replace")),
        ) from exc
    output = log_path.read_text(encoding="utf-8", errors="replace")
    if result.returncode != 0:
        errors = [line for line in output.splitlines() if line.startswith("[ERROR]") and line[7:].strip()]
        cause = errors[0][7:].strip() if errors else "see log"
        hint = "does this Kafka version exist?" if "Could not find artifact" in cause else "is Maven Central reachable?"
        raise DevKafkaError(
            f"Maven failed (exit code {result.returncode}) assembling Kafka {dist.version}: {cause} "
            f"({hint} log: {log_path})",
            tail_text(output),
        )
    jars = sorted(p.name for p in partial.glob("*.jar"))
    if not any(name.startswith(("kafka_2.13-", "kafka-server-")) for name in jars):
        raise DevKafkaError(f"Maven copied no Kafka jars for {dist.version} (log: {log_path})", tail_text(output))
    partial.rename(dist.libs)
    marker = root / _MARKER
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": dist.version, "jars": jars}, indent=1), encoding="utf-8")
    os.replace(tmp, marker)  # the marker appears atomically, only after every jar is in place
