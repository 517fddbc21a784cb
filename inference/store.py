"""The process's job streams (inference/streams.py), one per Redis URL."""

from __future__ import annotations

import threading

from django.conf import settings

from inference.core.redis import get_redis
from inference.streams import JobStreams

_lock = threading.Lock()
_streams: dict[str, JobStreams] = {}


def get_streams() -> JobStreams:
    url = settings.REDIS_URL
    with _lock:
        streams = _streams.get(url)
    if streams is None:
        streams = JobStreams(
            get_redis(),
            stream_ttl_s=settings.SLUICE_STREAM_TTL_S,
            job_timeout_s=settings.SLUICE_JOB_TIMEOUT_S,
        )
        with _lock:
            _streams[url] = streams
    return streams
