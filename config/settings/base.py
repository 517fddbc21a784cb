# structure: Django settings are one module by convention; grouped by subject below.
"""Settings shared by every environment. Values that vary come from ``config.env`` only."""

from __future__ import annotations

import sys
from typing import Any

import dj_database_url
from django.urls import reverse_lazy

from config import env

BASE_DIR = env.BASE_DIR
VAR_DIR = env.var_dir()

SECRET_KEY = env.get_str("DJANGO_SECRET_KEY", "dev-insecure-secret-key-change-me-0123456789abcdef")
DEBUG = env.get_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env.get_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.get_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
SLUICE_WS_ALLOWED_ORIGINS = env.get_list("SLUICE_WS_ALLOWED_ORIGINS", [])

INSTALLED_APPS = [
    # unfold must come before django.contrib.admin so that its templates win.
    "unfold",
    "unfold.contrib.filters",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "servestatic",  # its system checks
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's assets, served locally (no CDN)
    "django_prometheus",
    "axes",  # admin login throttling (lockout after repeated failures)
    "gateway",
    "inference",
    "dashboard",
]

MIDDLEWARE = [
    "gateway.middleware.RequestIdMiddleware",
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its 429 answer.
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # refuses logins of locked-out (username, address) pairs
    "django.contrib.auth.backends.ModelBackend",
]
# Admin logins: after SLUICE_LOGIN_FAILURE_LIMIT wrong passwords for one username from one
# address, that pair is locked out for SLUICE_LOGIN_COOLOFF_MIN minutes (the right password
# too). Attempts live in Postgres (django-axes' database handler); the admin lists them.
AXES_FAILURE_LIMIT = env.get_int("SLUICE_LOGIN_FAILURE_LIMIT", 5)
# A login from any entry point (/admin/login/ with no ?next=) lands in the admin, not Django's
# default /accounts/profile/ (which Sluice does not serve).
LOGIN_REDIRECT_URL = "/admin/"
AXES_COOLOFF_TIME = env.get_float("SLUICE_LOGIN_COOLOFF_MIN", 15.0) / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "config" / "templates"],  # admin/index.html: the console card
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


SLUICE_DB_POOL_MAX = env.get_int("SLUICE_DB_POOL_MAX", 16)
# How long a request waits for a pooled connection before it fails (503): short, so that an
# outage answers quickly instead of piling requests up.
SLUICE_DB_POOL_TIMEOUT_S = env.get_float("SLUICE_DB_POOL_TIMEOUT_S", 10.0)
SLUICE_DB_CONNECT_TIMEOUT_S = env.get_int("SLUICE_DB_CONNECT_TIMEOUT_S", 5)


def db_pool_options() -> dict[str, Any]:
    # reconnect_timeout: keep trying to refill the pool through an outage (psycopg_pool's
    # default gives up after 5 minutes and the pool then stays broken).
    return {
        "min_size": 1,
        "max_size": SLUICE_DB_POOL_MAX,
        "timeout": SLUICE_DB_POOL_TIMEOUT_S,
        "reconnect_timeout": 24 * 3600,
    }


def _database(url: str | None) -> dict[str, Any]:
    if not url:
        # No server configured and `make run` is not up: fail on first use with Django's
        # "settings.DATABASES is improperly configured" rather than at import (mypy, collectstatic).
        return {"ENGINE": "django.db.backends.dummy"}
    # Health checks: a pooled connection is tested when checked out, so that the pool drops
    # connections a Postgres restart broke instead of handing them to requests.
    config: dict[str, Any] = dict(dj_database_url.parse(url, conn_max_age=0, conn_health_checks=True))
    # A connection pool (psycopg_pool): under ASGI every request runs on a new thread, so
    # Django's per-thread persistent connections would reconnect (fork a Postgres backend,
    # ~5 ms) on every request; Celery's Django fixup closes connections after every task.
    config.setdefault("OPTIONS", {})["pool"] = db_pool_options()
    config["OPTIONS"]["connect_timeout"] = SLUICE_DB_CONNECT_TIMEOUT_S
    return config


DATABASES: dict[str, dict[str, Any]] = {"default": _database(env.database_url())}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.redis_url() or "redis://127.0.0.1:1/0"  # port 1: fails fast and visibly if unset

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "sluice:cache",
    }
}


def channel_layer_hosts(url: str) -> list[dict[str, Any]]:
    """channels-redis blocks in BZPOPMIN for 5 s per receive; redis-py 8's default socket
    timeout is also 5 s, so the read raced the timeout and every WebSocket died with a
    TimeoutError about 5 s after it opened. The layer's reads must outlast its blocking pops."""
    return [{"address": url, "socket_timeout": 60, "socket_keepalive": True, "health_check_interval": 30}]


CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": channel_layer_hosts(REDIS_URL), "prefix": "sluice:asgi"},
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
# Static files (admin, console, API docs) are collected into STATIC_ROOT (`make run` does it at
# every start, the image at build) with hashed names and precompressed copies, and served by
# the ASGI app itself through ServeStatic (cached for good, gzip/brotli) unless a proxy does it
# (SLUICE_SERVE_STATIC=0). Under DEBUG (and in tests, which collect nothing) they come straight
# from the apps' directories.
SLUICE_SERVE_STATIC = env.get_bool("SLUICE_SERVE_STATIC", True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "servestatic.storage.CompressedManifestStaticFilesStorage"},
}
if SLUICE_SERVE_STATIC:
    # Right after SecurityMiddleware, as ServeStatic asks: a static file skips sessions and auth.
    MIDDLEWARE.insert(
        MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
        "servestatic.middleware.ServeStaticMiddleware",
    )

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["gateway.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["gateway.parsers.BoundedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "gateway.errors.openai_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    # Swagger UI and Redoc from drf-spectacular-sidecar's static files: /api/docs/ works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "TITLE": "Sluice",
    "DESCRIPTION": "LLM inference gateway: OpenAI- and TGI-compatible APIs plus native async jobs.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- Celery (DESIGN.md §4: acks_late, reject on worker lost, visibility timeout > longest job) ---
SLUICE_JOB_TIMEOUT_S = env.get_int("SLUICE_JOB_TIMEOUT_S", 600)
SLUICE_VISIBILITY_TIMEOUT_S = env.get_int("SLUICE_VISIBILITY_TIMEOUT_S", max(3600, 2 * SLUICE_JOB_TIMEOUT_S))
CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": SLUICE_VISIBILITY_TIMEOUT_S,
    "global_keyprefix": "sluice:celery:",
    # One list per priority (0 = highest on Redis): higher rate-limit tiers are consumed
    # first. Every job is published with an explicit priority (inference.jobs.publish).
    "priority_steps": list(range(10)),
    "sep": ":",
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A Redis outage of any length: workers keep reconnecting (Celery's default gives up after 100).
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SEND_TASK_EVENTS = False
CELERY_TASK_DEFAULT_QUEUE = "sluice.default"
# A job publish that fails must not silently vanish: retry, then the reconciler re-sends it.
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.1, "interval_step": 0.5}

# --- Sluice ---
SLUICE_MODEL_NAME = env.model_name()
SLUICE_MODEL_PATH = str(env.model_path())
# Names that TGI clients put in `model` when they talk to a bare endpoint (huggingface_hub sends
# "dummy" for chat, TGI documents "tgi"): they mean "the default model".
SLUICE_MODEL_ALIASES = env.get_list("SLUICE_MODEL_ALIASES", ["tgi", "dummy"])
SLUICE_DEVICE = env.get_str("SLUICE_DEVICE", "auto")  # auto | cpu | cuda
SLUICE_DTYPE = env.get_str("SLUICE_DTYPE", "auto")  # auto | float32 | bfloat16 | float16
SLUICE_TORCH_THREADS = env.get_int("SLUICE_TORCH_THREADS", 0)  # 0: the worker decides from the CPU count
SLUICE_MAX_BATCH_SIZE = env.get_int("SLUICE_MAX_BATCH_SIZE", 32)
SLUICE_MAX_BATCH_TOKENS = env.get_int("SLUICE_MAX_BATCH_TOKENS", 65536)
# Prompt tokens prefilled between two decode steps (at least one sequence): bounds the stall
# that a wave of new requests imposes on the sequences already streaming.
SLUICE_MAX_PREFILL_TOKENS = env.get_int("SLUICE_MAX_PREFILL_TOKENS", 512)
# Local models: tokens one forward pass computes, a decode token per running sequence and
# prefill chunks of new ones in the rest (chunked prefill fused with decoding).
SLUICE_STEP_TOKENS = env.get_int("SLUICE_STEP_TOKENS", 256)
# Local models on the CPU: linear layers on oneDNN-packed weights (decode steps read every
# weight; the packed layout reads faster). Off: torch's own nn.Linear.
SLUICE_PACKED_LINEAR = env.get_bool("SLUICE_PACKED_LINEAR", True)
# How tool calls are read from the settings-served model's free text (tool_choice auto):
# hermes (<tool_call> JSON), llama3_json, none. Versions in the admin each say their own.
SLUICE_TOOL_PARSER = env.get_choice("SLUICE_TOOL_PARSER", ("hermes", "llama3_json", "none"), "hermes")
# Local Llama-family models: the packed step computed without transformers' module stack
# (fused q/k/v and gate/up layers, inference/backends/llama_step.py). Off: transformers' forward.
SLUICE_FUSED_STEP = env.get_bool("SLUICE_FUSED_STEP", True)
# Local models on the CPU: decode attention in Sluice's native kernel (inference/backends/native/,
# built by `make install`): auto or on (wherever it fits), off. Off, or where it is not built:
# torch's batched GEMMs.
SLUICE_NATIVE_ATTENTION = env.get_choice("SLUICE_NATIVE_ATTENTION", ("auto", "on", "off"), "auto")
SLUICE_NATIVE_DIR = env.native_dir()
# Local models: prefix cache (KV of prompt prefixes, in blocks of SLUICE_PREFIX_BLOCK_SIZE
# tokens) per worker and version, MiB; 0 turns it off. A version's prefix_cache_mb wins.
SLUICE_PREFIX_CACHE_MB = env.get_int("SLUICE_PREFIX_CACHE_MB", 256)
SLUICE_PREFIX_BLOCK_SIZE = env.get_int("SLUICE_PREFIX_BLOCK_SIZE", 16)
# Session affinity (local versions with a prefix cache): a session's next turn, or a
# Responses previous_response_id, goes to the worker that ran the turn before (its KV is in
# that worker's prefix cache) unless that worker carries more than SLUICE_AFFINITY_LOAD_GAP
# sequences over the least-busy worker of the version, or is gone: then the shared queue.
SLUICE_AFFINITY = env.get_bool("SLUICE_AFFINITY", True)
SLUICE_AFFINITY_LOAD_GAP = env.get_int("SLUICE_AFFINITY_LOAD_GAP", 8)
# Parallel sampling: the most choices one request may ask for (OpenAI n, TGI best_of); each
# choice is a job of its own, the jobs of one request placed on one worker (one prefill).
SLUICE_MAX_N = env.get_int("SLUICE_MAX_N", 8)
SLUICE_MAX_NEW_TOKENS = env.get_int("SLUICE_MAX_NEW_TOKENS", 4096)
SLUICE_DEFAULT_MAX_TOKENS = env.get_int("SLUICE_DEFAULT_MAX_TOKENS", 256)
SLUICE_MAX_PROMPT_CHARS = env.get_int("SLUICE_MAX_PROMPT_CHARS", 200_000)
SLUICE_JOB_LEASE_S = env.get_float("SLUICE_JOB_LEASE_S", 20.0)
SLUICE_RECONCILE_INTERVAL_S = env.get_float("SLUICE_RECONCILE_INTERVAL_S", 5.0)
# Prices of the settings-configured model (versions have their own, in the admin), per 1M tokens.
SLUICE_PRICE_INPUT_PER_MTOK = env.get_str("SLUICE_PRICE_INPUT_PER_MTOK", "0")
SLUICE_PRICE_OUTPUT_PER_MTOK = env.get_str("SLUICE_PRICE_OUTPUT_PER_MTOK", "0")
SLUICE_MAX_ATTEMPTS = env.get_int("SLUICE_MAX_ATTEMPTS", 5)  # per version: ModelVersion.max_attempts
# Backoff between attempts after a transient failure: base, 2x, 4x ... up to the cap.
SLUICE_RETRY_BACKOFF_S = env.get_float("SLUICE_RETRY_BACKOFF_S", 1.0)
SLUICE_RETRY_MAX_BACKOFF_S = env.get_float("SLUICE_RETRY_MAX_BACKOFF_S", 60.0)
SLUICE_STREAM_TTL_S = env.get_int("SLUICE_STREAM_TTL_S", 24 * 3600)
SLUICE_WORKER_PRELOAD = env.get_bool("SLUICE_WORKER_PRELOAD", True)
SLUICE_METRICS_FLUSH_S = env.get_float("SLUICE_METRICS_FLUSH_S", 5.0)
# --- Operations console ---
SLUICE_DASHBOARD_REFRESH_S = env.get_float("SLUICE_DASHBOARD_REFRESH_S", 1.0)
# A worker whose heartbeat is older than this shows as stale (its key expires after 15 s: down).
SLUICE_WORKER_STALE_S = env.get_float("SLUICE_WORKER_STALE_S", 8.0)
# Banner thresholds over the last 5 minutes (the same as docker/prometheus/alerts.yml).
SLUICE_ALERT_TTFT_P99_S = env.get_float("SLUICE_ALERT_TTFT_P99_S", 5.0)
SLUICE_ALERT_E2E_P99_S = env.get_float("SLUICE_ALERT_E2E_P99_S", 60.0)
SLUICE_ALERT_ERROR_RATE = env.get_float("SLUICE_ALERT_ERROR_RATE", 0.01)
SLUICE_ALERT_ROLLBACK_WINDOW_S = env.get_float("SLUICE_ALERT_ROLLBACK_WINDOW_S", 900.0)
SLUICE_WORKER_SWITCH_INTERVAL_S = env.get_float("SLUICE_WORKER_SWITCH_INTERVAL_S", 0.0005)
# --- Knowledge bases, sessions, result cache ---
SLUICE_WORKER_ROLE = env.get_str("SLUICE_WORKER_ROLE", "model")  # model | embeddings
# A worker's own /metrics (process, engines) for Prometheus; 0: off. Loopback unless told.
SLUICE_WORKER_METRICS_PORT = env.get_int("SLUICE_WORKER_METRICS_PORT", 0)
SLUICE_WORKER_METRICS_ADDR = env.get_str("SLUICE_WORKER_METRICS_ADDR", "127.0.0.1")
SLUICE_EMBEDDING_MODEL_PATH = str(env.embedding_model_path())
# The embedding model's name in /v1/models and /v1/embeddings.
SLUICE_EMBEDDING_MODEL_NAME = env.get_str("SLUICE_EMBEDDING_MODEL_NAME", "all-MiniLM-L6-v2")
SLUICE_EMBEDDING_THREADS = env.get_int("SLUICE_EMBEDDING_THREADS", 1)
SLUICE_EMBEDDING_QUEUE = "sluice.embeddings"  # = config.processes.EMBEDDINGS_QUEUE
SLUICE_EMBEDDING_RPC_TIMEOUT_S = env.get_float("SLUICE_EMBEDDING_RPC_TIMEOUT_S", 10.0)
SLUICE_CHUNK_TOKENS = env.get_int("SLUICE_CHUNK_TOKENS", 200)  # all-MiniLM-L6-v2 reads 256 at most
SLUICE_CHUNK_OVERLAP = env.get_int("SLUICE_CHUNK_OVERLAP", 40)
SLUICE_RAG_TOP_K = env.get_int("SLUICE_RAG_TOP_K", 4)
SLUICE_RAG_MIN_SCORE = env.get_float("SLUICE_RAG_MIN_SCORE", 0.25)  # cosine similarity
SLUICE_HNSW_EF_SEARCH = env.get_int("SLUICE_HNSW_EF_SEARCH", 160)  # bench: recall@10 0.98, p99 9 ms at 100k
SLUICE_MAX_UPLOAD_BYTES = env.get_int("SLUICE_MAX_UPLOAD_BYTES", 20 * 1024 * 1024)
SLUICE_RESULT_CACHE = env.get_bool("SLUICE_RESULT_CACHE", True)
SLUICE_RESULT_CACHE_TTL_S = env.get_int("SLUICE_RESULT_CACHE_TTL_S", 7 * 24 * 3600)
# Any other request body (JSON): refused with 413 above this, before Django reads it.
SLUICE_MAX_REQUEST_BYTES = env.get_int("SLUICE_MAX_REQUEST_BYTES", 16 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = max(SLUICE_MAX_UPLOAD_BYTES, SLUICE_MAX_REQUEST_BYTES) + 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FIELDS = 1000  # Django's default, stated: more is a 400
FILE_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024  # larger files are spooled to disk, never held in memory

# --- Model versions (inference/versions/) ---
SLUICE_REGISTRY_CACHE_S = env.get_float("SLUICE_REGISTRY_CACHE_S", 2.0)
# A worker's heartbeat (every 2 s) lives this long: a worker silent for longer is gone (its
# session-affinity queue is emptied into the shared one, the console shows it down).
SLUICE_HEARTBEAT_TTL_S = env.get_int("SLUICE_HEARTBEAT_TTL_S", 15)
# Served names this worker serves (all their active versions): comma-separated; empty or "*": all.
SLUICE_WORKER_MODELS = env.get_list("SLUICE_WORKER_MODELS", [])
SLUICE_WORKER_SYNC_S = env.get_float("SLUICE_WORKER_SYNC_S", 2.0)  # how soon workers see version changes
SLUICE_VERSION_WINDOW_S = env.get_float("SLUICE_VERSION_WINDOW_S", 300.0)  # health's sliding window
SLUICE_VERSION_MIN_SAMPLES = env.get_int("SLUICE_VERSION_MIN_SAMPLES", 20)
SLUICE_CANARY_ERROR_MARGIN = env.get_float("SLUICE_CANARY_ERROR_MARGIN", 0.05)  # absolute error-rate excess
SLUICE_CANARY_TTFT_MARGIN = env.get_float("SLUICE_CANARY_TTFT_MARGIN", 0.5)  # relative TTFT p99 excess
SLUICE_BREAKER_ERROR_RATE = env.get_float("SLUICE_BREAKER_ERROR_RATE", 0.5)
SLUICE_BREAKER_MIN_SAMPLES = env.get_int("SLUICE_BREAKER_MIN_SAMPLES", 10)
SLUICE_BREAKER_COOLDOWN_S = env.get_float("SLUICE_BREAKER_COOLDOWN_S", 30.0)
# Remote (TGI) versions: connection attempts before a job fails, the first backoff, timeouts.
SLUICE_TGI_RETRIES = env.get_int("SLUICE_TGI_RETRIES", 3)
SLUICE_TGI_BACKOFF_S = env.get_float("SLUICE_TGI_BACKOFF_S", 0.5)
SLUICE_TGI_TIMEOUT_S = env.get_float("SLUICE_TGI_TIMEOUT_S", 30.0)
# OpenAI-compatible upstreams (inference/backends/openai_compat.py, inference/versions/replicas.py): the
# same attempts, backoff and read timeout (defaulting to the TGI ones); consecutive failures
# (requests or probes) that take a replica out of rotation, how long it stays out before one
# trial request may go to it (half-open), and how often every worker probes every replica.
SLUICE_UPSTREAM_RETRIES = env.get_int("SLUICE_UPSTREAM_RETRIES", SLUICE_TGI_RETRIES)
SLUICE_UPSTREAM_BACKOFF_S = env.get_float("SLUICE_UPSTREAM_BACKOFF_S", SLUICE_TGI_BACKOFF_S)
SLUICE_UPSTREAM_TIMEOUT_S = env.get_float("SLUICE_UPSTREAM_TIMEOUT_S", SLUICE_TGI_TIMEOUT_S)
SLUICE_UPSTREAM_FAILURES = env.get_int("SLUICE_UPSTREAM_FAILURES", 3)
SLUICE_UPSTREAM_COOLDOWN_S = env.get_float("SLUICE_UPSTREAM_COOLDOWN_S", 10.0)
SLUICE_UPSTREAM_PROBE_S = env.get_float("SLUICE_UPSTREAM_PROBE_S", 5.0)

# --- Admission (inference/admission/ratelimit.py) ---
SLUICE_POLICY_CACHE_S = env.get_float("SLUICE_POLICY_CACHE_S", 2.0)  # admin edits apply within this
SLUICE_WAITER_TTL_S = env.get_float("SLUICE_WAITER_TTL_S", 5.0)  # a waiter that stops polling leaves
# Per served model: jobs in flight before new requests wait in the fair waiting room, and
# in flight + waiting before new requests get 503 (0: unlimited).
SLUICE_MODEL_CAPACITY = env.get_int("SLUICE_MODEL_CAPACITY", 4 * SLUICE_MAX_BATCH_SIZE)
SLUICE_MODEL_QUEUE_CAP = env.get_int("SLUICE_MODEL_QUEUE_CAP", 16 * SLUICE_MAX_BATCH_SIZE)
SLUICE_OVERLOAD_RETRY_AFTER_S = env.get_float("SLUICE_OVERLOAD_RETRY_AFTER_S", 2.0)
# Redis connections per process and client (sync, asyncio): one per open stream at least.
SLUICE_REDIS_MAX_CONNECTIONS = env.get_int("SLUICE_REDIS_MAX_CONNECTIONS", 10_000)
# How long a stream waits through a Redis outage (keepalives to its client) before it gives up.
SLUICE_STORE_OUTAGE_S = env.get_float("SLUICE_STORE_OUTAGE_S", 120.0)
SLUICE_SSE_KEEPALIVE_S = min(50.0, env.get_float("SLUICE_SSE_KEEPALIVE_S", 15.0))  # < Redis socket timeout

# Guard kinds beyond the built-in ones (inference/guards.py): "kind=module.Class,kind2=...".
SLUICE_GUARD_KINDS = dict(
    item.split("=", 1) for item in env.get_list("SLUICE_GUARD_KINDS", []) if "=" in item
)

# /metrics: a bearer token (optional; a secret, *_FILE works) and the networks allowed without it.
SLUICE_METRICS_TOKEN = env.get_str("SLUICE_METRICS_TOKEN", "")
SLUICE_METRICS_ALLOWED_NETWORKS = env.get_list("SLUICE_METRICS_ALLOWED_NETWORKS", ["127.0.0.0/8", "::1/128"])
# How often an open WebSocket checks that its API key is still valid (revoked, expired).
SLUICE_WS_KEY_CHECK_S = env.get_float("SLUICE_WS_KEY_CHECK_S", 15.0)

LOG_LEVEL = env.get_str("SLUICE_LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(process)d [%(request_id)s]: %(message)s"}
    },
    "filters": {
        "skip_readyz": {"()": "config.logfilters.SkipReadinessProbes"},
        "request_id": {"()": "config.logfilters.RequestIdFilter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "stream": sys.stderr,
            "formatter": "plain",
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.request": {"level": "ERROR", "filters": ["skip_readyz"]},
        "httpx": {"level": "WARNING"},
        "celery": {"level": "WARNING"},
        "kombu": {"level": "WARNING"},
        "axes": {"level": "WARNING"},
    },
}


def _nav(title: str, url: str, icon: str) -> dict[str, Any]:
    return {"title": title, "icon": icon, "link": reverse_lazy(url)}


UNFOLD = {
    "SITE_TITLE": "Sluice",
    "SITE_HEADER": "Sluice",
    "SITE_SYMBOL": "water",
    "SHOW_HISTORY": True,
    "SIDEBAR": {
        "show_search": True,
        "show_all_applications": True,
        "navigation": [
            {
                "title": "Operations",
                "items": [
                    _nav("Live dashboard", "dashboard:overview", "monitoring"),
                    _nav("Jobs", "admin:inference_job_changelist", "list_alt"),
                    _nav("Dead letters", "admin:inference_deadletter_changelist", "report"),
                    _nav("Usage and cost", "admin:inference_usagedaily_changelist", "payments"),
                    _nav("Audit log", "admin:dashboard_auditentry_changelist", "history"),
                    _nav("Authentication failures", "admin:dashboard_authfailure_changelist", "gpp_bad"),
                ],
            },
            {
                "title": "Models",
                "items": [
                    _nav("Model versions", "admin:inference_modelversion_changelist", "deployed_code"),
                    _nav("Version events", "admin:inference_modelversionevent_changelist", "event"),
                    _nav("Result cache", "admin:inference_cachedresult_changelist", "cached"),
                ],
            },
            {
                "title": "Access",
                "items": [
                    _nav("Users", "admin:auth_user_changelist", "person"),
                    _nav("Groups", "admin:auth_group_changelist", "group"),
                    _nav("API keys", "admin:gateway_apikey_changelist", "key"),
                    _nav("Rate-limit policies", "admin:gateway_ratelimitpolicy_changelist", "speed"),
                ],
            },
            {
                "title": "Knowledge and chat",
                "items": [
                    _nav("Knowledge bases", "admin:inference_knowledgebase_changelist", "library_books"),
                    _nav("Documents", "admin:inference_document_changelist", "description"),
                    _nav("Chat sessions", "admin:inference_chatsession_changelist", "forum"),
                    _nav("User profiles", "admin:inference_userprofile_changelist", "badge"),
                ],
            },
        ],
    },
}
