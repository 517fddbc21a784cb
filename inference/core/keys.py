"""The one Redis key namespace: every key Sluice writes is built here, under ``sluice:``.

One place to read what lives in Redis, to keep two features from colliding on a name, and to
change the prefix. Keys holding ``{...}`` carry a Redis Cluster hash tag: the keys of one job
(its stream, lease, cancel flag) or the rate limiter's keys hash to one slot, so that their
Lua scripts and pipelines may touch them together.

Django's cache, Channels' layer and Celery's broker keep their own prefixes, set in
config/settings/base.py (``sluice:cache``, ``sluice:asgi``, ``sluice:celery:``): settings load
before any app, so they spell them there.
"""

from __future__ import annotations

from datetime import datetime

PREFIX = "sluice:"

# --- jobs (inference/streams.py) ----------------------------------------------------------


def stream_key(job_id: str) -> str:
    """A job's token stream (a Redis Stream; entry ids are the resume cursor)."""
    return f"{PREFIX}job:{{{job_id}}}:events"


def lease_key(job_id: str) -> str:
    """The worker attempt that owns a job; it expires unless renewed."""
    return f"{PREFIX}job:{{{job_id}}}:lease"


def cancel_key(job_id: str) -> str:
    """Asks the engine to drop a job's sequence at its next step."""
    return f"{PREFIX}job:{{{job_id}}}:cancel"


def requeue_key(job_id: str) -> str:
    """Set while a reconciler's re-send of a job whose worker died is in flight."""
    return f"{PREFIX}job:{{{job_id}}}:requeued"


def group_key(group: str) -> str:
    """The worker the choices of one n > 1 request are placed on (inference/affinity.py)."""
    return f"{PREFIX}affinity:group:{group}"


def rpc_key(rpc_id: str) -> str:
    """The list an embeddings worker pushes a batch's vectors to (inference/rag/services.py)."""
    return f"{PREFIX}rpc:{rpc_id}"


def idempotency_key(user_id: int, key_digest: str) -> str:
    """A client's ``Idempotency-Key`` record, per user (gateway/idempotency.py)."""
    return f"{PREFIX}idem:u{user_id}:{key_digest}"


# --- admission (inference/admission/ratelimit.py) -------------------------------------------

#: The rate limiter's keys: one hash tag, so its Lua scripts may touch them all.
RATELIMIT_PREFIX = f"{PREFIX}{{rl}}"

# --- workers and the fleet ----------------------------------------------------------------

#: A worker's heartbeat: ``sluice:worker:<name>`` (inference/worker/heartbeat.py).
WORKER_PREFIX = f"{PREFIX}worker:"
#: When each worker was last seen, kept after its heartbeat expires.
WORKERS_SEEN_KEY = f"{PREFIX}workers:seen"
#: The reconciler's lock: one pass at a time across the fleet.
RECONCILER_KEY = f"{PREFIX}reconciler"
#: The process supervisor's (``make run``) state, for /readyz and the console (config/run.py).
SUPERVISOR_KEY = f"{PREFIX}supervisor"
#: The fleet's engine figures, one field per worker (inference/observability/recording.py).
FLEET_KEY = f"{PREFIX}fleet"
#: Counters shared by every process, a hash per series (inference/observability/recording.py).
METRICS_KEY = f"{PREFIX}metrics"
#: The console's time series buckets (inference/observability/timeseries.py).
TIMESERIES_PREFIX = f"{PREFIX}ts"

# --- model versions (inference/versions/) -------------------------------------------------

#: Bumped on every change of the version table: each process's registry reloads.
REGISTRY_GENERATION_KEY = f"{PREFIX}registry:generation"
#: Upstream replicas' load and health (inference/versions/replicas.py).
UPSTREAM_PREFIX = f"{PREFIX}upstream"


def version_stats_key(version_key: str) -> str:
    """A version's outcome window (the canary check and the breaker read it)."""
    return f"{PREFIX}vstats:{version_key}"


def breaker_key(version_key: str) -> str:
    return f"{PREFIX}breaker:{version_key}"


def breaker_opened_key(version_key: str) -> str:
    return f"{PREFIX}breaker-opened:{version_key}"


# --- the audit log (inference/core/audit.py) ----------------------------------------------


def auth_failures_key(hour: datetime) -> str:
    """Failed authentications of one hour, a counter per (key prefix, address, via)."""
    return f"{PREFIX}authfail:{hour:%Y%m%d%H}"


def auth_failure_sampled_key(hour: datetime, field: str) -> str:
    """Set when one (prefix, address, via) of that hour was last written to the database."""
    return f"{PREFIX}authfail-sampled:{hour:%Y%m%d%H}:{field}"
