"""WebSocket API at ``/ws/v1/jobs/``.

Client -> server (JSON):
- ``{"type": "auth", "api_key": "sk-sl-..."}`` unless the handshake carried
  ``Authorization: Bearer ...``; nothing else is accepted before it.
- ``{"type": "request", "request_id": "...", "messages": [...] | "prompt": "...", ...}``:
  the native job fields; starts a job and streams it.
- ``{"type": "subscribe", "job_id": "...", "after": "<event id>"}``: follow an existing job.
- ``{"type": "cancel", "job_id": "..."}`` (or ``"request_id"`` for a request still waiting
  for admission)
- ``{"type": "ping"}``

Server -> client: ``ready``, ``queue`` (a request waits for its rate limit or a busy model:
position and ETA), ``job`` (accepted, with its id), ``token``, ``citations``, ``end``,
``error`` (429/503 refusals carry ``retry_after_s``), ``pong``. Closing the socket cancels
the jobs it started that are still running, and gives up its waiting requests.

A socket lives as long as its client keeps it: the server's WebSocket pings (uvicorn's) keep
idle sockets open through proxies, and nothing here times out. The key is checked again on
every request and subscription, and every SLUICE_WS_KEY_CHECK_S: a key revoked (or expired)
since the socket opened closes it (code 4401).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from rest_framework import serializers

from gateway.auth import raw_key_from_headers
from gateway.errors import ApiError, envelope, first_error
from gateway.jobs.serializers import JobCreateSerializer, job_prepare
from gateway.jobs.shaping import event_of
from gateway.selectors import apikey_get_active, apikey_still_active
from gateway.services import VISIBLE_CHARS
from gateway.submission import Caller, Submission
from inference.client import job_client, valid_cursor
from inference.core.audit import auth_failure_record
from inference.core.db import db
from inference.jobstream import EntryKind
from inference.models import Job

logger = logging.getLogger(__name__)

AUTH_TIMEOUT_S = 10.0
CLOSE_UNAUTHENTICATED = 4401


class JobConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        self.user: Any = None
        self.api_key: Any = None
        self.followers: dict[str, asyncio.Task[None]] = {}
        self.replaced: set[asyncio.Task[Any]] = set()
        self.owned: set[str] = set()
        self.waiting: dict[str, asyncio.Task[None]] = {}
        headers = {k.decode("latin1").lower(): v.decode("latin1") for k, v in self.scope.get("headers", [])}
        self.request_id = headers.get("x-request-id", "")[:128]
        await self.accept()
        raw_key = raw_key_from_headers(headers.get("authorization"), headers.get("x-api-key"))
        if raw_key and await self._authenticate(raw_key):
            await self._ready()
            return
        self.auth_timer = asyncio.get_running_loop().call_later(AUTH_TIMEOUT_S, self._auth_timeout)

    def _auth_timeout(self) -> None:
        if self.user is None:
            self.reject_task = asyncio.ensure_future(self._reject("Authentication timed out."))

    async def _reject(self, message: str) -> None:
        await self.send_json(
            {"type": "error", "error": envelope(message, status_code=401, code="invalid_api_key")["error"]}
        )
        await self.close(code=CLOSE_UNAUTHENTICATED)

    async def _authenticate(self, raw_key: str) -> bool:
        api_key = await db(apikey_get_active, raw_key=raw_key)
        if api_key is None:
            client = self.scope.get("client") or ("", 0)
            await db(
                auth_failure_record,
                key_prefix=raw_key[:VISIBLE_CHARS],
                source_ip=client[0] or None,
                via="websocket",
            )
            return False
        self.user, self.api_key = api_key.user, api_key
        return True

    async def _ready(self) -> None:
        await self.send_json({"type": "ready"})
        self.key_watch = asyncio.ensure_future(self._watch_key())

    async def _watch_key(self) -> None:
        """An idle socket (or one only receiving a long stream) learns of a revocation too."""
        interval = float(settings.SLUICE_WS_KEY_CHECK_S)
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self._key_still_valid():
                    return
            except Exception:  # the database is unreachable: keep the socket, check again later
                logger.warning("could not re-check a websocket's API key", exc_info=True)

    async def _key_still_valid(self) -> bool:
        """Revocation and expiry apply to open sockets too: checked on every request."""
        if await db(apikey_still_active, api_key_id=self.api_key.pk):
            return True
        await self._reject("This API key has been revoked or has expired.")
        return False

    async def disconnect(self, code: int) -> None:
        timer = getattr(self, "auth_timer", None)
        if timer is not None:
            timer.cancel()
        watch = getattr(self, "key_watch", None)
        if watch is not None:
            watch.cancel()
        # Each follower cancels its job on the way out if this socket started it; a request
        # still waiting for admission gives its place (and reservation) back.
        for task in [*getattr(self, "followers", {}).values(), *getattr(self, "waiting", {}).values()]:
            task.cancel()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict) or not isinstance(content.get("type"), str):
            await self._error("Each message must be a JSON object with a 'type'.", code="invalid_message")
            return
        kind = content["type"]
        if self.user is None:
            if (
                kind == "auth"
                and isinstance(content.get("api_key"), str)
                and await self._authenticate(content["api_key"])
            ):
                self.auth_timer.cancel()
                await self._ready()
            else:
                await self._reject('Authenticate first: {"type": "auth", "api_key": "..."} with a valid key.')
            return
        handler = {
            "request": self._on_request,
            "subscribe": self._on_subscribe,
            "cancel": self._on_cancel,
            "ping": self._on_ping,
        }.get(kind)
        if handler is None:
            await self._error(f"Unknown message type '{kind}'.", code="invalid_message")
            return
        if kind in ("request", "subscribe") and not await self._key_still_valid():
            return
        await handler(content)

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        try:
            await super().receive(text_data=text_data, bytes_data=bytes_data, **kwargs)
        except (ValueError, RecursionError):  # not JSON, or nested beyond what json can parse
            await self._error("Messages must be JSON.", code="invalid_json")

    async def _error(
        self,
        message: str,
        *,
        code: str,
        status_code: int = 400,
        request_id: Any = None,
        param: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        body = envelope(message, status_code=status_code, code=code, param=param)
        if retry_after is not None:
            body["error"]["retry_after_s"] = retry_after
        await self.send_json({"type": "error", "request_id": request_id, **body})

    async def _api_error(self, exc: ApiError, request_id: Any) -> None:
        retry = exc.extra_headers.get("Retry-After")
        await self._error(
            exc.message,
            code=exc.error_code or "error",
            status_code=exc.status_code,
            request_id=request_id,
            param=exc.param,
            retry_after=int(retry) if retry else None,
        )

    async def _on_ping(self, content: dict[str, Any]) -> None:
        await self.send_json({"type": "pong"})

    async def _on_request(self, content: dict[str, Any]) -> None:
        request_id = content.get("request_id")
        data = {k: v for k, v in content.items() if k not in ("type", "request_id")}
        caller = Caller(user=self.user, api_key=self.api_key, request_id=self.request_id)

        def prepare() -> Submission:
            serializer = JobCreateSerializer(data=data)
            serializer.is_valid(raise_exception=True)
            prepared = job_prepare(dict(serializer.validated_data), user=self.user, api_key=self.api_key)
            submission = Submission(caller, prepared, source="ws")
            submission.admit()
            return submission

        try:
            submission = await db(prepare)
        except serializers.ValidationError as exc:
            param, detail = first_error(exc.detail)
            await self._error(
                f"Invalid value for '{param}': {detail}" if param else detail,
                code="invalid_value",
                request_id=request_id,
                param=param or None,
            )
            return
        except ApiError as exc:
            await self._api_error(exc, request_id)
            return
        assert submission.admission is not None
        if submission.admission.admitted:
            await self._start(submission, request_id)
            return
        key = str(request_id) if request_id is not None else submission.admission.ticket.id
        previous = self.waiting.get(key)
        if previous is not None:
            previous.cancel()
        self.waiting[key] = asyncio.ensure_future(self._wait_then_start(submission, request_id, key))

    async def _wait_then_start(self, submission: Submission, request_id: Any, key: str) -> None:
        """Runs beside the receive loop, so that cancel and ping still work while waiting."""
        try:
            async for event in submission.events():
                await self.send_json({"type": "queue", "request_id": request_id, **event})
        except ApiError as exc:
            await self._api_error(exc, request_id)
            return
        finally:
            if self.waiting.get(key) is asyncio.current_task():
                del self.waiting[key]
        await self._start(submission, request_id)

    async def _start(self, submission: Submission, request_id: Any) -> None:
        try:
            job = await submission.create_async()
        except ApiError as exc:
            await self._api_error(exc, request_id)
            return
        job_id = str(job.id)
        self.owned.add(job_id)
        await self.send_json(
            {"type": "job", "request_id": request_id, "job_id": job_id, "status": job.status}
        )
        self._follow(job_id, "0-0")

    async def _on_subscribe(self, content: dict[str, Any]) -> None:
        job_id = str(content.get("job_id", ""))
        job = await db(job_client.get, user=self.user, job_id=job_id)
        if job is None:
            await self._error(f"No job with id '{job_id}'.", code="not_found", status_code=404)
            return
        after = str(content.get("after") or "0-0")
        if not valid_cursor(after):
            await self._error("'after' must be an event id of this job.", code="invalid_value", param="after")
            return
        self._follow(str(job.id), after)

    async def _on_cancel(self, content: dict[str, Any]) -> None:
        if "job_id" not in content and content.get("request_id") is not None:
            waiting = self.waiting.pop(str(content["request_id"]), None)
            if waiting is None:
                await self._error(
                    "No request waiting with that request_id.", code="not_found", status_code=404
                )
                return
            waiting.cancel()
            await self.send_json({"type": "cancelled", "request_id": content["request_id"]})
            return
        job_id = str(content.get("job_id", ""))

        def cancel() -> Job | None:
            job = job_client.get(user=self.user, job_id=job_id)
            return job_client.cancel(job) if job is not None else None

        job = await db(cancel)
        if job is None:
            await self._error(f"No job with id '{job_id}'.", code="not_found", status_code=404)
            return
        await self.send_json({"type": "cancelling", "job_id": str(job.id), "status": job.status})

    def _follow(self, job_id: str, after: str) -> None:
        previous = self.followers.get(job_id)
        if previous is not None:
            self.replaced.add(previous)  # a re-subscribe: not a reason to cancel the job
            previous.cancel()
        self.followers[job_id] = asyncio.ensure_future(self._stream(job_id, after))

    async def _stream(self, job_id: str, after: str) -> None:
        completed = False
        try:
            async for entry in job_client.follow(job_id, after=after):
                if entry is None:
                    continue
                event = event_of(entry)
                if event is None or entry.kind in (EntryKind.QUEUED, EntryKind.START):
                    continue
                completed = completed or entry.kind == EntryKind.END
                await self.send_json({**event, "job_id": job_id, "id": entry.id})
        except asyncio.CancelledError:
            raise
        except Exception:
            # Usually the client is gone (the send failed); nobody can receive the rest.
            logger.info("websocket stream for job %s ended early", job_id, exc_info=True)
        finally:
            task = asyncio.current_task()
            replaced = task in self.replaced
            self.replaced.discard(task)  # type: ignore[arg-type]
            if not completed and not replaced and job_id in self.owned:
                # The socket that started this job went away before it finished.
                await asyncio.shield(job_client.abandon(job_id))
            if self.followers.get(job_id) is task:
                del self.followers[job_id]
                self.owned.discard(job_id)
