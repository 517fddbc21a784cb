"""Result cache for deterministic requests (temperature 0 or a fixed seed)."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class CachedResult(models.Model):
    """One cached answer. The key hashes the model version, the full prompt token ids (after
    history, profile and retrieval) and the sampling parameters; entries are per user. Entries
    that used a knowledge base are deleted when it changes (`knowledge_base_ids`)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="cached_results"
    )
    key = models.CharField(max_length=64)
    model = models.CharField(max_length=200)
    output_text = models.TextField()
    finish_reason = models.CharField(max_length=32)
    prompt_tokens = models.PositiveIntegerField()
    completion_tokens = models.PositiveIntegerField()
    # The generated tokens, so that a hit streams like the original (token by token, with ids
    # and log-probabilities for TGI's details).
    token_ids = models.JSONField(default=list, blank=True)
    logprobs = models.JSONField(default=list, blank=True)
    knowledge_base_ids = models.JSONField(default=list, blank=True)
    citations = models.JSONField(default=list, blank=True)
    hits = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    last_hit_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="cache_user_key_unique")]
        indexes = [models.Index(fields=["created_at"], name="cache_age")]

    def __str__(self) -> str:
        return f"{self.model} {self.key[:12]}…"
