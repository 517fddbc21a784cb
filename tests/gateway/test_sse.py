"""The SSE wire encoding, the streaming response, and cancelling the jobs of a client that
went away (against the suite's real Valkey: the cancel flag is what a worker reads)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

from gateway.sse import KEEPALIVE, cancel_on_disconnect, sse, sse_comment, sse_response
from inference.core.redis import get_redis
from inference.streams import cancel_key


def test_an_event_is_id_event_and_one_compact_data_line() -> None:
    assert (
        sse({"a": 1, "b": "é"}, event="delta", id="7")
        == 'id: 7\nevent: delta\ndata: {"a":1,"b":"é"}\n\n'.encode()
    )
    assert sse("[DONE]") == b"data: [DONE]\n\n"
    assert sse({"text": "two\nlines"}) == b'data: {"text":"two\\nlines"}\n\n'  # never a raw newline
    assert sse_comment("queue", {"position": 3}) == b': queue {"position":3}\n\n'
    assert KEEPALIVE.startswith(b":") and KEEPALIVE.endswith(b"\n\n")


def test_the_response_is_an_unbuffered_event_stream() -> None:
    async def empty() -> AsyncIterator[bytes]:
        yield b""

    response = sse_response(empty(), status=200)
    assert response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-cache" and response["X-Accel-Buffering"] == "no"


def _flagged(job_id: str) -> bool:
    return bool(get_redis().exists(cancel_key(job_id)))


async def test_a_stream_read_to_its_end_cancels_nothing() -> None:
    job_id = str(uuid.uuid4())

    async def events() -> AsyncIterator[bytes]:
        for part in (b"a", b"b"):
            yield part

    assert [part async for part in cancel_on_disconnect([job_id], events())] == [b"a", b"b"]
    await asyncio.sleep(0)
    assert not _flagged(job_id)


async def test_a_client_gone_mid_stream_cancels_every_job_of_it() -> None:
    job_ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    first = asyncio.Event()

    async def events() -> AsyncIterator[bytes]:
        yield b"first"
        await asyncio.sleep(3600)  # a long generation the client stops waiting for
        yield b"never"

    async def client() -> None:
        async for _ in cancel_on_disconnect(job_ids, events()):
            first.set()

    sender = asyncio.ensure_future(client())  # as Django's task that sends the response
    await first.wait()
    sender.cancel()  # the client disconnected
    for _ in range(200):
        if all(_flagged(job_id) for job_id in job_ids):
            break
        await asyncio.sleep(0.01)
    assert all(_flagged(job_id) for job_id in job_ids)
    get_redis().delete(*(cancel_key(job_id) for job_id in job_ids))
