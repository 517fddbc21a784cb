"""Process-wide Redis clients (thread-safe connection pools) built from settings."""

from __future__ import annotations

import asyncio
import threading
import weakref

import redis
import redis.asyncio
from django.conf import settings

# Above the longest blocking read Sluice issues (SSE keepalive XREAD, 15 s by default):
# redis-py's own default (5 s) would fail those reads with a TimeoutError.
SOCKET_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 5.0

_lock = threading.Lock()
_sync: dict[str, redis.Redis] = {}


def get_redis() -> redis.Redis:
    url = settings.REDIS_URL
    with _lock:
        client = _sync.get(url)
        if client is None:
            client = redis.Redis.from_url(
                url,
                health_check_interval=30,
                socket_keepalive=True,
                socket_timeout=SOCKET_TIMEOUT_S,
                socket_connect_timeout=CONNECT_TIMEOUT_S,
                max_connections=settings.SLUICE_REDIS_MAX_CONNECTIONS,
            )
            _sync[url] = client
        return client


def new_async_redis() -> redis.asyncio.Redis:
    """An asyncio client. Its pool is bound to the event loop that first uses it, so each
    event loop (uvicorn's, a test's) creates its own via `async_redis`."""
    return redis.asyncio.Redis.from_url(
        settings.REDIS_URL,
        health_check_interval=30,
        socket_keepalive=True,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        # Every open stream blocks in its own XREAD: redis-py 8's default pool (100) made the
        # 101st concurrent stream fail mid-response ("Too many connections").
        max_connections=settings.SLUICE_REDIS_MAX_CONNECTIONS,
    )


_async_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
    weakref.WeakKeyDictionary()
)


def async_redis() -> redis.asyncio.Redis:
    loop = asyncio.get_running_loop()
    client = _async_by_loop.get(loop)
    if client is None:
        client = new_async_redis()
        _async_by_loop[loop] = client
    return client
