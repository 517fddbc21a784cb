"""Admin: jobs (read-only; cancel), dead letters (requeue, discard), chat sessions with their
messages, profiles, knowledge bases with their documents' ingestion status, the result cache
(clear), and model versions (activate, canary, promote, roll back, drain, retire; health,
breaker, workers; events).

Django's admin autodiscovery imports this package; each module registers its models.
"""

from inference.admin import jobs, knowledge, usage, versions

__all__ = ["jobs", "knowledge", "usage", "versions"]
