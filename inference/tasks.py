"""Celery tasks: thin wrappers that take ids and call the job steps and services. Nothing
imports this module (the steps that queue a task look it up by name): Celery loads it."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections

from inference.jobs.execute import job_execute
from inference.rag.services import document_ingest, embed_batch_answer
from inference.worker.runtime import get_runtime

logger = logging.getLogger(__name__)


@shared_task(
    bind=True,
    name="inference.run_job",
    acks_late=True,  # a worker killed mid-job must not have acked it (DESIGN.md §4)
    reject_on_worker_lost=True,
    ignore_result=True,  # the job row is the result
)
def run_job(self: Any, job_id: str) -> None:
    # Postgres or Redis restarting is not this job's failure: wait for them (the job is
    # idempotent; a half-done attempt is taken over once its lease expires), up to its deadline.
    deadline = time.monotonic() + settings.SLUICE_JOB_TIMEOUT_S
    delay = 0.5
    while True:
        try:
            job_execute(job_id=job_id, worker=self.request.hostname or "", runtime=get_runtime)
            return
        except (OperationalError, InterfaceError, redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("job %s: store unavailable (%s); retrying in %.1fs", job_id, exc, delay)
            close_old_connections()
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


@shared_task(
    name="inference.ingest_document",
    acks_late=True,  # a killed embeddings worker re-runs the document (ingestion is idempotent)
    reject_on_worker_lost=True,
    ignore_result=True,
)
def ingest_document(document_id: str, revision: int) -> None:
    document_ingest(document_id=document_id, revision=revision)


@shared_task(name="inference.embed_batch", ignore_result=True)
def embed_batch(rpc_id: str, inputs: list[Any]) -> None:
    embed_batch_answer(rpc_id=rpc_id, inputs=inputs)
