"""Redis keys of a job: its token stream, its worker lease and its cancel flag.

- ``sluice:job:{id}:events`` is a Redis Stream. Entry ids are the resume cursor (SSE
  ``Last-Event-ID``); the entries' format is `inference.jobstream.StreamEntry`.
- ``sluice:job:{id}:lease`` names the worker attempt that owns the job; it expires unless
  renewed, so a dead worker's job can be taken over. Appends are fenced by it: a worker that
  lost its lease cannot write into the stream any more.
- ``sluice:job:{id}:cancel`` asks the engine to drop the sequence at its next step.

The braces are a Redis Cluster hash tag: all keys of one job live in one slot. Every key is
written with a TTL. No Django here (the engine's sink runs in the engine thread).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from inference.core.keys import cancel_key, lease_key, requeue_key, stream_key
from inference.engine import StepEvent
from inference.jobstream import EntryKind, StreamEntry

# Append one entry per sequence (fenced by its lease) and report cancel flags / lost leases,
# for a whole batch in one round trip. KEYS per sequence: stream, lease, cancel.
# ARGV: ttl, n, then per sequence: lease token ('' = unfenced), field count, field/value pairs.
_STEP_SCRIPT = """
local ttl = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local pos = 3
local out = {}
for i = 1, n do
  local base = (i - 1) * 3
  local token = ARGV[pos]
  local nf = tonumber(ARGV[pos + 1])
  pos = pos + 2
  local holder = redis.call('GET', KEYS[base + 2])
  if token ~= '' and holder ~= token then
    out[i] = 2
  else
    if nf > 0 then
      local args = {}
      for j = 0, nf * 2 - 1 do args[j + 1] = ARGV[pos + j] end
      redis.call('XADD', KEYS[base + 1], '*', unpack(args))
      if redis.call('TTL', KEYS[base + 1]) < 0 then redis.call('EXPIRE', KEYS[base + 1], ttl) end
    end
    if redis.call('EXISTS', KEYS[base + 3]) == 1 then out[i] = 1 else out[i] = 0 end
  end
  pos = pos + nf * 2
end
return out
"""

_RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass
class Progress:
    """What earlier attempts of a job already streamed (to resume after a redelivery)."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    ended: bool = False
    cited: bool = False
    prompt_logprobs_sent: bool = False


class JobStreams:
    """Synchronous access to job keys (worker threads, gateway views)."""

    def __init__(self, client: redis.Redis, *, stream_ttl_s: int, job_timeout_s: int) -> None:
        self.client = client
        self.stream_ttl_s = stream_ttl_s
        self.job_timeout_s = job_timeout_s
        self._step = client.register_script(_STEP_SCRIPT)
        self._renew = client.register_script(_RENEW_SCRIPT)
        self._release = client.register_script(_RELEASE_SCRIPT)

    @property
    def open_ttl_s(self) -> int:
        """A stream lives until its job can no longer run, then for the retention period."""
        return self.job_timeout_s + self.stream_ttl_s

    def open(self, job_id: str) -> str:
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(stream_key(job_id), StreamEntry.queued().encode())  # type: ignore[arg-type]
        pipe.expire(stream_key(job_id), self.open_ttl_s)
        entry_id, _ = pipe.execute()
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def append(self, job_id: str, entry: StreamEntry, *, lease_token: str = "") -> bool:
        """Append one entry; with a lease token, only while that lease is held."""
        result = self._run_step([(job_id, lease_token, entry)])
        return result[0] != 2

    def publish(self, items: Sequence[tuple[str, str, StreamEntry | None]]) -> list[int]:
        """Batch append: (job id, lease token, entry or None). Returns 0 ok, 1 cancel, 2 lease lost."""
        return self._run_step(items)

    def _run_step(self, items: Sequence[tuple[str, str, StreamEntry | None]]) -> list[int]:
        if not items:
            return []
        keys: list[str] = []
        args: list[Any] = [self.open_ttl_s, len(items)]
        for job_id, lease_token, entry in items:
            fields = entry.encode() if entry is not None else {}
            keys += [stream_key(job_id), lease_key(job_id), cancel_key(job_id)]
            args += [lease_token, len(fields)]
            for name, value in fields.items():
                args += [name, value]
        return [int(x) for x in self._step(keys=keys, args=args)]

    def finish(self, job_id: str, entry: StreamEntry, *, lease_token: str = "") -> bool:
        """Append the end entry and start the retention clock."""
        ok = self.append(job_id, entry, lease_token=lease_token)
        if ok:
            self.client.expire(stream_key(job_id), self.stream_ttl_s)
        return ok

    def ensure_end(self, job_id: str, entry: StreamEntry) -> bool:
        """Write the end entry of a finished job if its stream lacks one (Redis was down when
        the job ended, or lost its last writes in a crash). True if it had to."""
        newest: Any = self.client.xrevrange(stream_key(job_id), count=1)
        if newest and StreamEntry.decode(*newest[0]).kind == EntryKind.END:
            return False
        self.finish(job_id, entry)
        return True

    def progress(self, job_id: str) -> Progress:
        progress = Progress()
        entries: Any = self.client.xrange(stream_key(job_id))
        for entry_id, raw in entries:
            entry = StreamEntry.decode(entry_id, raw)
            if entry.kind == EntryKind.TOKEN:
                progress.token_ids += entry.token_ids
                progress.logprobs += entry.logprobs
                progress.text += entry.text
                progress.prompt_logprobs_sent = progress.prompt_logprobs_sent or (
                    entry.prompt_logprobs is not None
                )
            elif entry.kind == EntryKind.END:
                progress.ended = True
            elif entry.kind == EntryKind.CITATIONS:
                progress.cited = True
        return progress

    def request_cancel(self, job_id: str) -> None:
        self.client.set(cancel_key(job_id), "1", ex=self.open_ttl_s)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.client.exists(cancel_key(job_id)))

    # -- leases --
    def lease_acquire(self, job_id: str, token: str, ttl_s: float) -> bool:
        return bool(self.client.set(lease_key(job_id), token, nx=True, px=int(ttl_s * 1000)))

    def lease_renew(self, job_id: str, token: str, ttl_s: float) -> bool:
        return bool(self._renew(keys=[lease_key(job_id)], args=[token, int(ttl_s * 1000)]))

    def lease_release(self, job_id: str, token: str) -> None:
        self._release(keys=[lease_key(job_id)], args=[token])

    def lease_holders(self, job_ids: Sequence[str]) -> dict[str, str | None]:
        if not job_ids:
            return {}
        values = self.client.mget([lease_key(j) for j in job_ids])
        return {j: (v.decode() if isinstance(v, bytes) else v) for j, v in zip(job_ids, values, strict=True)}

    def mark_requeued(self, job_id: str, ttl_s: int) -> bool:
        """True if this caller is the one to re-send the job (no re-send in flight)."""
        return bool(self.client.set(requeue_key(job_id), "1", nx=True, ex=ttl_s))

    def clear_requeued(self, job_id: str) -> None:
        self.client.delete(requeue_key(job_id))


class RedisTokenSink:
    """The engine's sink: one Lua call per engine step for the whole batch."""

    def __init__(self, streams: JobStreams) -> None:
        self.streams = streams

    def publish(
        self, events: Sequence[StepEvent], watch: Sequence[tuple[str, dict[str, Any]]]
    ) -> dict[str, str]:
        items: list[tuple[str, str, StreamEntry | None]] = []
        seen: set[str] = set()
        for event in events:
            entry = StreamEntry.token(
                text=event.text,
                token_ids=event.token_ids,
                logprobs=event.logprobs,
                completion_tokens=event.completion_tokens,
                top_logprobs=event.top_logprobs,
                prompt_logprobs=event.prompt_logprobs,
            )
            items.append((event.key, str(event.meta.get("lease", "")), entry))
            seen.add(event.key)
        for key, meta in watch:
            if key not in seen:
                items.append((key, str(meta.get("lease", "")), None))
        statuses = self.streams.publish(items)
        verdict: dict[str, str] = {}
        for (key, _, _), status in zip(items, statuses, strict=True):
            if status == 1:
                verdict[key] = "cancelled"
            elif status == 2:
                verdict[key] = "lease_lost"
        return verdict
