"""The demo: three replicas, one schedule, one owner killed (``python -m celery_kafka_beat.demo``)."""
