"""Admission state in Redis, below both the gateway and the workers.

- `ratelimit`: token buckets, concurrency leases, daily budgets, the fair waiting room, each
  decision one atomic Lua script (``lua/``). No Django ORM.
- `services.get_limiter` / `services.admission_release`: the process's limiter, and what a
  job calls when it ends (free its leases, refund or charge tokens).

The gateway decides *whether* a request gets in (policies are its models, `gateway.admission`
is its edge); the worker only releases what a job holds. Both import this package, and
`inference` never imports `gateway`.
"""

from __future__ import annotations
