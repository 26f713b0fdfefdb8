"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.support import Deployment


@pytest.fixture
def deploy(kafka_bootstrap: str, redis_url: str, topic_name: str, tmp_path: Path) -> Iterator[Deployment]:
    """A deployment on the session's Kafka and Redis, with this test's own topic and queue; stopped at the end."""
    deployment = Deployment(kafka=kafka_bootstrap, broker=redis_url, topic=topic_name, workdir=tmp_path, schedule={})
    yield deployment
    deployment.stop_all()
