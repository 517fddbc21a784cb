"""Admission control in Redis: token buckets, concurrency leases, daily budgets, a FIFO per
subject and a fair, tiered waiting room per model — each decision one atomic Lua script.

No Django ORM here (driven by `gateway.services` and released by `inference.admission`;
benchmarked on its own):

- `Limits`: a policy's numbers, as a snapshot. `Capacity`: a model's in-flight limit and queue cap.
- `Ticket`: one request on its way in (subject, model, cost in tokens, its deadline to wait).
- `RateLimiter.attempt` (and `attempt_async`): one try; the `Decision` says admitted, waiting
  (with position and ETA), or refused (with an accurate retry-after).
- `RateLimiter.release`: at job end, free the leases and refund unused tokens (idempotent).

Keys share the hash tag ``{rl}`` so that the multi-key scripts also run on Redis Cluster
(all admission state lives in one slot). Every key carries a TTL (see lua/).
"""

from __future__ import annotations

import enum
import math
import time
import uuid
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

from inference.core.keys import RATELIMIT_PREFIX

_LUA = Path(__file__).with_name("lua")
PREFIX = RATELIMIT_PREFIX
MAX_TIER = 9
DAY_S = 86400


def _script(name: str) -> str:
    return (_LUA / "common.lua").read_text() + "\n" + (_LUA / f"{name}.lua").read_text()


ADMIT, ABANDON, RELEASE, PEEK = (_script(n) for n in ("admit", "abandon", "release", "peek"))


@dataclass(frozen=True)
class Limits:
    """A rate-limit policy's numbers (0: unlimited). See gateway.models.RateLimitPolicy."""

    policy: str = "unlimited"
    policy_id: int | None = None
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    max_concurrent: int = 0
    daily_token_budget: int = 0
    max_queue_wait_s: float = 0.0
    tier: int = 0
    burst: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Capacity:
    """A served model's admission limits (0: unlimited).

    ``capacity``: jobs admitted and not finished; beyond it requests wait in the model's
    waiting room. ``queue_cap``: in-flight plus waiting; beyond it new requests get 503.
    """

    capacity: int = 0
    queue_cap: int = 0


class Outcome(enum.StrEnum):
    ADMITTED = "admitted"
    WAITING = "waiting"
    RATE_LIMITED = "rate_limited"  # 429: the subject's buckets, or its concurrency
    OVERLOADED = "overloaded"  # 503: the model's queue is full, or its capacity stayed full
    TOO_LARGE = "too_large"  # 429: more tokens than the policy's bucket can ever hold
    BUDGET_EXHAUSTED = "budget_exhausted"  # 429: the daily token budget is spent

    @property
    def refused(self) -> bool:
        return self not in (Outcome.ADMITTED, Outcome.WAITING)


_STATUS = {
    1: Outcome.ADMITTED,
    0: Outcome.WAITING,
    2: Outcome.WAITING,
    -1: Outcome.RATE_LIMITED,
    -2: Outcome.OVERLOADED,
    -3: Outcome.TOO_LARGE,
    -4: Outcome.BUDGET_EXHAUSTED,
}


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    limits: Limits
    #: Waiting: expected wait (ETA). Refused: when a retry may succeed. Seconds.
    wait_s: float = 0.0
    #: Waiting: 1-based place in the queue it waits in.
    position: int = 0
    #: Waiting: "rate_limit" (the subject's own limits) or "capacity" (the model is busy).
    waiting_for: str = ""
    concurrency_blocked: bool = False
    remaining_requests: int | None = None
    reset_requests_s: float = 0.0
    remaining_tokens: int | None = None
    reset_tokens_s: float = 0.0


@dataclass
class Ticket:
    """One request on its way in. ``id`` becomes its lease once admitted."""

    subject: str
    model: str
    cost: int
    limits: Limits
    capacity: Capacity
    fair_key: str
    lease_s: float
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.monotonic)
    attempts: int = 0

    @property
    def tier(self) -> int:
        return max(0, min(MAX_TIER, self.limits.tier))

    def wait_left_s(self, now: float | None = None) -> float:
        return self.limits.max_queue_wait_s - ((now or time.monotonic()) - self.started)

    def grant(self) -> dict[str, Any]:
        """What the job keeps to release its admission when it ends."""
        return {
            "lease": self.id,
            "subject": self.subject,
            "model": self.model,
            "reserved_tokens": self.cost,
            "day": day_number(),
            "policy": self.limits.policy,
            "tpm": self.limits.tokens_per_minute,
            "burst": self.limits.burst,
            "tier": self.tier,
        }


@dataclass(frozen=True)
class Quota:
    limits: Limits
    remaining_requests: int | None
    reset_requests_s: float
    remaining_tokens: int | None
    reset_tokens_s: float
    concurrent: int
    tokens_today: int


def day_number(now: float | None = None) -> int:
    return int((now if now is not None else time.time()) // DAY_S)


def seconds_to_midnight(now: float | None = None) -> float:
    now = now if now is not None else time.time()
    return (day_number(now) + 1) * DAY_S - now


def subject_keys(subject: str, day: int | None = None) -> dict[str, str]:
    base = f"{PREFIX}:s:{subject}"
    return {
        "req": f"{base}:req",
        "tok": f"{base}:tok",
        "conc": f"{base}:conc",
        "day": f"{base}:day:{day if day is not None else day_number()}",
        "wait": f"{base}:wait",
        "wait_exp": f"{base}:wait_exp",
    }


def model_keys(model: str) -> dict[str, str]:
    base = f"{PREFIX}:m:{model}"
    return {
        "inflight": f"{base}:inflight",
        "wait": f"{base}:wait",
        "wait_exp": f"{base}:wait_exp",
        "meta": f"{base}:meta",
    }


def _ticket_keys(ticket: Ticket) -> list[str]:
    s, m = subject_keys(ticket.subject), model_keys(ticket.model)
    return [
        s["req"], s["tok"], s["conc"], s["day"], s["wait"], s["wait_exp"],
        m["inflight"], m["wait"], m["wait_exp"], m["meta"], f"{PREFIX}:t:{ticket.id}",
    ]  # fmt: skip


def _optional(value: int) -> int | None:
    return None if value < 0 else value


class RateLimiter:
    """Admission decisions against one Redis (sync and asyncio clients)."""

    def __init__(self, client: redis.Redis, *, waiter_ttl_s: float = 5.0) -> None:
        self.client = client
        self.waiter_ttl_s = waiter_ttl_s
        self._admit = client.register_script(ADMIT)
        self._abandon = client.register_script(ABANDON)
        self._release = client.register_script(RELEASE)
        self._peek = client.register_script(PEEK)
        self._async: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    # -- one attempt ---------------------------------------------------------------------

    def _admit_args(self, ticket: Ticket) -> list[Any]:
        limits = ticket.limits
        wait_left_ms = max(0, int(ticket.wait_left_s() * 1000))
        return [
            ticket.id,
            limits.requests_per_minute,
            limits.tokens_per_minute,
            limits.burst,
            ticket.cost,
            limits.max_concurrent,
            limits.daily_token_budget,
            int(ticket.lease_s * 1000),
            ticket.capacity.capacity,
            ticket.capacity.queue_cap,
            ticket.tier,
            ticket.fair_key,
            int(self.waiter_ttl_s * 1000),
            wait_left_ms,
            2 * DAY_S,
        ]

    def _decision(self, ticket: Ticket, raw: list[Any]) -> Decision:
        status, wait_ms, position, req_left, req_reset, tok_left, tok_reset, conc = (int(x) for x in raw)
        outcome = _STATUS[status]
        wait_s = wait_ms / 1000
        if outcome is Outcome.BUDGET_EXHAUSTED:
            wait_s = seconds_to_midnight()
        elif outcome is Outcome.RATE_LIMITED and wait_ms == 0:
            wait_s = 1.0  # only the concurrency limit: a slot frees when a job ends
        ticket.attempts += 1
        return Decision(
            outcome=outcome,
            limits=ticket.limits,
            wait_s=wait_s,
            position=position,
            waiting_for=("capacity" if status == 2 else "rate_limit") if outcome is Outcome.WAITING else "",
            concurrency_blocked=bool(conc),
            remaining_requests=_optional(req_left),
            reset_requests_s=req_reset / 1000,
            remaining_tokens=_optional(tok_left),
            reset_tokens_s=tok_reset / 1000,
        )

    def attempt(self, ticket: Ticket) -> Decision:
        raw = self._admit(keys=_ticket_keys(ticket), args=self._admit_args(ticket))
        return self._decision(ticket, raw)

    def _scripts_for(self, client: redis.asyncio.Redis) -> dict[str, Any]:
        scripts = self._async.get(client)
        if scripts is None:
            scripts = {
                "admit": client.register_script(ADMIT),
                "abandon": client.register_script(ABANDON),
            }
            self._async[client] = scripts
        return scripts

    async def attempt_async(self, ticket: Ticket, client: redis.asyncio.Redis) -> Decision:
        raw = await self._scripts_for(client)["admit"](
            keys=_ticket_keys(ticket), args=self._admit_args(ticket)
        )
        return self._decision(ticket, raw)

    def _abandon_args(self, ticket: Ticket) -> list[Any]:
        limits = ticket.limits
        return [ticket.id, limits.requests_per_minute, limits.tokens_per_minute, limits.burst]

    def abandon(self, ticket: Ticket) -> bool:
        """A waiting request gives up: leave the queues, give back its reservation."""
        return bool(self._abandon(keys=_ticket_keys(ticket), args=self._abandon_args(ticket)))

    async def abandon_async(self, ticket: Ticket, client: redis.asyncio.Redis) -> bool:
        script = self._scripts_for(client)["abandon"]
        return bool(await script(keys=_ticket_keys(ticket), args=self._abandon_args(ticket)))

    # -- job end -------------------------------------------------------------------------

    def release(self, grant: dict[str, Any], *, used_tokens: int, duration_s: float = 0.0) -> bool:
        """Free an admitted job's leases; refund the tokens it reserved but did not use, or
        charge those it used beyond its reservation (history and retrieval are added in the
        worker, after admission)."""
        s = subject_keys(str(grant["subject"]), int(grant["day"]))
        m = model_keys(str(grant["model"]))
        unused = int(grant["reserved_tokens"]) - max(0, used_tokens)  # < 0: charged
        return bool(
            self._release(
                keys=[s["tok"], s["conc"], s["day"], m["inflight"], m["meta"]],
                args=[
                    grant["lease"],
                    int(grant["tpm"]),
                    float(grant["burst"]),
                    unused,
                    int(duration_s * 1000),
                ],
            )
        )

    # -- introspection -------------------------------------------------------------------

    def peek(self, subject: str, limits: Limits) -> Quota:
        s = subject_keys(subject)
        raw = self._peek(
            keys=[s["req"], s["tok"], s["conc"], s["day"]],
            args=[limits.requests_per_minute, limits.tokens_per_minute, limits.burst],
        )
        req_left, req_reset, tok_left, tok_reset, concurrent, today = (int(x) for x in raw)
        return Quota(
            limits=limits,
            remaining_requests=_optional(req_left),
            reset_requests_s=req_reset / 1000,
            remaining_tokens=_optional(tok_left),
            reset_tokens_s=tok_reset / 1000,
            concurrent=concurrent,
            tokens_today=today,
        )

    def model_load(self, model: str) -> tuple[int, int]:
        """(in flight, waiting) for a model, counting only live entries."""
        m = model_keys(model)
        now_ms = int(time.time() * 1000)
        pipe = self.client.pipeline(transaction=False)
        pipe.zcount(m["inflight"], now_ms, "+inf")
        pipe.zcount(m["wait_exp"], now_ms, "+inf")
        inflight, waiting = pipe.execute()
        return int(inflight), int(waiting)


def poll_interval(decision: Decision) -> float:
    """How long a waiter sleeps before its next attempt: until its bucket has refilled when
    that is known, else short at the head of the queue and longer further back (a thousand
    waiters must not poll Redis at full speed)."""
    if decision.waiting_for == "rate_limit" and decision.wait_s > 0:
        return min(0.25, max(0.005, decision.wait_s))
    return min(0.25, 0.02 * (1 + math.log2(max(1, decision.position))))
