"""celery-kafka-beat: a highly available Celery beat scheduler whose replicas coordinate through one Kafka topic.

``celery beat -S celery_kafka_beat.KafkaScheduler`` (or ``-S kafka``). The scheduler is imported lazily, so that
the protocol core and the tools do not import Celery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery_kafka_beat.scheduler import KafkaScheduler

__all__ = ["KafkaScheduler", "__version__"]

#: The one place the version is set (pyproject.toml reads it from here).
__version__ = "0.1.0.dev0"


def __getattr__(name: str) -> Any:
    if name == "KafkaScheduler":
        from celery_kafka_beat.scheduler import KafkaScheduler  # noqa: PLC0415 - lazy on purpose

        return KafkaScheduler
    raise AttributeError(f"module 'celery_kafka_beat' has no attribute {name!r}")
