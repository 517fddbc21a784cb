"""Replicas of a remote version: which one takes the next request, and which ones are healthy.

A version served by an OpenAI-compatible upstream may name several replicas of it. Every
worker that serves the version shares two things through Redis:

- **Load.** Each worker keeps the outstanding tokens and requests it has sent to each replica
  (a request reserves its prompt plus ``max_tokens``; the prompt part is given back at its
  first token, the rest when it ends) in its own hash, ``sluice:upstream:<version>:load:<worker>``,
  which expires unless the worker refreshes it. A request goes to the healthy replica with the
  fewest outstanding tokens summed over every live worker, so the spread is fleet-wide, and a
  worker that dies stops counting once its hash expires (a lost decrement cannot pin a replica
  as busy for good: each refresh writes the worker's exact local counts).
- **Health**, a breaker per replica in ``sluice:upstream:<version>:health``: consecutive
  failures (connection errors, timeouts, 5xx, and failed probes) take a replica out of
  rotation for ``SLUICE_UPSTREAM_COOLDOWN_S``; after that it is half-open: one trial request
  at a time may go to it, and the first success closes it again (as the version breaker does).

No Django here beyond reading settings through the caller: the backend gets a `ReplicaPool`.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from inference.core.keys import UPSTREAM_PREFIX

logger = logging.getLogger(__name__)

PREFIX = UPSTREAM_PREFIX
VERSIONS_KEY = f"{PREFIX}:versions"  # version key -> JSON list of its replica URLs
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


def load_key(version: str, worker: str) -> str:
    return f"{PREFIX}:{version}:load:{worker}"


def workers_key(version: str) -> str:
    return f"{PREFIX}:{version}:workers"


def health_key(version: str) -> str:
    return f"{PREFIX}:{version}:health"


def trial_key(version: str, url: str) -> str:
    return f"{PREFIX}:{version}:trial:{url}"


@dataclass
class Lease:
    """One request's claim on a replica: what it reserved, so that ending gives it back."""

    url: str
    tokens: int
    prompt_tokens: int
    trial: bool = False
    prefilled: bool = False
    released: bool = False


@dataclass
class ReplicaState:
    url: str
    state: str = CLOSED
    failures: int = 0
    until: float = 0.0  # open until (epoch seconds)
    error: str = ""
    outstanding_tokens: int = 0
    outstanding_requests: int = 0

    @property
    def healthy(self) -> float:
        """1 in rotation, 0.5 half-open, 0 out (the /metrics gauge)."""
        return {CLOSED: 1.0, HALF_OPEN: 0.5}.get(self.state, 0.0)


def _health(raw: dict[Any, Any], url: str, now: float) -> tuple[str, int, float, str]:
    data = raw.get(url.encode()) or raw.get(url)
    if not data:
        return CLOSED, 0, 0.0, ""
    try:
        entry = json.loads(data)
    except ValueError:
        return CLOSED, 0, 0.0, ""
    state = str(entry.get("state", CLOSED))
    until = float(entry.get("until", 0.0))
    if state == OPEN and now >= until:
        state = HALF_OPEN
    return state, int(entry.get("failures", 0)), until, str(entry.get("error", ""))


def read_replicas(
    client: Any, version: str, urls: Sequence[str], *, now: float | None = None
) -> list[ReplicaState]:
    """Every replica's health and fleet-wide load (the admin, the console and /metrics)."""
    now = time.time() if now is None else now
    workers = sorted(
        w.decode() if isinstance(w, bytes) else str(w) for w in client.smembers(workers_key(version))
    )
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(health_key(version))
    for worker in workers:
        pipe.hgetall(load_key(version, worker))
    health, *loads = pipe.execute()
    totals: Counter[str] = Counter()
    gone = []
    for worker, load in zip(workers, loads, strict=True):
        if not load:
            gone.append(worker)
        for name, value in load.items():
            totals[name.decode() if isinstance(name, bytes) else str(name)] += int(float(value))
    if gone:  # their hashes expired: those workers are gone
        client.srem(workers_key(version), *gone)
    states = []
    for url in urls:
        state, failures, until, error = _health(health, url, now)
        states.append(
            ReplicaState(
                url=url,
                state=state,
                failures=failures,
                until=until,
                error=error,
                outstanding_tokens=max(0, totals[f"t:{url}"]),
                outstanding_requests=max(0, totals[f"r:{url}"]),
            )
        )
    return states


def registered_versions(client: Any) -> dict[str, list[str]]:
    """Versions with replicas (as their workers registered them): version key -> URLs."""
    out: dict[str, list[str]] = {}
    for key, value in client.hgetall(VERSIONS_KEY).items():
        try:
            out[key.decode() if isinstance(key, bytes) else str(key)] = list(json.loads(value))
        except ValueError:
            continue
    return out


class NoReplica(RuntimeError):
    """Every replica is out of rotation (and no half-open one is free for a trial)."""


class ReplicaPool:
    """One worker's view of one version's replicas (see the module docstring)."""

    def __init__(
        self,
        version: str,
        urls: Sequence[str],
        *,
        worker: str,
        client: Callable[[], Any],
        failures: int = 3,
        cooldown_s: float = 10.0,
        trial_s: float = 30.0,
        load_ttl_s: float = 30.0,
    ) -> None:
        if not urls:
            raise ValueError("a remote version needs at least one upstream URL")
        self.version, self.urls, self.worker = version, list(dict.fromkeys(urls)), worker
        self._client = client
        self.failures, self.cooldown_s, self.trial_s, self.load_ttl_s = (
            failures,
            cooldown_s,
            trial_s,
            load_ttl_s,
        )
        self._lock = threading.Lock()
        self._tokens: Counter[str] = Counter()  # this worker's outstanding, exact
        self._requests: Counter[str] = Counter()
        self._next = 0  # round robin while Redis is unreachable
        self.register()

    # -- Redis upkeep ---------------------------------------------------------------------------

    def register(self) -> None:
        """Announce the version's replicas and write this worker's exact load (periodically)."""
        try:
            client = self._client()
            with self._lock:
                fields = {f"t:{u}": self._tokens[u] for u in self.urls} | {
                    f"r:{u}": self._requests[u] for u in self.urls
                }
            key = load_key(self.version, self.worker)
            pipe = client.pipeline(transaction=False)
            pipe.hset(VERSIONS_KEY, self.version, json.dumps(self.urls))
            pipe.hset(key, mapping=fields)
            pipe.expire(key, int(self.load_ttl_s))
            pipe.sadd(workers_key(self.version), self.worker)
            pipe.execute()
        except Exception:
            logger.warning("upstream %s: could not write this worker's load", self.version, exc_info=True)

    def unregister(self) -> None:
        try:
            client = self._client()
            client.delete(load_key(self.version, self.worker))
            client.srem(workers_key(self.version), self.worker)
            if not client.scard(workers_key(self.version)):
                # No worker serves it any more: off /metrics and the console.
                client.hdel(VERSIONS_KEY, self.version)
        except Exception:
            logger.debug("upstream %s: could not remove this worker's load", self.version, exc_info=True)

    # -- choosing a replica ---------------------------------------------------------------------

    def acquire(self, *, prompt_tokens: int, max_tokens: int, exclude: Sequence[str] = ()) -> Lease:
        """Reserve the least-loaded healthy replica (other than ``exclude``, unless that is all
        there is). Raises `NoReplica` when none is in rotation."""
        tokens = prompt_tokens + max_tokens
        with self._lock:
            try:
                states = read_replicas(self._client(), self.version, self.urls)
            except Exception:
                logger.warning("upstream %s: Redis unreachable, choosing replicas round robin", self.version)
                url = self.urls[self._next % len(self.urls)]
                self._next += 1
                return self._reserve(Lease(url, tokens, prompt_tokens), remote=False)
            usable = [s for s in states if s.url not in exclude] or states
            # A half-open replica gets the next request as its trial (one at a time, fleet-wide),
            # even while others are in rotation: that is how it comes back. If it fails before
            # its first token, the request is retried on another replica.
            for state in sorted(
                (s for s in usable if s.state == HALF_OPEN), key=lambda s: s.outstanding_tokens
            ):
                if self._client().set(
                    trial_key(self.version, state.url), self.worker, nx=True, ex=int(self.trial_s)
                ):
                    return self._reserve(Lease(state.url, tokens, prompt_tokens, trial=True))
            closed = [s for s in usable if s.state == CLOSED]
            if closed:
                least = min(s.outstanding_tokens for s in closed)
                # Ties (an idle fleet) are broken at random so that workers do not all pick the first.
                pick = random.choice([s for s in closed if s.outstanding_tokens == least])
                return self._reserve(Lease(pick.url, tokens, prompt_tokens))
        soonest = min(states, key=lambda s: s.until)
        raise NoReplica(
            f"no replica of {self.version} is in rotation (next back in "
            f"{max(0.0, soonest.until - time.time()):.1f}s; last error: {soonest.error or 'none'})"
        )

    def _reserve(self, lease: Lease, *, remote: bool = True) -> Lease:
        self._tokens[lease.url] += lease.tokens
        self._requests[lease.url] += 1
        if remote:
            self._add(lease.url, lease.tokens, 1)
        return lease

    def _add(self, url: str, tokens: int, requests: int) -> None:
        try:
            pipe = self._client().pipeline(transaction=False)
            key = load_key(self.version, self.worker)
            if tokens:
                pipe.hincrby(key, f"t:{url}", tokens)
            if requests:
                pipe.hincrby(key, f"r:{url}", requests)
            pipe.expire(key, int(self.load_ttl_s))
            pipe.execute()
        except Exception:  # the next register() writes the exact counts
            logger.debug("upstream %s: could not update load", self.version, exc_info=True)

    def prefilled(self, lease: Lease) -> None:
        """The first token arrived: the prompt is no longer outstanding work."""
        with self._lock:  # the flags are read and set together with release's
            if lease.prefilled or lease.released:
                return
            lease.prefilled = True
            self._tokens[lease.url] -= lease.prompt_tokens
        self._add(lease.url, -lease.prompt_tokens, 0)

    def release(self, lease: Lease) -> None:
        with self._lock:
            if lease.released:
                return
            lease.released = True
            left = lease.tokens - (lease.prompt_tokens if lease.prefilled else 0)
            self._tokens[lease.url] -= left
            self._requests[lease.url] -= 1
        self._add(lease.url, -left, -1)
        if lease.trial:
            try:
                self._client().delete(trial_key(self.version, lease.url))
            except Exception:
                logger.debug("upstream %s: could not end a trial", self.version, exc_info=True)

    # -- health ---------------------------------------------------------------------------------

    def succeeded(self, url: str) -> None:
        self._set_health(url, ok=True)

    def failed(self, url: str, error: str) -> None:
        self._set_health(url, ok=False, error=error)

    def _set_health(self, url: str, *, ok: bool, error: str = "") -> None:
        try:
            client = self._client()
            now = time.time()
            state, failures, _until, _error = _health(client.hgetall(health_key(self.version)), url, now)
            if ok:
                if state == CLOSED and failures == 0:
                    return  # the common case: nothing to write
                entry: dict[str, Any] = {"state": CLOSED, "failures": 0}
                if state != CLOSED:
                    logger.info("upstream %s: replica %s is back in rotation", self.version, url)
            else:
                failures += 1
                # A half-open replica that fails its trial goes straight back out.
                opened = state == HALF_OPEN or failures >= self.failures
                entry = {"state": OPEN if opened else CLOSED, "failures": failures, "error": error[:300]}
                if opened:
                    entry["until"] = now + self.cooldown_s
                    if state != OPEN:
                        logger.warning(
                            "upstream %s: replica %s out of rotation for %.0fs after %d failure(s): %s",
                            self.version, url, self.cooldown_s, failures, error,
                        )  # fmt: skip
            client.hset(health_key(self.version), url, json.dumps(entry))
        except Exception:
            logger.debug("upstream %s: could not record health", self.version, exc_info=True)

    def status(self) -> list[ReplicaState]:
        return read_replicas(self._client(), self.version, self.urls)


def resolve_api_key(plain: str, env_name: str, environ: dict[str, str]) -> str:
    """The upstream's bearer token: from the environment variable named on the version, or
    the file its ``NAME_FILE`` variant points at (a mounted secret), else the plain field."""
    if env_name:
        if env_name.endswith("_FILE"):  # the version names the file variable itself
            path = environ.get(env_name)
        else:
            value = environ.get(env_name)
            if value:
                return value.strip()
            path = environ.get(f"{env_name}_FILE")
        if path:
            with open(path, encoding="utf-8") as handle:
                return handle.read().strip()
        raise ValueError(
            f"the upstream key's variable {env_name} (or {env_name}_FILE) is not set on this worker"
        )
    return plain
