"""Model versions: what is served under a name, by which backend, with how much traffic."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator
from django.db import models


class Backend(models.TextChoices):
    LOCAL = "local", "local torch model directory"
    TGI = "tgi", "remote text-generation-inference server"
    OPENAI = "openai", "OpenAI-compatible server (vLLM, SGLang, llama.cpp, Ollama, TGI /v1)"


class VersionStatus(models.TextChoices):
    DRAFT = "draft"  # configured, not served
    CANARY = "canary"  # served to its traffic weight's share of users
    STABLE = "stable"  # served
    RETIRED = "retired"  # no new traffic; workers finish its jobs, then unload it


ACTIVE_STATUSES = (VersionStatus.CANARY, VersionStatus.STABLE)


class Dtype(models.TextChoices):
    AUTO = "auto"
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    INT8 = "int8", "int8 (dynamic quantization, CPU)"


class ToolParser(models.TextChoices):
    HERMES = (
        "hermes",
        'Hermes: <tool_call>{"name", "arguments"}</tool_call> (Qwen 2.5/3, Hermes, the demo model)',
    )
    LLAMA3_JSON = "llama3_json", 'Llama 3 JSON: {"name", "parameters"} (Llama 3.1+)'
    NONE = "none", "none: tool_choice auto returns text (required and named calls still work)"


class ModelVersion(models.Model):
    served_name = models.CharField(max_length=200, help_text="what clients put in `model`")
    label = models.CharField(max_length=64, help_text="e.g. v1, 2026-11-22, llama-3b-int8")
    backend = models.CharField(max_length=8, choices=Backend.choices, default=Backend.LOCAL)
    path = models.CharField(
        max_length=500,
        help_text="local: the HF model directory. tgi, openai: a directory with the model's tokenizer and "
        "chat template (prompts are counted and rendered here)",
    )
    # Only ever taken from here (an operator's setting), never from a request: no SSRF.
    url = models.URLField(
        max_length=500,
        blank=True,
        help_text="tgi: the server's base URL. openai: the first replica's base URL (…/v1 is added to a "
        "URL without a path)",
    )
    replica_urls = models.TextField(
        blank=True,
        help_text="openai: more replicas of the same upstream, one base URL per line; each request goes "
        "to the healthy replica with the fewest outstanding tokens",
    )
    upstream_model = models.CharField(
        max_length=200,
        blank=True,
        help_text="openai: the model id the upstream serves (empty: the served name)",
    )
    api_key = models.CharField(
        max_length=500, blank=True, help_text="tgi, openai: bearer token for the server"
    )
    api_key_env = models.CharField(
        max_length=200,
        blank=True,
        help_text="tgi, openai: the name of an environment variable (on the workers) holding the bearer "
        "token, or NAME_FILE naming a file with it (a mounted secret); wins over api_key",
    )
    token_ids = models.BooleanField(
        default=True,
        help_text="openai: the upstream takes prompts as token ids and returns them "
        "(vLLM's return_tokens_as_token_ids: vLLM, SGLang, Sluice). Off: text both ways, counted "
        "with this version's tokenizer (llama.cpp, Ollama, OpenAI)",
    )
    dtype = models.CharField(max_length=16, choices=Dtype.choices, default=Dtype.AUTO)
    max_batch_size = models.PositiveIntegerField(default=0, help_text="0: SLUICE_MAX_BATCH_SIZE")
    max_batch_tokens = models.PositiveIntegerField(default=0, help_text="0: SLUICE_MAX_BATCH_TOKENS")
    context_length = models.PositiveIntegerField(default=0, help_text="0: from the model's config")
    prefix_cache_mb = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="local: memory for the prefix cache (KV of prompt prefixes shared between requests and "
        "kept for a session's next turn), MiB per worker. Empty: SLUICE_PREFIX_CACHE_MB; 0: off",
    )
    price_input_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=6, default=0, help_text="cost per 1M prompt tokens (usage pages)"
    )
    price_output_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=6, default=0, help_text="cost per 1M completion tokens"
    )
    max_attempts = models.PositiveSmallIntegerField(
        default=0,
        help_text="attempts of a job after transient failures (lost worker, upstream error, load failure) "
        "before it is dead-lettered. 0: SLUICE_MAX_ATTEMPTS",
    )
    tool_parser = models.CharField(
        max_length=16,
        choices=ToolParser.choices,
        default=ToolParser.HERMES,
        help_text="how tool calls are read from this model's free text (tool_choice auto); match the "
        "format its chat template teaches",
    )
    status = models.CharField(max_length=16, choices=VersionStatus.choices, default=VersionStatus.DRAFT)
    traffic_weight = models.PositiveIntegerField(
        default=100,
        validators=[MaxValueValidator(10_000)],
        help_text="share of the name's traffic (relative)",
    )
    fallback = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="fallback_for",
        help_text="takes this version's traffic while its circuit breaker is open (must be active)",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["served_name", "-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["served_name", "label"], name="version_name_label_unique")
        ]

    def __str__(self) -> str:
        return f"{self.served_name}@{self.label}"

    def clean(self) -> None:
        if self.backend == Backend.TGI and not self.url:
            raise ValidationError({"url": "A TGI version needs the server's URL."})
        if self.backend == Backend.OPENAI and not self.url:
            raise ValidationError({"url": "An OpenAI-compatible version needs its upstream's base URL."})
        bad = [line for line in self.replica_list if not line.startswith(("http://", "https://"))]
        if bad:
            raise ValidationError({"replica_urls": f"Not an http(s) URL: {bad[0]!r}."})

    @property
    def replica_list(self) -> list[str]:
        """The extra replicas' URLs (the first one is ``url``)."""
        return [line.strip() for line in self.replica_urls.splitlines() if line.strip()]
        if self.fallback_id is not None and self.fallback_id == self.pk:
            raise ValidationError({"fallback": "A version cannot be its own fallback."})


class EventKind(models.TextChoices):
    ACTIVATED = "activated"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"  # automatic (canary worse than stable) or by an admin
    DRAINED = "drained"
    RETIRED = "retired"
    BREAKER_OPEN = "breaker_open"
    LOAD_FAILED = "load_failed"
    LOADED = "loaded"
    UNLOADED = "unloaded"


class ModelVersionEvent(models.Model):
    """Why a version's traffic changed (admin-visible history)."""

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=32, choices=EventKind.choices)
    reason = models.TextField()
    data = models.JSONField(default=dict, blank=True)
    actor = models.CharField(max_length=200, blank=True, help_text="an admin user, a worker, or 'auto'")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.version} {self.kind}"
