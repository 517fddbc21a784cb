"""Baseline (c): a `celery-batches` static-batch worker.

It consumes the same queue and serves the same jobs as Sluice's worker, through the same
model backend and the same Redis Streams, so that only the scheduling differs: celery-batches
flushes up to ``flush_every`` buffered messages as one batch, the batch is prefilled together
and decoded until its longest sequence is done (a finished sequence's slot stays idle), and
nothing new joins until the whole batch has finished.

    celery -A bench.celery_batches_worker worker -P threads -c 1 --prefetch-multiplier 64 -Q <queue>
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import django
from celery import Celery, signals
from celery_batches import Batches

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
django.setup()

from django.conf import settings  # noqa: E402
from django.utils import timezone  # noqa: E402

from inference.backends.torch_local import TorchCausalLMBackend  # noqa: E402
from inference.batching import FinishReason, IncrementalDecoder  # noqa: E402
from inference.core.redis import get_redis  # noqa: E402
from inference.engine import SequenceResult  # noqa: E402
from inference.jobs.finish import job_finish  # noqa: E402
from inference.jobs.prompt import job_prompt  # noqa: E402
from inference.jobstream import StreamEntry  # noqa: E402
from inference.models import Job, JobStatus  # noqa: E402
from inference.sampling_params import SamplingParams  # noqa: E402
from inference.store import get_streams  # noqa: E402
from inference.streams import Progress  # noqa: E402
from inference.versions.registry import default_model  # noqa: E402

logger = logging.getLogger("bench.celery_batches")
app = Celery("sluice-bench-celery-batches")
app.config_from_object("django.conf:settings", namespace="CELERY")

_backend: TorchCausalLMBackend | None = None
_lock = threading.Lock()


def backend() -> TorchCausalLMBackend:
    global _backend
    with _lock:
        if _backend is None:
            model = default_model()
            _backend = TorchCausalLMBackend(
                model.path,
                dtype=settings.SLUICE_DTYPE,
                threads=settings.SLUICE_TORCH_THREADS,
                max_batch_size=settings.SLUICE_MAX_BATCH_SIZE,
                eos_token_ids=sorted(model.info.eos_token_ids),
                vocab_decode=model.info.decode,
            )
            _backend.warmup()
        return _backend


def _heartbeat() -> None:
    """Readiness for /readyz: the heartbeat Sluice's workers write, through the same writer."""
    from inference.worker.heartbeat import beat_write

    model = default_model().name
    name = f"celery-batches@{socket.gethostname()}:{os.getpid()}"
    while True:
        payload = {"name": name, "models": [model], "backend": "celery-batches", "ts": time.time()}
        beat_write(get_redis(), name, payload, ttl_s=15)
        time.sleep(5)


@signals.worker_ready.connect
def _on_ready(**_: Any) -> None:
    backend()
    threading.Thread(target=_heartbeat, daemon=True).start()


# lazy=False: registered now, before the app finalizes. inference.tasks (imported by every
# Django process, in InferenceConfig.ready) declares a shared task of the same name, which
# every app registers when it finalizes unless the name is taken: this worker must run its own.
@app.task(
    base=Batches,
    name="inference.run_job",
    lazy=False,
    flush_every=int(os.environ.get("SLUICE_MAX_BATCH_SIZE", "64")),
    # How long to let a batch fill: celery-batches flushes on this timer even while the
    # previous batch still runs, so a short interval degenerates into batches of one.
    flush_interval=float(os.environ.get("SLUICE_BENCH_FLUSH_INTERVAL_S", "0.25")),
    acks_late=True,
    ignore_result=True,
)
def run_job(requests: list[Any]) -> None:
    static_batch([str(r.args[0]) for r in requests])


def static_batch(job_ids: list[str]) -> None:
    logger.warning("static batch of %d", len(job_ids))
    model = default_model()
    streams = get_streams()
    model_backend = backend()
    jobs: list[tuple[Job, str, SamplingParams, list[int]]] = []
    for job_id in job_ids:
        token = uuid.uuid4().hex
        if not streams.lease_acquire(job_id, token, 600):
            continue
        claimed = Job.objects.filter(id=job_id, status=JobStatus.QUEUED).update(
            status=JobStatus.RUNNING, attempts=1, started_at=timezone.now()
        )
        if not claimed:
            continue
        job = Job.objects.get(id=job_id)
        jobs.append(
            (job, token, SamplingParams.from_dict(job.params), job_prompt(job=job, model=model).prompt_ids)
        )
    if not jobs:
        return
    keys = [str(job.id) for job, _, _, _ in jobs]
    started = time.monotonic()
    firsts = model_backend.add(keys, [ids for _, _, _, ids in jobs], [p for _, _, p, _ in jobs])
    decoders = {
        key: IncrementalDecoder(model_backend.decode, ids)
        for key, (_, _, _, ids) in zip(keys, jobs, strict=True)
    }
    outputs: dict[str, list[int]] = {key: [] for key in keys}
    texts = dict.fromkeys(keys, "")
    first_at = {key: time.monotonic() for key in keys}
    done: set[str] = set()
    step: dict[str, Any] = {key: firsts[key] for key in keys}
    longest = max(p.max_new_tokens for _, _, p, _ in jobs)
    for _ in range(longest):
        items = []
        for (job, token, params, _), key in zip(jobs, keys, strict=True):
            sampled = step.get(key)
            if key in done or sampled is None or isinstance(sampled, Exception):
                continue
            outputs[key].append(sampled.token_id)
            delta = decoders[key].push(sampled.token_id)
            texts[key] += delta
            entry = StreamEntry.token(
                text=delta, token_ids=[sampled.token_id], logprobs=[0.0], completion_tokens=len(outputs[key])
            )
            items.append((key, token, entry))
            if len(outputs[key]) >= params.max_new_tokens:
                done.add(key)
                _finish(
                    job,
                    token,
                    outputs[key],
                    texts[key],
                    started,
                    first_at[key],
                    len(jobs[keys.index(key)][3]),
                )
        if items:
            streams.publish(items)
        if len(done) == len(keys):
            break
        step = model_backend.step()  # static: every row is computed until the longest is done
    model_backend.remove(keys)


def _finish(
    job: Job, token: str, ids: list[int], text: str, started: float, first: float, prompt: int
) -> None:
    result = SequenceResult(
        key=str(job.id),
        finish_reason=FinishReason.LENGTH,
        text=text,
        token_ids=ids,
        logprobs=[],
        prompt_tokens=prompt,
        completion_tokens=len(ids),
        submitted_at=started,
        admitted_at=started,
        first_token_at=first,
        finished_at=time.monotonic(),
    )
    job_finish(job=job, attempt=1, token=token, result=result, progress=Progress())


if not isinstance(app.tasks["inference.run_job"], Batches):
    raise RuntimeError("the static-batch task must own inference.run_job in this worker")
