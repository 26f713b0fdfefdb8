"""The distributions as a user gets them: the sdist and the wheel build without deprecation warnings and pass
``twine check --strict``; the wheel holds the whole package (product, demo, helpers for users' tests) and nothing of
the proof tooling or the tests; installed alone into a fresh virtualenv, outside the checkout, it runs
``celery beat -S kafka`` whose ticks reach the Celery broker, and its pytest plugin, demo and devkafka command work.

The build runs on a copy of the checkout's files (tracked, and new ones not ignored), so that nothing is written into
the checkout and no stale ``*.egg-info`` of it leaks into the sdist. pip fetches the wheel's dependencies (Celery,
kombu, confluent-kafka) through its cache, from the index or ``$PIP_FIND_LINKS``.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import signal
import site
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath
from string import Template

import pytest

import celery_kafka_beat
from tests.e2e.support import Received, Recorder, duplicates

CHECKOUT = Path(__file__).resolve().parents[2]
PACKAGE = "celery_kafka_beat"
#: Files the wheel must hold, named so that a failure says what is missing (the test also compares the whole list
#: with the package's files in the source tree).
REQUIRED = (
    "celery_kafka_beat/__init__.py",
    "celery_kafka_beat/py.typed",
    "celery_kafka_beat/scheduler.py",
    "celery_kafka_beat/config.py",
    "celery_kafka_beat/wire.py",
    "celery_kafka_beat/protocol/node.py",
    "celery_kafka_beat/runtime/kafka.py",
    "celery_kafka_beat/demo/__main__.py",
    "celery_kafka_beat/demo/app.py",
    "celery_kafka_beat/testing/__init__.py",
    "celery_kafka_beat/testing/pytest_plugin.py",
    "celery_kafka_beat/testing/devredis.py",
    "celery_kafka_beat/testing/devkafka/__init__.py",
    "celery_kafka_beat/testing/devkafka/__main__.py",
    "celery_kafka_beat/testing/devkafka/pom.xml",
    "celery_kafka_beat/testing/devkafka/log4j2.xml",
)
#: Directories of the checkout that are never shipped, at any depth of the wheel.
NOT_SHIPPED = frozenset({"proof", "tests", "examples"})
# How setuptools reports a deprecated license table or license classifier: 84.x prints "WARNING `project.license`
# as a TOML table is deprecated" and "License classifiers are deprecated" (checked by hand), older versions a
# SetuptoolsDeprecationWarning.
DEPRECATION = re.compile(r"SetuptoolsDeprecationWarning|deprecat", re.IGNORECASE)
FIXTURES = ("kafka_beat_bootstrap", "kafka_beat_topic", "kafka_beat_app", "kafka_beat_scheduler")
ENTRY = "wheel-check-ping"
NODE = "wheel-check"

# Why 240 s: the build installs setuptools into an isolated environment, then builds the sdist and the wheel from it
# (7 s measured with pip's cache warm); a cold cache downloads setuptools.
BUILD_TIMEOUT_S = 240.0
# Why 240 s: pip installs the wheel, Celery, kombu, confluent-kafka, pytest and redis (about 5 s from pip's cache; a
# cold cache downloads about 15 MB).
INSTALL_TIMEOUT_S = 240.0
# Why 60 s: the commands run in the venv (a venv's creation, imports, --help, pytest --fixtures) take seconds.
COMMAND_TIMEOUT_S = 60.0
# Why 60 s: beat imports Celery, creates the sync topic and claims the entry (2-3 s measured on a warm broker), then
# the entry ticks every 0.5 s.
TICKS_TIMEOUT_S = 60.0
# Why 30 s: KafkaScheduler's clean stop publishes what is decided and hands the entries over within 10 s
# (_STOP_TIMEOUT_S), then beat exits.
STOP_TIMEOUT_S = 30.0

APP_MODULE = Template('''\
"""A user's Celery app, written by tests/packaging/test_wheel.py: one entry every 0.5 s for `celery beat -S kafka`."""

from pathlib import Path

from celery import Celery

import celery_kafka_beat

# Where this process found the package: the test checks that it is the venv's copy.
Path(__file__).with_name("resolved.txt").write_text(celery_kafka_beat.__file__)

app = Celery("wheelapp")
app.conf.update(
    broker_url=$broker,
    broker_connection_retry_on_startup=True,
    task_default_queue=$queue,
    kafka_beat_bootstrap_servers=$kafka,
    kafka_beat_topic=$topic,
    kafka_beat_node_name=$node,
    beat_schedule={$entry: {"task": "wheelapp.ping", "schedule": 0.5}},
)


@app.task(name="wheelapp.ping")
def ping():
    """Nothing runs it: the test reads the messages from the Celery broker."""
''')


def _clean_env(venv: Path | None = None) -> dict[str, str]:
    """This environment without what would let the outer interpreter's paths or pytest options in; with ``venv``,
    that venv activated."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYTEST_")) and k != "VIRTUAL_ENV"}
    if venv is not None:
        env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run(argv: list[str | Path], *, cwd: Path, env: Mapping[str, str], timeout: float) -> str:
    """Run a command; return its output (stdout and stderr together); fail with the output if it fails."""
    result = subprocess.run(
        [str(arg) for arg in argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{' '.join(map(str, argv))} exited {result.returncode}:\n{result.stdout[-5000:]}"
    return result.stdout


def _copy_checkout(dest: Path) -> None:
    """Copy the files a fresh clone would have, plus new files not ignored (what the next commit would ship)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=CHECKOUT,
        capture_output=True,
        timeout=COMMAND_TIMEOUT_S,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = CHECKOUT / name
        if source.is_file():  # tracked files deleted in the working tree are listed too
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


@dataclass(frozen=True)
class Dists:
    source: Path
    """The copy of the checkout they were built from."""
    sdist: Path
    wheel: Path
    output: str
    """What the build printed (stdout and stderr)."""


@dataclass(frozen=True)
class Venv:
    root: Path
    workdir: Path
    """An empty directory outside the checkout, the cwd of every command."""

    @property
    def env(self) -> dict[str, str]:
        return _clean_env(self.root)

    def bin(self, name: str) -> Path:
        return self.root / "bin" / name

    def run(self, *argv: str | Path) -> str:
        return _run(list(argv), cwd=self.workdir, env=self.env, timeout=COMMAND_TIMEOUT_S)

    def python_json(self, code: str) -> object:
        """Run ``code`` in the venv's interpreter; it prints one JSON value."""
        return json.loads(self.run(self.bin("python"), "-c", code))


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    source = tmp_path_factory.mktemp("source")
    _copy_checkout(source)
    out = tmp_path_factory.mktemp("dist")
    # sdist first, then the wheel built from the unpacked sdist (what `pip install <sdist>` would do).
    output = _run(
        [sys.executable, "-m", "build", "--outdir", out, source], cwd=source, env=_clean_env(), timeout=BUILD_TIMEOUT_S
    )
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return Dists(source=source, sdist=sdist, wheel=wheel, output=output)


@pytest.fixture(scope="module")
def installed(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh venv (no system site-packages) with the wheel, pytest, and the Redis client that a project using
    Redis as its Celery broker installs (kombu needs it; the wheel does not depend on it)."""
    base = tmp_path_factory.mktemp("installed")
    workdir = base / "work"
    workdir.mkdir()
    assert not workdir.resolve().is_relative_to(CHECKOUT), f"the temporary directory {workdir} is in the checkout"
    venv = Venv(root=base / "venv", workdir=workdir)
    _run([sys.executable, "-m", "venv", venv.root], cwd=workdir, env=_clean_env(), timeout=COMMAND_TIMEOUT_S)
    # --no-compile: nothing needs the bytecode written ahead of time, and compiling Celery costs seconds.
    _run(
        [
            venv.bin("python"),
            "-m",
            "pip",
            "install",
            "--no-compile",
            "--disable-pip-version-check",
            dists.wheel,
            "pytest",
            "redis",
        ],
        cwd=workdir,
        env=venv.env,
        timeout=INSTALL_TIMEOUT_S,
    )
    return venv


def test_the_build_warns_of_nothing_deprecated(dists: Dists) -> None:
    flagged = [line for line in dists.output.splitlines() if DEPRECATION.search(line)]
    assert flagged == []


def test_twine_check_strict_passes(dists: Dists) -> None:
    output = _run(
        [sys.executable, "-m", "twine", "check", "--strict", dists.sdist, dists.wheel],
        cwd=dists.source,
        env=_clean_env(),
        timeout=COMMAND_TIMEOUT_S,
    )
    assert output.count("PASSED") == 2, output


def test_the_wheel_holds_the_package_and_nothing_else(dists: Dists) -> None:
    with zipfile.ZipFile(dists.wheel) as wheel:
        names = set(wheel.namelist())
        dist_info = f"{PACKAGE}-{celery_kafka_beat.__version__}.dist-info"
        metadata = HeaderParser().parsestr(wheel.read(f"{dist_info}/METADATA").decode())
        entry_points = configparser.ConfigParser()
        entry_points.read_string(wheel.read(f"{dist_info}/entry_points.txt").decode())

    assert sorted(set(REQUIRED) - names) == []
    shipped = {name for name in names if not name.startswith(f"{dist_info}/")}
    in_source = {
        path.relative_to(dists.source).as_posix()
        for path in (dists.source / PACKAGE).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert shipped == in_source
    assert sorted(name for name in names if NOT_SHIPPED & set(PurePosixPath(name).parts[:-1])) == []
    assert {PurePosixPath(name).parts[0] for name in names} == {PACKAGE, dist_info}

    assert metadata["Name"] == "celery-kafka-beat"
    assert metadata["Version"] == celery_kafka_beat.__version__
    assert metadata["License-Expression"] == "Apache-2.0"
    assert [c for c in metadata.get_all("Classifier", []) if c.startswith("License ::")] == []
    requires = {re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0].lower() for r in metadata.get_all("Requires-Dist", [])}
    assert {"celery", "kombu", "confluent-kafka"} <= requires
    assert entry_points["celery.beat_schedulers"]["kafka"] == "celery_kafka_beat.scheduler:KafkaScheduler"
    assert entry_points["pytest11"]["celery_kafka_beat"] == "celery_kafka_beat.testing.pytest_plugin"
    assert "celery-kafka-beat-devkafka" in entry_points["console_scripts"]


def test_the_installed_package_is_the_venvs_own(installed: Venv) -> None:
    cfg = (installed.root / "pyvenv.cfg").read_text()
    assert re.search(r"^include-system-site-packages\s*=\s*false$", cfg, re.MULTILINE), cfg
    found = installed.python_json(
        "import json, sys, sysconfig, celery_kafka_beat; print(json.dumps({'file': celery_kafka_beat.__file__, "
        "'version': celery_kafka_beat.__version__, 'purelib': sysconfig.get_paths()['purelib'], 'path': sys.path}))"
    )
    assert isinstance(found, dict)
    assert Path(found["file"]).resolve().is_relative_to(Path(found["purelib"]).resolve()), found
    assert found["version"] == celery_kafka_beat.__version__
    assert [p for p in found["path"] if p and Path(p).resolve().is_relative_to(CHECKOUT)] == []
    outer = {Path(p).resolve() for p in site.getsitepackages()}  # this test's own environment
    assert [p for p in found["path"] if p and Path(p).resolve() in outer] == []


def test_the_installed_plugin_demo_and_devkafka_command_work(installed: Venv) -> None:
    installed.run(installed.bin("python"), "-c", "import celery_kafka_beat.testing.pytest_plugin")
    installed.run(installed.bin("python"), "-c", "import celery_kafka_beat.demo.app")
    assert "--kill-after" in installed.run(installed.bin("python"), "-m", "celery_kafka_beat.demo", "--help")
    assert "fetch" in installed.run(installed.bin("celery-kafka-beat-devkafka"), "--help")

    # An empty project (its own ini file: no configuration of an enclosing directory applies).
    project = installed.workdir / "fixtures-project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    fixtures = _run(
        [installed.bin("pytest"), "--fixtures", "-p", "no:cacheprovider"],
        cwd=project,
        env=installed.env,
        timeout=COMMAND_TIMEOUT_S,
    )
    assert "fixtures defined from celery_kafka_beat.testing.pytest_plugin" in fixtures, fixtures
    assert [name for name in FIXTURES if not re.search(rf"^{name}\b", fixtures, re.MULTILINE)] == []


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM the process and return its exit code; SIGKILL it (and fail) if it does not stop in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"celery beat did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM") from None


def test_the_installed_beat_dispatches_ticks(
    installed: Venv, kafka_bootstrap: str, topic_name: str, redis_url: str
) -> None:
    # Given a user's app module, outside the checkout, that the venv's `celery` imports
    project = installed.workdir / f"beat-{uuid.uuid4().hex[:8]}"
    project.mkdir()
    queue = f"ckb-wheel-{uuid.uuid4().hex}"
    (project / "wheelapp.py").write_text(
        APP_MODULE.substitute(
            broker=repr(redis_url),
            queue=repr(queue),
            kafka=repr(kafka_bootstrap),
            topic=repr(topic_name),
            node=repr(NODE),
            entry=repr(ENTRY),
        )
    )
    log = project / "beat.log"

    # When `celery -A wheelapp beat -S kafka` runs while a consumer reads the app's queue
    with Recorder(redis_url, queue) as recorder, log.open("wb") as out:
        proc = subprocess.Popen(
            [str(installed.bin("celery")), "-A", "wheelapp", "beat", "-S", "kafka", "--loglevel", "INFO"],
            cwd=project,
            env=installed.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            recorder.wait(
                lambda rs: proc.poll() is not None or sum(r.entry == ENTRY for r in rs) >= 2,
                TICKS_TIMEOUT_S,
                f"two ticks of {ENTRY}",
            )
            assert proc.poll() is None, f"celery beat exited {proc.returncode} before two ticks arrived"
        except AssertionError as exc:
            _stop(proc)
            raise AssertionError(f"{exc}\n--- beat's log ---\n{log.read_text(errors='replace')[-5000:]}") from None
        code = _stop(proc)
        received: list[Received] = recorder.snapshot()
    text = log.read_text(errors="replace")

    # Then its ticks reached the Celery broker as task messages with the entry's headers, and beat stopped cleanly
    assert code == 0, text[-5000:]
    assert recorder.errors == []
    mine = [r for r in received if r.entry == ENTRY]
    assert len(mine) >= 2
    assert {(r.task, r.node) for r in mine} == {("wheelapp.ping", NODE)}
    assert duplicates(received) == {}
    assert f"KafkaScheduler: node {NODE} stopped" in text, text[-5000:]
    assert "its lease will lapse" not in text, text[-5000:]
    # The beat process ran the venv's copy of the package.
    site = installed.python_json("import json, sysconfig; print(json.dumps(sysconfig.get_paths()['purelib']))")
    assert isinstance(site, str)
    assert Path((project / "resolved.txt").read_text()).resolve().is_relative_to(Path(site).resolve())
