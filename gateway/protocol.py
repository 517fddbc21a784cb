"""From a validated request of any API (OpenAI, TGI, native, WebSocket) to a job, and from a
finished job back to each API's response shape."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from rest_framework import status
from rest_framework.request import Request

from gateway.admission import HEADERS_ATTR, Admission, admit
from gateway.errors import ApiError
from gateway.models import ApiKey
from inference.models import Job, JobKind, JobStatus
from inference.prompts import ChatTemplateError, ModelFilesError
from inference.registry import ServedModel, resolve_model
from inference.routing import route
from inference.services import EOS, STOP_SEQUENCE, JobParams, job_create

ROLE_ALIASES = {"developer": "system"}


@dataclass(frozen=True)
class PreparedRequest:
    model: ServedModel
    kind: str
    input: dict[str, Any]
    params: JobParams
    prompt_tokens: int
    session_id: str | None = None

    @property
    def cost(self) -> int:
        """Tokens admission reserves: the prompt and every token it may generate."""
        return self.prompt_tokens + self.params.max_tokens


def admit_prepared(request: Request, prepared: PreparedRequest) -> Admission:
    """Admission for a validated HTTP request; its headers go on the response."""
    from gateway.auth import request_api_key, request_user

    admission = admit(
        user=request_user(request), api_key=request_api_key(request), model=prepared.model, cost=prepared.cost
    )
    setattr(request, HEADERS_ATTR, admission.headers)
    return admission


@dataclass(frozen=True)
class ChatContext:
    """A chat request's session and knowledge bases, checked against the caller."""

    session_id: str | None = None
    knowledge_base_ids: tuple[str, ...] = ()
    rag: dict[str, Any] | None = None


def resolve_chat_context(*, user: User, data: dict[str, Any]) -> ChatContext:
    """404 for a session or knowledge base that does not exist or is not the caller's to use
    (the same answer either way: existence is not disclosed)."""
    from inference.chat.selectors import session_get_for_user
    from inference.rag.selectors import knowledge_bases_resolve

    session_id = data.get("session_id")
    if session_id is not None and session_get_for_user(user=user, session_id=session_id) is None:
        raise ApiError(
            f"No session with id '{session_id}'.",
            status_code=status.HTTP_404_NOT_FOUND,
            code="session_not_found",
            param="session_id",
        )
    kb_ids = tuple(data.get("knowledge_base_ids") or ())
    if kb_ids:
        found, missing = knowledge_bases_resolve(user=user, kb_ids=kb_ids)
        if missing:
            raise ApiError(
                f"No knowledge base with id '{missing[0]}'.",
                status_code=status.HTTP_404_NOT_FOUND,
                code="knowledge_base_not_found",
                param="knowledge_base_ids",
            )
        kb_ids = tuple(str(kb.id) for kb in found)
    rag = dict(data["rag"]) if data.get("rag") else None
    return ChatContext(session_id=str(session_id) if session_id else None, knowledge_base_ids=kb_ids, rag=rag)


def create_admitted_job(
    *, user: User, api_key: ApiKey | None, prepared: PreparedRequest, source: str, admission: Admission
) -> Job:
    return job_create(
        user=user,
        api_key=api_key,
        model=prepared.model,
        kind=prepared.kind,
        input=prepared.input,
        params=prepared.params,
        source=source,
        prompt_tokens=prepared.prompt_tokens,
        priority=admission.tier,
        admission=admission.grant,
        session_id=prepared.session_id,
    )


def route_or_404(
    name: str | None, *, user: User, validation_status: int = status.HTTP_404_NOT_FOUND
) -> ServedModel:
    """The version of ``name`` that serves this user (canary weights, sticky per user, around
    open circuit breakers): 404 for an unknown name, 503 when no version can take it."""
    if resolve_model(name) is None:
        raise ApiError(
            f"The model '{name}' does not exist or you do not have access to it.",
            status_code=validation_status,
            code="model_not_found",
            param="model",
        )
    version = route(name, f"u{user.pk}")
    if version is None:
        raise ApiError(
            f"The model '{name}' is temporarily unavailable (no healthy version). Retry later.",
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            code="model_unavailable",
            headers={"Retry-After": "5"},
        )
    return version


def normalize_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """OpenAI messages (content as a string or a list of text parts) -> {role, content} strings."""
    normalized: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        content = message.get("content")
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        else:
            parts = []
            for part in content:
                if part.get("type") != "text":
                    raise ApiError(
                        f"Only text content is supported "
                        f"(messages[{index}] has a '{part.get('type')}' part).",
                        code="unsupported_content",
                        param=f"messages[{index}].content",
                    )
                parts.append(str(part.get("text", "")))
            text = "".join(parts)
        role = ROLE_ALIASES.get(message["role"], message["role"])
        normalized.append({"role": role, "content": text})
    return normalized


def _params(
    *,
    model: ServedModel,
    prompt_tokens: int,
    max_tokens: int | None,
    temperature: float,
    top_p: float,
    top_k: int,
    seed: int | None,
    stop: Sequence[str],
    default_max_tokens: int,
    max_tokens_param: str,
    error_status: int,
    ignore_eos: bool = False,
) -> JobParams:
    context = model.info.context_length
    room = context - prompt_tokens
    if room <= 0:
        raise ApiError(
            f"This model's maximum context length is {context} tokens. However, your prompt has "
            f"{prompt_tokens} tokens. Please reduce the length of the prompt.",
            status_code=error_status,
            code="context_length_exceeded",
            param="messages" if max_tokens_param == "max_tokens" else "prompt",
        )
    if max_tokens is None:
        max_tokens = min(default_max_tokens, room)
    elif prompt_tokens + max_tokens > context:
        raise ApiError(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, {max_tokens} for the "
            f"completion). Please reduce the prompt or {max_tokens_param}.",
            status_code=error_status,
            code="context_length_exceeded",
            param=max_tokens_param,
        )
    return JobParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        stop=tuple(stop),
        ignore_eos=ignore_eos,
    )


def _check_text(text: str, error_status: int, param: str) -> None:
    if "\x00" in text:
        raise ApiError(
            "The text contains a NUL character (\\u0000), which is not allowed.",
            status_code=error_status,
            code="invalid_value",
            param=param,
        )


def _check_size(chars: int, error_status: int, param: str) -> None:
    if chars > settings.SLUICE_MAX_PROMPT_CHARS:
        raise ApiError(
            f"The prompt is too long ({chars} characters; the limit is {settings.SLUICE_MAX_PROMPT_CHARS}).",
            status_code=error_status,
            code="prompt_too_long",
            param=param,
        )


def prepare_chat(
    *,
    model: ServedModel,
    messages: Sequence[dict[str, Any]],
    max_tokens: int | None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    stop: Sequence[str] = (),
    ignore_eos: bool = False,
    error_status: int = status.HTTP_400_BAD_REQUEST,
    context: ChatContext | None = None,
) -> PreparedRequest:
    normalized = normalize_messages(messages)
    if not any(m["content"].strip() for m in normalized):
        raise ApiError(
            "The messages contain no text: at least one message needs non-empty content.",
            status_code=error_status,
            code="empty_prompt",
            param="messages",
        )
    _check_size(sum(len(m["content"]) for m in normalized), error_status, "messages")
    for index, message in enumerate(normalized):
        _check_text(message["content"], error_status, f"messages[{index}].content")
    try:
        prompt_ids = model.info.chat_prompt_ids(normalized)
    except ChatTemplateError as exc:
        raise ApiError(
            f"The messages do not fit this model's chat format: {exc}",
            status_code=error_status,
            code="invalid_messages",
            param="messages",
        ) from exc
    except ModelFilesError as exc:
        raise ApiError(
            str(exc), status_code=status.HTTP_503_SERVICE_UNAVAILABLE, code="model_unavailable"
        ) from exc
    params = _params(
        model=model,
        prompt_tokens=len(prompt_ids),
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        stop=stop,
        default_max_tokens=settings.SLUICE_DEFAULT_MAX_TOKENS,
        max_tokens_param="max_tokens",
        error_status=error_status,
        ignore_eos=ignore_eos,
    )
    job_input: dict[str, Any] = {"messages": normalized}
    if context is not None and context.knowledge_base_ids:
        job_input["knowledge_base_ids"] = list(context.knowledge_base_ids)
        if context.rag:
            job_input["rag"] = context.rag
    return PreparedRequest(
        model=model,
        kind=JobKind.CHAT,
        input=job_input,
        params=params,
        prompt_tokens=len(prompt_ids),
        session_id=context.session_id if context is not None else None,
    )


def prepare_completion(
    *,
    model: ServedModel,
    prompt: str,
    max_tokens: int | None,
    default_max_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    stop: Sequence[str] = (),
    ignore_eos: bool = False,
    max_tokens_param: str = "max_tokens",
    prompt_param: str = "prompt",
    error_status: int = status.HTTP_400_BAD_REQUEST,
) -> PreparedRequest:
    if not prompt.strip():
        raise ApiError(
            "The prompt is empty.", status_code=error_status, code="empty_prompt", param=prompt_param
        )
    _check_size(len(prompt), error_status, prompt_param)
    _check_text(prompt, error_status, prompt_param)
    try:
        prompt_ids = model.info.completion_prompt_ids(prompt)
    except ModelFilesError as exc:
        raise ApiError(
            str(exc), status_code=status.HTTP_503_SERVICE_UNAVAILABLE, code="model_unavailable"
        ) from exc
    params = _params(
        model=model,
        prompt_tokens=len(prompt_ids),
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        stop=stop,
        default_max_tokens=default_max_tokens,
        max_tokens_param=max_tokens_param,
        error_status=error_status,
        ignore_eos=ignore_eos,
    )
    return PreparedRequest(
        model=model,
        kind=JobKind.COMPLETION,
        input={"prompt": prompt},
        params=params,
        prompt_tokens=len(prompt_ids),
    )


# --- responses ------------------------------------------------------------------------


def openai_finish_reason(reason: str) -> str | None:
    if reason in (EOS, STOP_SEQUENCE):
        return "stop"
    return reason or None


def tgi_finish_reason(reason: str) -> str:
    return {EOS: "eos_token", STOP_SEQUENCE: "stop_sequence", "length": "length"}.get(reason, reason)


def created_ts(job: Job) -> int:
    return int(job.queued_at.timestamp()) if job.queued_at else int(time.time())


def raise_for_failed(job: Job) -> None:
    """A non-streaming request whose job failed gets an error, not an empty answer."""
    if job.status == JobStatus.FAILED:
        if job.finish_reason == "deadline":
            raise ApiError(
                "The request did not finish within the server's time limit.",
                status_code=status.HTTP_504_GATEWAY_TIMEOUT,
                code="timeout",
            )
        raise ApiError(
            f"The model failed to generate a response: {job.error or 'unknown error'}",
            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
            code="generation_failed",
        )
    if not job.is_terminal:
        raise ApiError(
            "The request did not finish in time; it keeps running as job " + str(job.id),
            status_code=status.HTTP_504_GATEWAY_TIMEOUT,
            code="timeout",
        )


def usage_or_zero(job: Job) -> dict[str, int]:
    return job.usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def openai_chat_response(job: Job) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{job.id.hex}",
        "object": "chat.completion",
        "created": created_ts(job),
        "model": job.model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": job.output_text, "refusal": None},
                "finish_reason": openai_finish_reason(job.finish_reason),
                "logprobs": None,
            }
        ],
        "usage": usage_or_zero(job),
        **sluice_extras(job),
    }


def sluice_extras(job: Job) -> dict[str, Any]:
    """Fields Sluice adds to OpenAI bodies (clients ignore fields they do not know)."""
    extras: dict[str, Any] = {"cache_hit": job.cache_hit}
    if job.citations:
        extras["citations"] = job.citations
    if job.session_id:
        extras["session_id"] = str(job.session_id)
    return extras


def openai_completion_response(job: Job) -> dict[str, Any]:
    return {
        "id": f"cmpl-{job.id.hex}",
        "object": "text_completion",
        "created": created_ts(job),
        "model": job.model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "text": job.output_text,
                "finish_reason": openai_finish_reason(job.finish_reason),
                "logprobs": None,
            }
        ],
        "usage": usage_or_zero(job),
        **sluice_extras(job),
    }


def job_representation(job: Job) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": str(job.id),
        "object": "job",
        "model": job.model,
        "kind": job.kind,
        "status": job.status,
        "input": job.input,
        "params": job.params,
        "output": {"text": job.output_text, "finish_reason": job.finish_reason or None},
        "usage": job.usage,
        "error": job.error or None,
        "attempts": job.attempts,
        "session_id": str(job.session_id) if job.session_id else None,
        "citations": job.citations,
        "cache_hit": job.cache_hit,
        "created_at": iso(job.queued_at),
        "started_at": iso(job.started_at),
        "first_token_at": iso(job.first_token_at),
        "finished_at": iso(job.finished_at),
        "links": {
            "self": f"/api/v1/jobs/{job.id}",
            "events": f"/api/v1/jobs/{job.id}/events",
            "cancel": f"/api/v1/jobs/{job.id}/cancel",
        },
    }
