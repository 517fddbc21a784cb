"""Consumer control: which queues this worker's Celery consumer takes messages from. Each
loaded version's shared queue and this worker's own queue of it (session affinity), added
when the version loads, cancelled when it unloads; the served name's settings queue (the
worker's ``-Q``) always stays."""

from __future__ import annotations

import logging
from typing import Any

# The worker's own app (`celery -A config` made it current): importing config.celery here would
# close an import cycle (config.celery connects this package's signals).
from celery import current_app
from django.conf import settings

from inference.affinity import affinity_queue
from inference.core.broker import celery_queue_keys
from inference.core.redis import get_redis
from inference.versions.registry import queue_for

logger = logging.getLogger(__name__)


def serves(served_names: frozenset[str], name: str) -> bool:
    """Whether a worker started for ``served_names`` (``*``: any) serves the name ``name``."""
    return "*" in served_names or name in served_names


class QueueConsumers:
    def __init__(self, worker: str) -> None:
        self.name = worker
        self.consumed: set[str] = set()
        #: The Celery consumer runs: queues can be added and cancelled.
        self.ready = False

    def queued(self, queue: str) -> int:
        """Messages waiting in ``queue`` (every priority step of it)."""
        client = get_redis()
        return sum(int(client.llen(key) or 0) for key in celery_queue_keys(queue))

    def consume(self, queue: str) -> None:
        """Take a version's shared queue and this worker's own queue of it (session affinity)."""
        if not self.ready:
            return
        for name in (queue, affinity_queue(queue, self.name)):
            if name not in self.consumed:
                current_app.control.add_consumer(name, destination=[self.name], reply=True, timeout=5)
                self.consumed.add(name)

    def cancel(self, queue: str) -> None:
        # The served name's settings queue stays: it is the worker's -Q (and where jobs from
        # before versions wait). Jobs left in the own queue go to the shared one (reconciler).
        if queue not in self.consumed or not self.ready or queue == queue_for(settings.SLUICE_MODEL_NAME):
            return
        for name in (queue, affinity_queue(queue, self.name)):
            if name in self.consumed:
                current_app.control.cancel_consumer(name, destination=[self.name], reply=True, timeout=5)
                self.consumed.discard(name)

    def on_consumer_ready(
        self, consumer: Any, *, served_names: frozenset[str], version_queues: list[str]
    ) -> None:
        """Celery's consumer is up (worker_ready): take the loaded versions' queues, and let go
        of any served name's queue this worker does not serve (a ``-Q`` naming the default
        model on a worker started for another: its jobs would fail "not served here")."""
        for queue in list(consumer.task_consumer.queues):
            name = queue.name.removeprefix("sluice.model.")
            if queue.name.startswith("sluice.model.") and not serves(served_names, name):
                logger.warning("not consuming %s: this worker serves %s", queue.name, sorted(served_names))
                consumer.cancel_task_queue(queue.name)
        self.consumed.update(q.name for q in consumer.task_consumer.queues)
        queues = version_queues
        own = affinity_queue("", self.name)
        prefixes = ("sluice.model.", "sluice.version.")
        shared = [q for q in self.consumed if q.startswith(prefixes) and not q.endswith(own)]
        for queue in {*queues, *shared}:
            for name in (queue, affinity_queue(queue, self.name)):
                if name not in self.consumed:
                    consumer.add_task_queue(name)
                    self.consumed.add(name)
        self.ready = True
