"""Admission at the protocol edge: the first attempt, waiting (blocking or as events), the
errors and the ``x-ratelimit-*`` headers — shared by the OpenAI, TGI, jobs and WebSocket
entry points so that they all behave the same (DESIGN.md §1 step 3).
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth.models import User
from django.http.response import HttpResponseBase
from rest_framework import status

from gateway.errors import ApiError
from gateway.models import ApiKey
from gateway.services import admission_ticket
from inference.admission.ratelimit import Capacity, Decision, Limits, Outcome, Quota, Ticket
from inference.admission.services import (
    admission_abandon,
    admission_attempt,
    admission_events,
    admission_wait,
)
from inference.observability.recording import record_request_end
from inference.versions.registry import ServedModel

RATELIMIT_HEADER_PREFIX = "x-ratelimit-"
POLICY_HEADER = "x-sluice-policy"


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``, ``1h2m3s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{secs}s"


def ratelimit_headers(state: Decision | Quota) -> dict[str, str]:
    """``x-ratelimit-*`` as OpenAI sends them; a dimension the policy leaves unlimited has none."""
    limits: Limits = state.limits
    headers: dict[str, str] = {}
    if limits.requests_per_minute and state.remaining_requests is not None:
        headers["x-ratelimit-limit-requests"] = str(limits.requests_per_minute)
        headers["x-ratelimit-remaining-requests"] = str(max(0, state.remaining_requests))
        headers["x-ratelimit-reset-requests"] = duration(state.reset_requests_s)
    if limits.tokens_per_minute and state.remaining_tokens is not None:
        headers["x-ratelimit-limit-tokens"] = str(limits.tokens_per_minute)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, state.remaining_tokens))
        headers["x-ratelimit-reset-tokens"] = duration(state.reset_tokens_s)
    if limits.policy_id is not None:
        headers[POLICY_HEADER] = limits.policy
    return headers


R = TypeVar("R", bound=HttpResponseBase)


def with_ratelimit(response: R, admission: Admission | None) -> R:
    """``response`` with the ``x-ratelimit-*`` headers its request's admission result carries
    (none for a replay, which was not admitted again: the view's base then reads the quota)."""
    if admission is not None:
        for name, value in admission.headers.items():
            if name not in response:
                response[name] = value
    return response


def has_ratelimit_headers(response: HttpResponseBase) -> bool:
    return any(name.startswith(RATELIMIT_HEADER_PREFIX) for name in response.headers) or (
        POLICY_HEADER in response
    )


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


def refusal(decision: Decision, *, cost: int) -> ApiError:
    """The error for a refused request (429 for the caller's own limits, 503 for overload)."""
    limits = decision.limits
    headers = ratelimit_headers(decision)
    outcome = decision.outcome
    if outcome is Outcome.OVERLOADED:
        wait = decision.wait_s or 0.0
        headers["Retry-After"] = retry_after(max(wait, _overload_retry_s()))
        return ApiError(
            "The model is overloaded: too many requests are queued. Retry after the time in the "
            "Retry-After header.",
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            code="overloaded",
            headers=headers,
        )
    if outcome is Outcome.TOO_LARGE:
        return ApiError(
            f"Request too large: it needs {cost} tokens (prompt + max_tokens), more than the "
            f"{limits.tokens_per_minute * limits.burst:.0f} tokens your rate limit "
            f"(policy '{limits.policy}') can ever hold. Reduce max_tokens or the prompt.",
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            code="request_too_large",
            param="max_tokens",
            headers=headers,
        )
    headers["Retry-After"] = retry_after(decision.wait_s)
    if outcome is Outcome.BUDGET_EXHAUSTED:
        return ApiError(
            f"Daily token budget exhausted ({limits.daily_token_budget} tokens per day, policy "
            f"'{limits.policy}'); it resets at 00:00 UTC.",
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            code="daily_budget_exceeded",
            headers=headers,
        )
    if decision.concurrency_blocked:
        message = (
            f"Too many concurrent requests: at most {limits.max_concurrent} at once "
            f"(policy '{limits.policy}')."
        )
    else:
        message = (
            f"Rate limit reached for requests and tokens (policy '{limits.policy}': "
            f"{limits.requests_per_minute or 'unlimited'} requests and "
            f"{limits.tokens_per_minute or 'unlimited'} tokens per minute). This request needs {cost} "
            f"tokens. Retry after {headers['Retry-After']}s."
        )
    tokens_short = decision.remaining_tokens is not None and decision.remaining_tokens < cost
    return ApiError(
        message,
        status_code=status.HTTP_429_TOO_MANY_REQUESTS,
        code="rate_limit_exceeded",
        headers=headers,
        # OpenAI tells the two apart in `type`; a client backs off differently for each.
        type="tokens" if tokens_short and not decision.concurrency_blocked else "requests",
    )


def _overload_retry_s() -> float:
    return float(settings.SLUICE_OVERLOAD_RETRY_AFTER_S)


def queue_event(decision: Decision) -> dict[str, Any]:
    return {
        "position": decision.position,
        "eta_s": round(decision.wait_s, 3),
        "waiting_for": decision.waiting_for,
    }


@dataclass
class Admission:
    """A request's way in: admitted at once, or waiting (then `wait` or `events`)."""

    ticket: Ticket
    decision: Decision
    version: str = "default"
    #: The request's timeline: what it waited for ("" if admitted at once), when it got in
    #: (wall clock) and how long after its first attempt (monotonic).
    waited_for: str = ""
    admitted_at: float | None = None
    wait_s: float = 0.0

    def __post_init__(self) -> None:
        self.headers = ratelimit_headers(self.decision)
        if self.decision.outcome is Outcome.WAITING:
            self.waited_for = self.decision.waiting_for
        self._note_admitted()

    def _note_admitted(self) -> None:
        if self.admitted and self.admitted_at is None:
            self.admitted_at = time.time()
            self.wait_s = max(0.0, time.monotonic() - self.ticket.started)

    @property
    def admitted(self) -> bool:
        return self.decision.outcome is Outcome.ADMITTED

    @property
    def grant(self) -> dict[str, Any]:
        return self.ticket.grant()

    @property
    def tier(self) -> int:
        return self.ticket.tier

    #: The ``x-ratelimit-*`` headers of the first attempt's decision: what the caller had
    #: left when the request came in (``with_ratelimit`` puts them on the response).
    headers: dict[str, str] = field(default_factory=dict)

    def wait(self) -> None:
        """Block until admitted; raise the 429/503 if refused (sync views)."""
        if not self.admitted:
            self.decision = admission_wait(ticket=self.ticket, decision=self.decision)
        self._note_admitted()
        if not self.admitted:
            raise rejected(
                self.decision, cost=self.ticket.cost, model=self.ticket.model, version=self.version
            )

    async def events(self) -> AsyncIterator[Decision]:
        """Waiting decisions as they change; ends when admitted, raises the refusal."""
        async for decision in admission_events(ticket=self.ticket, decision=self.decision):
            self.decision = decision
            if decision.outcome is Outcome.WAITING:
                yield decision
        self._note_admitted()
        if not self.admitted:
            raise rejected(
                self.decision, cost=self.ticket.cost, model=self.ticket.model, version=self.version
            )

    def abandon(self) -> None:
        admission_abandon(ticket=self.ticket)


def admit(
    *,
    user: User,
    api_key: ApiKey | None,
    model: ServedModel | None = None,
    cost: int,
    model_name: str | None = None,
) -> Admission:
    """First attempt: returns an admitted or waiting Admission, raises the refusal.
    ``model_name`` without ``model``: a route that is not a generation model (embeddings),
    limited by the caller's policy only."""
    ticket = admission_ticket(
        user=user,
        api_key=api_key,
        model=model.name if model is not None else str(model_name),
        capacity=Capacity(capacity=model.capacity, queue_cap=model.queue_cap)
        if model is not None
        else Capacity(),
        cost=cost,
    )
    decision = admission_attempt(ticket=ticket)
    version = model.label if model is not None else "-"
    if decision.outcome.refused:
        raise rejected(decision, cost=cost, model=ticket.model, version=version)
    return Admission(ticket=ticket, decision=decision, version=version)


def rejected(decision: Decision, *, cost: int, model: str, version: str) -> ApiError:
    """The refusal, counted as a rejected request of its model (sluice_requests_total)."""
    record_request_end(model=model, version=version, status="rejected", reason=decision.outcome.value)
    return refusal(decision, cost=cost)
