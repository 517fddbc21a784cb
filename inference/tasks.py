"""Celery tasks: thin wrappers that take ids and call services."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from inference import services


@shared_task(
    bind=True,
    name="inference.run_job",
    acks_late=True,  # a worker killed mid-job must not have acked it (DESIGN.md §4)
    reject_on_worker_lost=True,
    ignore_result=True,  # the job row is the result
)
def run_job(self: Any, job_id: str) -> None:
    services.job_execute(job_id=job_id, worker=self.request.hostname or "")


@shared_task(
    name="inference.ingest_document",
    acks_late=True,  # a killed embeddings worker re-runs the document (ingestion is idempotent)
    reject_on_worker_lost=True,
    ignore_result=True,
)
def ingest_document(document_id: str, revision: int) -> None:
    from inference.rag.services import document_ingest

    document_ingest(document_id=document_id, revision=revision)


@shared_task(name="inference.embed_batch", ignore_result=True)
def embed_batch(rpc_id: str, inputs: list[Any]) -> None:
    from inference.rag.services import embed_batch_answer

    embed_batch_answer(rpc_id=rpc_id, inputs=inputs)
