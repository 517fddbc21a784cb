"""Idempotent submission: ``Idempotency-Key`` on every submit route.

The same key with the same body, from the same user, within 24 hours gets the same job(s):
their stored result, or their stream from the start. The same key with another body is a
409. A request that fails before its job exists (invalid, refused by its rate limit) leaves
no record, so it can be retried under the same key.

Records live in Redis (``sluice:idem:u<user>:<sha256 of the key>``, TTL 24 h): ``pending``
while the first request is being admitted, then the job ids. A second request arriving while
the first is pending waits for it (bounded), so two racing retries still make one job.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from rest_framework import status
from rest_framework.request import Request

from gateway.errors import ApiError
from inference.core.keys import idempotency_key
from inference.core.redis import get_redis

HEADER = "Idempotency-Key"
TTL_S = 24 * 3600
PENDING_WAIT_S = 30.0
_USABLE = re.compile(r"^[\x21-\x7e]{1,255}$")


def body_hash(request: Request) -> str:
    material = json.dumps(
        {"path": request.path, "body": request.data}, sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass
class IdempotencyClaim:
    key: str
    digest: str
    #: Set when the key was seen before with this body: the jobs to answer with.
    job_ids: list[str] = field(default_factory=list)
    settled: bool = False

    @property
    def replay(self) -> bool:
        return bool(self.job_ids)

    @classmethod
    def begin(cls, request: Request, *, user_id: int) -> IdempotencyClaim | None:
        raw = request.headers.get(HEADER)
        if raw is None:
            return None
        if not _USABLE.match(raw):
            raise ApiError(
                f"'{HEADER}' must be 1 to 255 printable ASCII characters.",
                code="invalid_value",
                param=HEADER,
            )
        key = idempotency_key(user_id, hashlib.sha256(raw.encode()).hexdigest())
        claim = cls(key=key, digest=body_hash(request))
        claim._acquire()
        return claim

    def _acquire(self) -> None:
        client = get_redis()
        deadline = time.monotonic() + PENDING_WAIT_S
        while True:
            mine = json.dumps({"h": self.digest, "state": "pending"})
            if client.set(self.key, mine, nx=True, ex=TTL_S):
                return  # first use of the key: this request creates the job
            raw: Any = client.get(self.key)
            if raw is None:
                continue  # the first request gave up meanwhile: try again
            record = json.loads(raw)
            if record.get("h") != self.digest:
                self.settled = True
                raise ApiError(
                    f"This {HEADER} was already used with a different request body.",
                    status_code=status.HTTP_409_CONFLICT,
                    code="idempotency_key_reused",
                    param=HEADER,
                )
            if record.get("state") == "done":
                self.job_ids = [str(j) for j in record.get("jobs", [])]
                self.settled = True
                return
            if time.monotonic() > deadline:
                self.settled = True
                raise ApiError(
                    f"A request with this {HEADER} is still being accepted; retry shortly.",
                    status_code=status.HTTP_409_CONFLICT,
                    code="idempotency_key_in_use",
                    param=HEADER,
                    headers={"Retry-After": "1"},
                )
            time.sleep(0.05)

    def complete(self, job_ids: list[str]) -> None:
        if self.settled:
            return
        get_redis().set(self.key, json.dumps({"h": self.digest, "state": "done", "jobs": job_ids}), ex=TTL_S)
        self.settled = True

    def abandon(self) -> None:
        """The request failed before its jobs existed: the key is free again."""
        if self.settled:
            return
        get_redis().delete(self.key)
        self.settled = True
