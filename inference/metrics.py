"""Prometheus metrics (names from DESIGN.md §5).

Request-level latencies are observed where the client's experience is: the gateway process
(`/metrics` of the web server). Engine-level series (batch size, generated tokens) are
observed in the worker process and exposed by its own exporter
(``SLUICE_WORKER_METRICS_PORT``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from inference.engine import SequenceResult

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)

TIME_TO_FIRST_TOKEN = Histogram(
    "sluice_time_to_first_token_seconds",
    "Request received to first token sent",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
INTER_TOKEN_LATENCY = Histogram(
    "sluice_inter_token_latency_seconds",
    "Time between two streamed token chunks",
    ["model"],
    buckets=_ITL_BUCKETS,
)
E2E_LATENCY = Histogram(
    "sluice_e2e_request_latency_seconds", "Request received to last byte", ["model"], buckets=_LATENCY_BUCKETS
)
QUEUE_TIME = Histogram(
    "sluice_queue_time_seconds",
    "Job accepted to job admitted into a batch",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "sluice_batch_size",
    "Sequences per engine step",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128),
)
GENERATION_TOKENS = Counter("sluice_generation_tokens_total", "Tokens generated", ["model"])
PROMPT_TOKENS = Counter("sluice_prompt_tokens_total", "Prompt tokens prefilled", ["model"])
REQUESTS = Counter("sluice_requests_total", "Finished inference requests", ["model", "status"])
JOBS_IN_QUEUE = Gauge("sluice_jobs_in_queue", "Sequences waiting for a batch slot", ["model"])
ENGINE_RUNNING = Gauge("sluice_engine_running_sequences", "Sequences in the engine's batch", ["model"])


class EngineMetrics:
    """The engine's observer: batch sizes and token counts of one worker process."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._batch = BATCH_SIZE.labels(model)
        self._tokens = GENERATION_TOKENS.labels(model)
        self._prompt = PROMPT_TOKENS.labels(model)
        self._queue = QUEUE_TIME.labels(model)

    def on_step(self, *, batch_size: int, new_tokens: int, seconds: float, prefill: bool) -> None:
        if not prefill:
            self._batch.observe(batch_size)
        self._tokens.inc(new_tokens)

    def on_finish(self, result: SequenceResult) -> None:
        self._prompt.inc(result.prompt_tokens)
        if result.admitted_at is not None:
            self._queue.observe(max(0.0, result.admitted_at - result.submitted_at))
        REQUESTS.labels(self.model, result.finish_reason.value).inc()
