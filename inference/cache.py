"""Exact-match result cache for deterministic requests, in Postgres (admin-visible).

Deterministic: greedy (temperature 0) or seeded sampling — the same prompt and parameters give
the same tokens. The key is a SHA-256 of the model version, the full prompt token ids (after
history, profile and retrieval) and every sampling parameter; entries belong to one user.
Entries that used a knowledge base are deleted when it changes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from inference.batching import IncrementalDecoder
from inference.models import CachedResult


def is_deterministic(params: dict[str, Any]) -> bool:
    """Cacheable: the same request gives the same tokens, and the cache can replay all that the
    answer carries (it keeps each token's log-probability, not alternatives or prompt details)."""
    if params.get("top_logprobs") or params.get("prompt_logprobs") is not None:
        return False
    temperature = float(params.get("temperature", 1.0))
    return temperature <= 0.0 or int(params.get("top_k") or 0) == 1 or params.get("seed") is not None


def cache_key(*, model: str, prompt_ids: Sequence[int], params: dict[str, Any]) -> str:
    material = json.dumps(
        {"model": model, "prompt": list(prompt_ids), "params": params}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(material.encode()).hexdigest()


def result_cache_get(*, user_id: int, key: str) -> CachedResult | None:
    if not settings.SLUICE_RESULT_CACHE:
        return None
    oldest = timezone.now() - timedelta(seconds=settings.SLUICE_RESULT_CACHE_TTL_S)
    entry = CachedResult.objects.filter(user_id=user_id, key=key, created_at__gte=oldest).first()
    if entry is not None:
        CachedResult.objects.filter(pk=entry.pk).update(hits=F("hits") + 1, last_hit_at=timezone.now())
    return entry


def result_cache_put(
    *,
    user_id: int,
    key: str,
    model: str,
    output_text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    knowledge_base_ids: Sequence[str],
    citations: list[dict[str, Any]],
    token_ids: Sequence[int] = (),
    logprobs: Sequence[float] = (),
) -> None:
    if not settings.SLUICE_RESULT_CACHE:
        return
    try:
        with transaction.atomic():
            CachedResult.objects.update_or_create(
                user_id=user_id,
                key=key,
                defaults={
                    "model": model,
                    "output_text": output_text,
                    "finish_reason": finish_reason,
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "knowledge_base_ids": list(knowledge_base_ids),
                    "citations": citations,
                    "token_ids": list(token_ids),
                    "logprobs": [round(float(x), 5) for x in logprobs],
                    "created_at": timezone.now(),
                },
            )
    except IntegrityError:
        pass  # a concurrent identical request stored it first


def replay_deltas(
    *, output_text: str, token_ids: Sequence[int], decode: Callable[[Sequence[int]], str]
) -> list[tuple[int, str]]:
    """(token id, text delta) per cached token, as the engine streamed them: the deltas add up
    to exactly ``output_text`` (a stop string, cut from the text, yields no delta)."""
    decoder = IncrementalDecoder(decode)
    out: list[tuple[int, str]] = []
    emitted = 0
    for token_id in token_ids:
        decoder.push(token_id)
        end = min(len(output_text), len(decoder.text))
        out.append((token_id, output_text[emitted:end] if end > emitted else ""))
        emitted = max(emitted, end)
    if emitted < len(output_text):
        if out:
            out[-1] = (out[-1][0], out[-1][1] + output_text[emitted:])
        else:
            out.append((-1, output_text[emitted:]))
    return out


def result_cache_invalidate(*, knowledge_base_id: str) -> int:
    deleted, _ = CachedResult.objects.filter(knowledge_base_ids__contains=[knowledge_base_id]).delete()
    return deleted


def result_cache_clear(*, user_id: int | None = None) -> int:
    query = CachedResult.objects.all() if user_id is None else CachedResult.objects.filter(user_id=user_id)
    deleted, _ = query.delete()
    return deleted
