"""Helpers for users' own tests: a local Apache Kafka assembled from Maven Central (``devkafka``), a local Redis
(``devredis``) and a pytest plugin (``pytest_plugin``, registered through ``pytest11``) with fixtures that give a
test suite a running Kafka and a Celery app configured for ``KafkaScheduler``. See ``docs/testing.md``.

Nothing here is imported by the scheduler itself.
"""
