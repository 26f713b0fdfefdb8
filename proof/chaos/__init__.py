"""Fault testing on real processes: a harness (:mod:`.harness`) that runs real ``celery beat`` replicas on a real
3-broker Kafka cluster under a seeded fault plan, a checker (:mod:`.checker`) that judges what reached the Celery
broker, and a report (:mod:`.report`). Run ``python -m proof.chaos --help``; see docs/reliability.md.
"""
