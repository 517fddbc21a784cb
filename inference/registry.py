"""Which models this deployment serves and which queue each one's jobs go to.

One model, configured by settings (SLUICE_MODEL_NAME / SLUICE_MODEL_PATH). Model versions
with canaries and hot switching replace this module's source of truth later; callers only
use `served_models` and `resolve_model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from inference.prompts import ModelInfo, model_info


def queue_for(model_name: str) -> str:
    """The Celery queue of a served model's jobs (workers consume the queues of what they serve)."""
    return f"sluice.model.{model_name}"


@dataclass(frozen=True)
class ServedModel:
    name: str
    path: Path
    #: Admission: jobs in flight before requests wait; in flight + waiting before 503 (0: no limit).
    capacity: int = 0
    queue_cap: int = 0

    @property
    def queue(self) -> str:
        return queue_for(self.name)

    @property
    def cache_name(self) -> str:
        """Identifies the weights in result-cache keys: a new model at the same name misses."""
        return f"{self.name}@{self.path}"

    @property
    def info(self) -> ModelInfo:
        return model_info(self.name, self.path)


def served_models() -> list[ServedModel]:
    return [
        ServedModel(
            name=settings.SLUICE_MODEL_NAME,
            path=Path(settings.SLUICE_MODEL_PATH),
            capacity=settings.SLUICE_MODEL_CAPACITY,
            queue_cap=settings.SLUICE_MODEL_QUEUE_CAP,
        )
    ]


def default_model() -> ServedModel:
    return served_models()[0]


def resolve_model(name: str | None) -> ServedModel | None:
    """The served model a request names; TGI-style placeholders mean the default model."""
    models = served_models()
    if not name or name in settings.SLUICE_MODEL_ALIASES:
        return models[0]
    for model in models:
        if model.name == name:
            return model
    return None
