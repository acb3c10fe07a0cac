"""The chaos run's topics, and reading what the service writes to them for the whole run."""

from __future__ import annotations

from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from devkit.chaos.verdict import Observed
from devkit.harness import TopicReader, Topics


def run_topics(tag: str) -> Topics:
    """The topics and consumer group of the chaos run ``tag``."""
    return Topics(
        inbound=f"chaos-{tag}.invoice-created",
        results=f"chaos-{tag}.registration-result",
        dead_letters=f"chaos-{tag}.invoice-created.dead-letter",
        group=f"amili-registrar-chaos-{tag}",
    )


class TopicWatcher(TopicReader):
    """Reads the result and dead-letter topics from the start, for the whole run (across a broker
    outage), into what the verdict is given (``observed``)."""

    def __init__(
        self, bootstrap: str, topics: Topics, partitions: dict[str, int], *, read_committed: bool = False
    ) -> None:
        self.observed = Observed()
        self._topics = topics
        watched = [
            TopicPartition(topic, number)
            for topic in (topics.results, topics.dead_letters)
            for number in range(partitions[topic])
        ]
        super().__init__(
            bootstrap, watched, self._observe, name="chaos-topic-watcher", read_committed=read_committed
        )

    def _observe(self, record: ConsumerRecord[Any, Any]) -> None:
        if record.topic == self._topics.results:
            self.observed.add_result(record.value)
        else:
            self.observed.add_dead_letter(record.headers, self._topics.inbound)
