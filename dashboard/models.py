"""The dashboard app's models: the audit log, defined one floor down (inference/core/models.py)
so that the gateway and inference can write it without importing the dashboard. Imported here
so that Django finds them when it loads this app's models."""

from inference.core.models import AuditAction, AuditEntry, AuthFailure

__all__ = ["AuditAction", "AuditEntry", "AuthFailure"]
