"""The admission limiter on a real Valkey (the Lua scripts as Redis runs them; no fakeredis).

Each test uses its own subjects and model names, so the tests do not share buckets.
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from django.conf import settings

from inference.admission.ratelimit import (
    PREFIX,
    Capacity,
    Decision,
    Limits,
    Outcome,
    RateLimiter,
    Ticket,
    seconds_to_midnight,
)
from tests.support.load import admit_many


@pytest.fixture
def limiter() -> Iterator[RateLimiter]:
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield RateLimiter(client, waiter_ttl_s=1.0)
    client.close()


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ticket(
    subject: str,
    limits: Limits,
    *,
    cost: int = 10,
    model: str = "",
    capacity: Capacity | None = None,
    fair_key: str = "",
    lease_s: float = 60,
) -> Ticket:
    return Ticket(
        subject=subject,
        model=model or f"model-{subject}",
        cost=cost,
        limits=limits,
        capacity=capacity or Capacity(),
        fair_key=fair_key or subject,
        lease_s=lease_s,
    )


def until_settled(limiter: RateLimiter, t: Ticket, first: Decision, timeout: float = 10) -> Decision:
    decision = first
    deadline = time.monotonic() + timeout
    while decision.outcome is Outcome.WAITING and time.monotonic() < deadline:
        time.sleep(0.02)
        decision = limiter.attempt(t)
    return decision


# -- exactly N under concurrency, across processes ---------------------------------------


def run_in_two_processes(subject: str, limits: Limits, cost: int, per_process: int = 50) -> Counter[str]:
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 3.0  # both processes up and their threads waiting by then
    model = f"model-{subject}"
    args = (settings.REDIS_URL, subject, model, limits.as_dict(), cost, per_process, start_at)
    with context.Pool(2) as pool:
        batches = pool.starmap(admit_many, [args, args])
    return Counter(outcome for batch in batches for outcome in batch)


@pytest.mark.slow
@pytest.mark.parametrize("run", range(3))
def test_request_limit_admits_exactly_n_across_processes(run: int) -> None:
    # 37 requests in the bucket, refilling 1 a minute: exactly 37 of 100 simultaneous attempts.
    limits = Limits(policy="n", policy_id=1, requests_per_minute=1, burst=37)
    outcomes = run_in_two_processes(name(f"req{run}"), limits, cost=1)
    assert outcomes == Counter({"admitted": 37, "rate_limited": 63})


@pytest.mark.slow
def test_token_limit_admits_exactly_what_fits_across_processes() -> None:
    # 1000 tokens, 40 per request: 25 fit; the rest are refused, none overdrawn.
    limits = Limits(policy="t", policy_id=1, tokens_per_minute=1, burst=1000)
    assert run_in_two_processes(name("tok"), limits, cost=40) == Counter({"admitted": 25, "rate_limited": 75})


@pytest.mark.slow
def test_concurrency_limit_admits_exactly_n_across_processes() -> None:
    limits = Limits(policy="c", policy_id=1, max_concurrent=7)
    assert run_in_two_processes(name("conc"), limits, cost=1) == Counter({"admitted": 7, "rate_limited": 93})


# -- reservation, refund, leases ----------------------------------------------------------


def test_reserve_then_refund_unused_tokens_once(limiter: RateLimiter) -> None:
    subject = name("refund")
    limits = Limits(policy="r", policy_id=1, tokens_per_minute=1, burst=1000)  # 1000, ~no refill
    t = ticket(subject, limits, cost=300)
    decision = limiter.attempt(t)
    assert decision.outcome is Outcome.ADMITTED and decision.remaining_tokens == 700
    assert limiter.peek(subject, limits).concurrent == 1
    grant = t.grant()
    assert limiter.release(grant, used_tokens=120) is True  # 180 unused come back
    quota = limiter.peek(subject, limits)
    assert quota.remaining_tokens == 880 and quota.concurrent == 0
    assert limiter.release(grant, used_tokens=0) is False  # idempotent: no second refund
    assert limiter.peek(subject, limits).remaining_tokens == 880


def test_daily_budget_counts_reservations_and_refunds(limiter: RateLimiter) -> None:
    subject = name("daily")
    limits = Limits(policy="d", policy_id=1, daily_token_budget=250)
    first, second, third = (ticket(subject, limits, cost=100) for _ in range(3))
    assert limiter.attempt(first).outcome is Outcome.ADMITTED
    assert limiter.attempt(second).outcome is Outcome.ADMITTED
    refused = limiter.attempt(third)
    assert refused.outcome is Outcome.BUDGET_EXHAUSTED
    assert abs(refused.wait_s - seconds_to_midnight()) < 5  # Retry-After: next UTC midnight
    assert limiter.peek(subject, limits).tokens_today == 200
    limiter.release(first.grant(), used_tokens=50)  # 50 of its 100 come back
    assert limiter.peek(subject, limits).tokens_today == 150
    assert limiter.attempt(ticket(subject, limits, cost=100)).outcome is Outcome.ADMITTED


def test_request_larger_than_the_bucket_is_refused_as_too_large(limiter: RateLimiter) -> None:
    limits = Limits(policy="s", policy_id=1, tokens_per_minute=100, burst=1)
    assert limiter.attempt(ticket(name("big"), limits, cost=101)).outcome is Outcome.TOO_LARGE


def test_a_crashed_jobs_lease_expires(limiter: RateLimiter) -> None:
    subject = name("lease")
    limits = Limits(policy="l", policy_id=1, max_concurrent=1)
    assert limiter.attempt(ticket(subject, limits, lease_s=0.5)).outcome is Outcome.ADMITTED  # never released
    blocked = limiter.attempt(ticket(subject, limits))
    assert blocked.outcome is Outcome.RATE_LIMITED and blocked.concurrency_blocked
    time.sleep(0.6)
    assert limiter.attempt(ticket(subject, limits)).outcome is Outcome.ADMITTED


# -- waiting -------------------------------------------------------------------------------


def test_wait_then_admit_when_the_bucket_refills(limiter: RateLimiter) -> None:
    subject = name("wait")
    # One request in the bucket, one more every second; may wait 5 s.
    limits = Limits(policy="w", policy_id=1, requests_per_minute=60, burst=1 / 60, max_queue_wait_s=5)
    assert limiter.attempt(ticket(subject, limits)).outcome is Outcome.ADMITTED
    waiter = ticket(subject, limits)
    first = limiter.attempt(waiter)
    assert first.outcome is Outcome.WAITING and first.waiting_for == "rate_limit"
    assert 0.5 < first.wait_s <= 1.0 and first.position == 1
    started = time.monotonic()
    assert until_settled(limiter, waiter, first).outcome is Outcome.ADMITTED
    assert 0.4 < time.monotonic() - started < 2.0


def test_a_wait_longer_than_allowed_is_refused_at_once_with_an_accurate_retry_after(
    limiter: RateLimiter,
) -> None:
    subject = name("toolong")
    # One request per 10 s; may wait only 2 s: refused now, retry in ~10 s.
    limits = Limits(policy="x", policy_id=1, requests_per_minute=6, burst=1 / 6, max_queue_wait_s=2)
    assert limiter.attempt(ticket(subject, limits)).outcome is Outcome.ADMITTED
    refused = limiter.attempt(ticket(subject, limits))
    assert refused.outcome is Outcome.RATE_LIMITED
    assert 9.0 < refused.wait_s <= 10.0


def test_wait_then_timeout(limiter: RateLimiter) -> None:
    subject = name("timeout")
    limits = Limits(policy="c", policy_id=1, max_concurrent=1, max_queue_wait_s=0.5)
    assert limiter.attempt(ticket(subject, limits)).outcome is Outcome.ADMITTED  # holds the slot
    waiter = ticket(subject, limits)
    first = limiter.attempt(waiter)
    assert first.outcome is Outcome.WAITING
    final = until_settled(limiter, waiter, first)
    assert final.outcome is Outcome.RATE_LIMITED and final.concurrency_blocked
    assert waiter.wait_left_s() < 0.01  # refused once its wait (to the millisecond) ran out


def test_waiters_of_one_subject_are_served_in_arrival_order(limiter: RateLimiter) -> None:
    subject = name("fifo")
    limits = Limits(policy="f", policy_id=1, requests_per_minute=600, burst=1 / 600, max_queue_wait_s=5)
    assert limiter.attempt(ticket(subject, limits)).outcome is Outcome.ADMITTED
    early, late = ticket(subject, limits), ticket(subject, limits)
    assert limiter.attempt(early).position == 1
    assert limiter.attempt(late).position == 2
    time.sleep(0.15)  # the bucket has refilled one request: only the head of the queue gets it
    assert limiter.attempt(late).outcome is Outcome.WAITING
    assert limiter.attempt(early).outcome is Outcome.ADMITTED


def test_model_waiting_room_serves_higher_tiers_first_then_users_fairly(limiter: RateLimiter) -> None:
    model = name("room")
    capacity = Capacity(capacity=1)
    waiting = 30.0
    low = Limits(policy="low", policy_id=1, max_queue_wait_s=waiting, tier=0)
    high = Limits(policy="high", policy_id=2, max_queue_wait_s=waiting, tier=5)

    def make(user: str, limits: Limits) -> Ticket:
        return ticket(user, limits, model=model, capacity=capacity, fair_key=user)

    running = make("busy", low)
    assert limiter.attempt(running).outcome is Outcome.ADMITTED
    # User a queues two requests, then user b one, then a high-tier user one.
    a1, a2, b1, h1 = make("a", low), make("a", low), make("b", low), make("h", high)
    for t in (a1, a2, b1, h1):
        decision = limiter.attempt(t)
        assert decision.outcome is Outcome.WAITING and decision.waiting_for == "capacity"
    order: list[Ticket] = []
    current = running
    pending = [a1, a2, b1, h1]
    while pending:
        limiter.release(current.grant(), used_tokens=0)
        admitted = [t for t in pending if limiter.attempt(t).outcome is Outcome.ADMITTED]
        assert len(admitted) == 1  # one slot: exactly one waiter takes it
        current = admitted[0]
        order.append(current)
        pending.remove(current)
    assert order[0] is h1  # the higher tier first
    assert set(map(id, order[1:3])) == {id(a1), id(b1)}  # b is not queued behind all of a's
    assert order[3] is a2


def test_a_waiter_that_stops_polling_leaves_the_room(limiter: RateLimiter) -> None:
    model = name("gone")
    capacity = Capacity(capacity=1)
    limits = Limits(policy="g", policy_id=1, max_queue_wait_s=30)
    running = ticket("r", limits, model=model, capacity=capacity)
    assert limiter.attempt(running).outcome is Outcome.ADMITTED
    vanished, patient = (ticket(u, limits, model=model, capacity=capacity) for u in ("v", "p"))
    assert limiter.attempt(vanished).position == 1
    assert limiter.attempt(patient).position == 2
    # The waiter TTL (1 s here) passes without a poll from `vanished`; `patient` keeps polling.
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline:
        assert limiter.attempt(patient).outcome is Outcome.WAITING
        time.sleep(0.1)
    limiter.release(running.grant(), used_tokens=0)
    assert limiter.attempt(patient).outcome is Outcome.ADMITTED


def test_queue_cap_refuses_new_requests_with_overloaded(limiter: RateLimiter) -> None:
    model = name("cap")
    capacity = Capacity(capacity=1, queue_cap=2)
    limits = Limits(policy="q", policy_id=1, max_queue_wait_s=30)
    assert limiter.attempt(ticket("q1", limits, model=model, capacity=capacity)).outcome is Outcome.ADMITTED
    assert limiter.attempt(ticket("q2", limits, model=model, capacity=capacity)).outcome is Outcome.WAITING
    refused = limiter.attempt(ticket("q3", limits, model=model, capacity=capacity))
    assert refused.outcome is Outcome.OVERLOADED
    assert limiter.model_load(model) == (1, 1)


def test_abandoning_a_reserved_waiter_gives_its_tokens_back(limiter: RateLimiter) -> None:
    model = name("abandon")
    capacity = Capacity(capacity=1)
    limits = Limits(policy="a", policy_id=1, tokens_per_minute=1, burst=1000, max_queue_wait_s=30)
    assert (
        limiter.attempt(ticket("holder", limits, model=model, capacity=capacity)).outcome is Outcome.ADMITTED
    )
    waiter = ticket("waiter", limits, model=model, capacity=capacity, cost=400)
    waiting = limiter.attempt(waiter)
    assert waiting.outcome is Outcome.WAITING and waiting.remaining_tokens == 600  # reserved while waiting
    assert limiter.abandon(waiter) is True
    quota = limiter.peek("waiter", limits)
    assert quota.remaining_tokens == 1000 and quota.concurrent == 0
    assert limiter.model_load(model) == (1, 0)


def test_no_admission_key_is_left_without_a_ttl(limiter: RateLimiter) -> None:
    subject, model = name("ttl"), name("ttl-model")
    limits = Limits(
        policy="all",
        policy_id=1,
        requests_per_minute=60,
        tokens_per_minute=6000,
        max_concurrent=5,
        daily_token_budget=10**6,
        max_queue_wait_s=5,
        burst=1 / 60,
    )
    capacity = Capacity(capacity=1, queue_cap=10)
    first = ticket(subject, limits, model=model, capacity=capacity)
    assert limiter.attempt(first).outcome is Outcome.ADMITTED
    limiter.attempt(ticket(subject, limits, model=model, capacity=capacity))  # waits: queue keys
    limiter.release(first.grant(), used_tokens=5, duration_s=0.5)
    keys = [k.decode() for k in limiter.client.scan_iter(match=f"{PREFIX}:*", count=1000)]
    assert any(subject in k for k in keys) and any(model in k for k in keys)
    without_ttl = [k for k in keys if limiter.client.ttl(k) == -1]  # -2: expired meanwhile
    assert without_ttl == []
