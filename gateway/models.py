"""API keys and rate-limit policies.

A key is shown once, at creation; only its SHA-256 and a short prefix are stored. A policy
is a set of limits that applies to each API key or user it is assigned to (a key's own
policy overrides its user's; everyone else gets the default policy).
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from inference.admission.ratelimit import MAX_TIER
from inference.guards import GuardConfigError, validate


def hash_key(raw_key: str) -> str:
    """How an API key is stored (and looked up): its SHA-256, never the key."""
    return hashlib.sha256(raw_key.encode("utf-8")).hexdigest()


class RateLimitPolicy(models.Model):
    """Limits per subject (an API key with its own policy, else a user). 0 means unlimited.

    Buckets are token buckets: a limit of N per minute refills N/60 per second, and holds at
    most ``burst`` minutes' worth (burst 1: a full minute's allowance may be spent at once;
    0.1: at most a tenth of it, i.e. smoother traffic).
    """

    name = models.CharField(max_length=100, unique=True)
    description = models.CharField(max_length=300, blank=True)
    requests_per_minute = models.PositiveIntegerField(default=600, help_text="0: unlimited")
    tokens_per_minute = models.PositiveIntegerField(
        default=1_000_000,
        help_text="prompt + max_tokens reserved at admission; unused ones refunded. 0: unlimited",
    )
    max_concurrent = models.PositiveIntegerField(
        default=64, help_text="jobs accepted and not finished at once. 0: unlimited"
    )
    daily_token_budget = models.PositiveBigIntegerField(
        default=0, help_text="tokens per UTC day (prompt + completion). 0: unlimited"
    )
    max_queue_wait_s = models.FloatField(
        default=30.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(3600.0)],
        help_text="how long a request may wait for its limits or a busy model before 429/503 (0: never)",
    )
    priority = models.PositiveSmallIntegerField(
        default=0,
        validators=[MaxValueValidator(MAX_TIER)],
        help_text=f"tier 0..{MAX_TIER}: higher tiers are served first in every queue",
    )
    burst = models.FloatField(
        default=1.0,
        validators=[MinValueValidator(0.01), MaxValueValidator(1440.0)],
        help_text="bucket size in minutes of the per-minute limits",
    )
    is_default = models.BooleanField(
        default=False, help_text="applies to every user and key without a policy of their own"
    )
    guards = models.JSONField(
        default=dict,
        blank=True,
        help_text='guardrails: {"input": [{"kind": "deny_list", "patterns": [...]}, {"kind": "pii"}, '
        '{"kind": "injection", "threshold": 0.5}], "output": [{"kind": "deny_list", ...}, {"kind": "pii"}]} '
        "(see inference/guards.py)",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-priority", "name"]
        verbose_name = "rate-limit policy"
        verbose_name_plural = "rate-limit policies"
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=models.Q(is_default=True), name="one_default_policy"
            )
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.is_default and RateLimitPolicy.objects.filter(is_default=True).exclude(pk=self.pk).exists():
            raise ValidationError({"is_default": "Another policy is the default; untick it there first."})
        try:
            validate(self.guards, extra=settings.SLUICE_GUARD_KINDS)
        except GuardConfigError as exc:
            raise ValidationError({"guards": str(exc)}) from exc


class ApiKey(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    # The first characters of the key, enough to recognise it in a list; never enough to use it.
    prefix = models.CharField(max_length=16, db_index=True)
    # SHA-256 of the whole key. Keys carry 256 random bits, so a fast hash is safe here
    # (as for GitHub tokens); a slow password hash would cost every request.
    key_hash = models.CharField(max_length=64, unique=True)
    policy = models.ForeignKey(
        RateLimitPolicy,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="api_keys",
        help_text="overrides the user's policy; this key then has limits of its own",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @property
    def is_active(self) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > timezone.now()


class UserRateLimit(models.Model):
    """A user's policy (all their keys without a policy of their own share its limits)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="rate_limit")
    policy = models.ForeignKey(RateLimitPolicy, on_delete=models.CASCADE, related_name="user_assignments")

    class Meta:
        verbose_name = "user policy"

    def __str__(self) -> str:
        return f"{self.user} → {self.policy}"
