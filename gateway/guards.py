"""The guardrails of a request's policy, at the gateway: input checks in the prepare step, and
the output guards' spec handed to the job (the engine applies it, inference/guards.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from prometheus_client import Counter
from rest_framework import status

from gateway.errors import ApiError
from gateway.selectors import policy_guards
from inference.guards import Guard, GuardConfigError, build

logger = logging.getLogger(__name__)

GUARD_DECISIONS = Counter(
    "sluice_guard_decisions_total",
    "Input guard decisions that changed a request (refused, redacted), by guard and policy",
    ["guard", "action", "policy"],
)


@dataclass
class RequestGuards:
    policy: str = ""
    input: list[Guard] = field(default_factory=list)
    output: list[dict[str, Any]] = field(default_factory=list)

    def check(self, text: str, *, param: str, error_status: int = status.HTTP_400_BAD_REQUEST) -> str:
        """``text`` as the model may see it (redacted); raises the 400 ``content_filtered``
        (400 on every route, TGI's too: a refusal is not a malformed request)."""
        for guard in self.input:
            verdict = guard.check(text)
            if not verdict.allowed:
                GUARD_DECISIONS.labels(verdict.guard or guard.kind, "refused", self.policy).inc()
                raise ApiError(
                    f"The request was refused by a content filter: {verdict.reason}.",
                    status_code=status.HTTP_400_BAD_REQUEST,
                    code="content_filtered",
                    param=param,
                    tgi_type="validation",
                )
            if verdict.redactions:
                GUARD_DECISIONS.labels(verdict.guard or guard.kind, "redacted", self.policy).inc(
                    verdict.redactions
                )
            text = verdict.text
        return text


NO_GUARDS = RequestGuards()


def guards_for(*, user: Any, api_key: Any) -> RequestGuards:
    """The caller's policy's guards (cached with the policy, SLUICE_POLICY_CACHE_S)."""
    policy, config = policy_guards(user=user, api_key=api_key)
    if not config:
        return NO_GUARDS
    try:
        return RequestGuards(
            policy=policy,
            input=build(config.get("input"), side="input", extra=settings.SLUICE_GUARD_KINDS),
            output=list(config.get("output") or []),
        )
    except GuardConfigError:
        # The admin validates guards on save; a bad config written around it fails closed.
        logger.exception("policy %s has invalid guards", policy)
        raise ApiError(
            "This request's policy has an invalid guard configuration; an operator must fix it.",
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            code="guard_misconfigured",
        ) from None
