"""Database connections and waiting: no connection is held across an await, a wait or a
stream (DESIGN.md §Conventions). A worker thread's connection goes back to the pool before
it blocks; async code runs each ORM call on a thread that gives its connection back at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections, connection

T = TypeVar("T")


def release_connection() -> None:
    """Give this thread's database connection back to the pool (before any wait)."""
    connection.close()


def closing(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` on a fresh connection, given back as soon as it returns."""

    def run(*args: Any, **kwargs: Any) -> T:
        close_old_connections()
        try:
            return fn(*args, **kwargs)
        finally:
            connection.close()

    return run


async def db(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run an ORM call from async code on a worker thread and return its connection to the
    pool at once: async code must never keep one across an await."""
    return await sync_to_async(closing(fn), thread_sensitive=False)(*args, **kwargs)
