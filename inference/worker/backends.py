"""Which backend a version's ``backend`` kind builds: a registry of builders (as TGI's
``get_model``), one per kind, instead of an ``if`` chain in the runtime. The builders import
their backend module when called: only a worker that serves a kind loads its code (torch for
``local``)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from django.conf import settings

from inference.backends.base import ModelBackend
from inference.core.redis import get_redis
from inference.observability.recording import UpstreamMetrics
from inference.versions.registry import ServedModel
from inference.versions.replicas import ReplicaPool, resolve_api_key

Builder = Callable[[ServedModel, str], ModelBackend]
BUILDERS: dict[str, Builder] = {}


def register_backend(kind: str) -> Callable[[Builder], Builder]:
    def register(builder: Builder) -> Builder:
        BUILDERS[kind] = builder
        return builder

    return register


def build_backend(model: ServedModel, *, worker: str = "") -> ModelBackend:
    """The backend of a version (the only place that reaches for torch)."""
    try:
        builder = BUILDERS[model.backend]
    except KeyError:
        raise ValueError(
            f"unknown backend {model.backend!r} (known: {', '.join(sorted(BUILDERS))})"
        ) from None
    return builder(model, worker)


@register_backend("openai")
def _openai(model: ServedModel, worker: str) -> ModelBackend:
    # lazy: only a worker that serves this kind loads its backend (see the module docstring)
    from inference.backends.openai_compat import OpenAICompatBackend

    pool = ReplicaPool(
        model.key,
        model.replicas or (model.url,),
        worker=worker or socket.gethostname(),
        client=get_redis,
        failures=settings.SLUICE_UPSTREAM_FAILURES,
        cooldown_s=settings.SLUICE_UPSTREAM_COOLDOWN_S,
        trial_s=settings.SLUICE_UPSTREAM_TIMEOUT_S + 5,
        load_ttl_s=max(30.0, settings.SLUICE_UPSTREAM_PROBE_S * 4),
    )
    return OpenAICompatBackend(
        pool=pool,
        info=model.info,
        model_id=model.upstream_model or model.name,
        api_key=resolve_api_key(model.api_key, model.api_key_env, dict(os.environ)),
        token_ids=model.token_ids,
        max_batch_size=model.batch_size,
        retries=settings.SLUICE_UPSTREAM_RETRIES,
        backoff_s=settings.SLUICE_UPSTREAM_BACKOFF_S,
        timeout_s=settings.SLUICE_UPSTREAM_TIMEOUT_S,
        probe_s=settings.SLUICE_UPSTREAM_PROBE_S,
        observer=UpstreamMetrics(model.key),
    )


@register_backend("tgi")
def _tgi(model: ServedModel, worker: str) -> ModelBackend:
    # lazy: only a worker that serves this kind loads its backend (see the module docstring)
    from inference.backends.tgi import TgiBackend

    return TgiBackend(
        url=model.url,
        api_key=resolve_api_key(model.api_key, model.api_key_env, dict(os.environ)),
        info=model.info,
        max_batch_size=model.batch_size,
        retries=settings.SLUICE_TGI_RETRIES,
        backoff_s=settings.SLUICE_TGI_BACKOFF_S,
        timeout_s=settings.SLUICE_TGI_TIMEOUT_S,
    )


@register_backend("local")
def _local(model: ServedModel, worker: str) -> ModelBackend:
    # lazy: torch only in a worker that serves a local version (see the module docstring)
    from inference.backends.torch_local import TorchCausalLMBackend

    info = model.info
    return TorchCausalLMBackend(
        model.path,
        device=settings.SLUICE_DEVICE,
        dtype=model.dtype if model.dtype != "auto" else settings.SLUICE_DTYPE,
        threads=settings.SLUICE_TORCH_THREADS,
        max_batch_size=model.batch_size,
        step_tokens=settings.SLUICE_STEP_TOKENS,
        packed_linear=settings.SLUICE_PACKED_LINEAR,
        fused_step=settings.SLUICE_FUSED_STEP,
        native_dir=settings.SLUICE_NATIVE_DIR,
        native_attention=settings.SLUICE_NATIVE_ATTENTION,
        prefix_cache_bytes=model.prefix_cache_bytes,
        prefix_block_size=settings.SLUICE_PREFIX_BLOCK_SIZE,
        eos_token_ids=sorted(info.eos_token_ids),
        vocab_decode=info.decode,
    )
