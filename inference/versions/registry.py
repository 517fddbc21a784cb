"""Which model versions this deployment serves, under which names, and where their jobs go.

The source of truth is the `ModelVersion` table (admin-edited), cached per process for
``SLUICE_REGISTRY_CACHE_S``. A served name with no versions in the table but named by
``SLUICE_MODEL_NAME`` is served from ``SLUICE_MODEL_PATH`` (the "settings version": what a
fresh `make run` serves before anyone adds a version).

Each version has its own Celery queue; workers consume the queues of the versions they have
loaded (inference/worker/runtime.py).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError

from inference.backends.support import unsupported_by
from inference.core.keys import REGISTRY_GENERATION_KEY
from inference.core.redis import get_redis
from inference.models import ModelVersion
from inference.prompts import ModelInfo, model_info
from inference.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

SETTINGS_LABEL = "default"


def queue_for(model_name: str) -> str:
    """The queue of a served name's settings version (and of jobs that predate versions)."""
    return f"sluice.model.{model_name}"


def version_queue(version_id: int) -> str:
    return f"sluice.version.{version_id}"


class VersionGone(LookupError):
    """The routed version was deleted before its job could be created, and its served name
    has no version left to take the job."""


@dataclass(frozen=True)
class ServedModel:
    """One version of a served model (a row of ModelVersion, or the settings version)."""

    name: str
    path: Path
    #: Admission: jobs in flight before requests wait; in flight + waiting before 503 (0: no limit).
    capacity: int = 0
    queue_cap: int = 0
    version_id: int | None = None
    label: str = SETTINGS_LABEL
    backend: str = "local"
    url: str = ""
    api_key: str = field(default="", repr=False)
    #: openai: every replica's base URL (``url`` first), the upstream's model id, where the
    #: key comes from, and whether the upstream speaks token ids.
    replicas: tuple[str, ...] = ()
    upstream_model: str = ""
    api_key_env: str = ""
    token_ids: bool = True
    dtype: str = "auto"
    max_batch_size: int = 0
    max_batch_tokens: int = 0
    context_length: int = 0
    #: MiB of prefix cache per worker (None: SLUICE_PREFIX_CACHE_MB).
    prefix_cache_mb: int | None = None
    status: str = "stable"
    weight: int = 100
    fallback_id: int | None = None
    #: Attempts after transient failures before dead-lettering (0: SLUICE_MAX_ATTEMPTS).
    max_attempts: int = 0
    #: Prices per 1M prompt / completion tokens (usage and cost pages).
    price_input: Decimal = Decimal(0)
    price_output: Decimal = Decimal(0)
    #: How free tool calls are read from this model's text (inference/tools/calls.py).
    tool_parser: str = "hermes"

    @property
    def key(self) -> str:
        """``name@label``: the version in heartbeats, metrics and logs."""
        return f"{self.name}@{self.label}"

    @property
    def queue(self) -> str:
        return queue_for(self.name) if self.version_id is None else version_queue(self.version_id)

    @property
    def cache_name(self) -> str:
        """Identifies the weights in result-cache keys: another version of a name misses."""
        return f"{self.key}:{self.path}:{self.url}:{self.upstream_model}"

    @property
    def info(self) -> ModelInfo:
        return model_info(self.name, self.path, self.context_length)

    @property
    def batch_size(self) -> int:
        return self.max_batch_size or settings.SLUICE_MAX_BATCH_SIZE

    @property
    def batch_tokens(self) -> int:
        return self.max_batch_tokens or settings.SLUICE_MAX_BATCH_TOKENS

    @property
    def prefix_cache_bytes(self) -> int:
        mb = settings.SLUICE_PREFIX_CACHE_MB if self.prefix_cache_mb is None else self.prefix_cache_mb
        return int(mb) * 1024 * 1024

    @property
    def attempts_allowed(self) -> int:
        return self.max_attempts or settings.SLUICE_MAX_ATTEMPTS

    @property
    def active(self) -> bool:
        return self.status in ("stable", "canary")

    def unsupported(self, params: SamplingParams) -> tuple[str, str] | None:
        """(field, why) for the first parameter this version's backend cannot honour (the
        gateway refuses it by name before the job is queued), or None."""
        return unsupported_by(self, params)


def settings_version(name: str | None = None) -> ServedModel:
    return ServedModel(
        name=name or settings.SLUICE_MODEL_NAME,
        path=Path(settings.SLUICE_MODEL_PATH),
        capacity=settings.SLUICE_MODEL_CAPACITY,
        queue_cap=settings.SLUICE_MODEL_QUEUE_CAP,
        dtype=settings.SLUICE_DTYPE,
        price_input=Decimal(settings.SLUICE_PRICE_INPUT_PER_MTOK),
        price_output=Decimal(settings.SLUICE_PRICE_OUTPUT_PER_MTOK),
        tool_parser=settings.SLUICE_TOOL_PARSER,
    )


_lock = threading.Lock()
_cache: tuple[float, list[ServedModel]] | None = None
#: Bumped on every change of the version table: each process compares it with the one its
#: cache was loaded under (at most every GENERATION_CHECK_S), so an admin edit reaches every
#: web process and worker at once, not when their caches expire. Redis down: the cache's
#: time limit still holds.
GENERATION_KEY = REGISTRY_GENERATION_KEY
GENERATION_CHECK_S = 0.25
_generation: bytes | None = None
_generation_checked = 0.0
#: Every version label this process has loaded, kept through invalidations (version_label).
_labels: dict[int, str] = {}


def registry_invalidate() -> None:
    global _cache
    with _lock:
        _cache = None


def registry_changed() -> None:
    """The version table changed: this process reloads now, every other one within
    GENERATION_CHECK_S."""
    registry_invalidate()
    try:
        get_redis().incr(GENERATION_KEY)
    except redis.RedisError:
        logger.warning(
            "could not announce a version change; other processes see it within %ss",
            settings.SLUICE_REGISTRY_CACHE_S,
        )


def _read_generation() -> bytes | None:
    try:
        value: Any = get_redis().get(GENERATION_KEY)
    except redis.RedisError:
        return _generation  # as if unchanged: the cache's time limit still applies
    return bytes(value) if value is not None else None


def _load() -> list[ServedModel]:
    try:
        rows = list(ModelVersion.objects.all().order_by("id"))
    except DatabaseError:  # not migrated yet (a management command before `migrate`)
        logger.debug("model versions unavailable; serving the settings model only", exc_info=True)
        rows = []
    return [
        ServedModel(
            name=row.served_name,
            path=Path(row.path),
            capacity=settings.SLUICE_MODEL_CAPACITY,
            queue_cap=settings.SLUICE_MODEL_QUEUE_CAP,
            version_id=row.pk,
            label=row.label,
            backend=row.backend,
            url=row.url,
            api_key=row.api_key,
            replicas=tuple(dict.fromkeys([row.url, *row.replica_list]))
            if row.url
            else tuple(row.replica_list),
            upstream_model=row.upstream_model,
            api_key_env=row.api_key_env,
            token_ids=row.token_ids,
            dtype=row.dtype,
            max_batch_size=row.max_batch_size,
            max_batch_tokens=row.max_batch_tokens,
            context_length=row.context_length,
            prefix_cache_mb=row.prefix_cache_mb,
            status=row.status,
            weight=row.traffic_weight,
            fallback_id=row.fallback_id,
            max_attempts=row.max_attempts,
            price_input=row.price_input_per_mtok,
            price_output=row.price_output_per_mtok,
            tool_parser=row.tool_parser,
        )
        for row in rows
    ]


def all_versions() -> list[ServedModel]:
    """Every version in the table (any status) plus the settings version where it applies."""
    global _cache, _generation, _generation_checked
    now = time.monotonic()
    with _lock:
        fresh = _cache is not None and _cache[0] > now
        if _cache is not None and fresh and now - _generation_checked < GENERATION_CHECK_S:
            return list(_cache[1])
    generation = _read_generation()  # before loading: a change during the load is seen next time
    with _lock:
        _generation_checked = now
        if _cache is not None and fresh and generation == _generation:
            return list(_cache[1])
        _generation = generation
    versions = _load()
    if not any(v.name == settings.SLUICE_MODEL_NAME and v.status != "draft" for v in versions):
        versions.append(settings_version())
    with _lock:
        _cache = (now + settings.SLUICE_REGISTRY_CACHE_S, versions)
        _labels.update((v.version_id, v.label) for v in versions if v.version_id is not None)
    return list(versions)


def version_label(version_id: int | None) -> str:
    """A version's label from what this process has loaded, never querying: safe on the event
    loop (stream shaping labels its latency metrics with it). The request that created the
    job routed with the registry, so its version is known here."""
    if version_id is None:
        return SETTINGS_LABEL
    with _lock:
        return _labels.get(version_id, f"#{version_id}")


def served_versions(name: str | None = None) -> list[ServedModel]:
    """Active (stable or canary) versions, of one served name or of all."""
    return [v for v in all_versions() if v.active and (name is None or v.name == name)]


def version_by_id(version_id: int | None, name: str | None = None) -> ServedModel | None:
    """A version by id, whatever its status (a retired version still finishes its jobs);
    ``None`` with a name: that name's settings version."""
    for version in all_versions():
        if version.version_id == version_id and (version_id is not None or version.name == name):
            return version
    if version_id is None and name == settings.SLUICE_MODEL_NAME:
        return settings_version()
    if version_id is not None:
        registry_invalidate()  # a version created a moment ago: look again, once
        for version in all_versions():
            if version.version_id == version_id:
                return version
    return None


def _representative(versions: list[ServedModel]) -> ServedModel:
    stable = [v for v in versions if v.status == "stable"] or versions
    return max(stable, key=lambda v: (v.weight, v.version_id or 0))


def served_models() -> list[ServedModel]:
    """One version per served name (its main stable one): for listings and validation."""
    names: dict[str, list[ServedModel]] = {}
    for version in served_versions():
        names.setdefault(version.name, []).append(version)
    ordered = sorted(names, key=lambda n: (n != settings.SLUICE_MODEL_NAME, n))
    return [_representative(names[name]) for name in ordered]


def default_model() -> ServedModel:
    models = served_models()
    return models[0] if models else settings_version()


#: When this process last re-read the table for a name it did not know (at most every 0.5 s:
#: a client asking for names that do not exist costs no query per request).
_last_miss_reload = 0.0


def canonical_name(name: str | None) -> str | None:
    """The served name a request means; TGI-style placeholders mean the default model. A name
    this process does not know may have been added a moment ago (the cache is per process):
    look again, once, before answering that it does not exist."""
    global _last_miss_reload
    if not name or name in settings.SLUICE_MODEL_ALIASES:
        return default_model().name
    if any(v.name == name for v in served_versions()):
        return name
    now = time.monotonic()
    with _lock:
        if now - _last_miss_reload < 0.5:
            return None
        _last_miss_reload = now
    registry_invalidate()
    return name if any(v.name == name for v in served_versions()) else None


def resolve_model(name: str | None) -> ServedModel | None:
    """A served name's main version (no routing: listings, /info, token counting defaults)."""
    canonical = canonical_name(name)
    if canonical is None:
        return None
    return _representative(served_versions(canonical))
