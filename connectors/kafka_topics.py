"""Create the bridge's Kafka topics (one per domain, plus the derived-events topic) if missing."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from events.subjects import DOMAIN_TOPICS
from pipeline.settings import Settings

log = logging.getLogger(__name__)


def bridge_topics(settings: Settings) -> list[str]:
    """The six domain topics (``wo.workorder`` ...) and the egress topic (``wo.derived``)."""
    return [*DOMAIN_TOPICS.values(), settings.egress_topic]


async def ensure_topics(
    bootstrap: str,
    topics: list[str],
    *,
    partitions: int,
    replication_factor: int = 1,
    request_timeout_ms: int = 10_000,
) -> dict[str, int]:
    """Create the topics that do not exist; return each topic's partition count.

    An existing topic is left alone even if its partition count differs (adding partitions
    would move keys to other partitions and break per-key order); the difference is logged.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=request_timeout_ms)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            response = await admin.create_topics(
                [NewTopic(t, partitions, replication_factor) for t in missing]
            )
            for topic, code, *_ in response.topic_errors:
                error = for_code(code)
                # A concurrent creator (another bridge, an auto-create) is fine.
                if code and error is not TopicAlreadyExistsError:
                    raise error(f"creating topic {topic}")
            log.info("created Kafka topics %s with %d partitions", missing, partitions)
        counts: dict[str, int] = {}
        for meta in await admin.describe_topics(topics):
            counts[meta["topic"]] = len(meta["partitions"])
        for topic, count in counts.items():
            if count != partitions:
                log.warning(
                    "Kafka topic %s has %d partitions, configured %d; left as is",
                    topic, count, partitions,
                )  # fmt: skip
        return counts
    finally:
        await admin.close()
