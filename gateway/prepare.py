# structure: the input rules every protocol shares, in one place on purpose (a rule split
# across modules is the rule a protocol forgets); chat and completion differ only in the prompt.
"""The one prepare step every protocol shares: from a request already parsed by its protocol
package to a `PreparedRequest` (model version, job input, sampling parameters, prompt tokens).

The input rules live here, once: which model and version serve the caller, text that
Postgres cannot store, prompt size and context window, sessions and knowledge bases the
caller may use. Each protocol only maps its own field names onto `SamplingParams` (its
``to_sampling_params``) and picks the status its clients expect for a bad value (OpenAI 400,
TGI 422).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from rest_framework import status

from gateway.errors import ApiError
from gateway.guards import RequestGuards
from inference.chat.selectors import session_get_for_user
from inference.models import JobKind
from inference.prompts import ChatTemplateError, ModelFilesError
from inference.rag.selectors import knowledge_bases_resolve
from inference.sampling_params import SamplingParams
from inference.tools.calls import ToolPlan, arguments_object
from inference.versions.registry import ServedModel, resolve_model
from inference.versions.routing import route

ROLE_ALIASES = {"developer": "system"}
MAX_TOP_LOGPROBS = 20
# Postgres rejects NUL in text and lone surrogates in JSON (DESIGN.md §4).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True)
class PreparedRequest:
    model: ServedModel
    kind: str
    input: dict[str, Any]
    params: SamplingParams
    prompt_tokens: int
    session_id: str | None = None
    #: The prompt's token ids as the gateway counted them (echo, details, return_token_ids).
    prompt_ids: tuple[int, ...] = ()
    #: Protocol-specific job fields (Responses: previous job, store, background, metadata).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cost(self) -> int:
        """Tokens admission reserves: the prompt and every token it may generate (a later
        choice of an n > 1 request shares the first one's prompt: its own tokens only)."""
        return (0 if self.params.choice else self.prompt_tokens) + self.params.max_new_tokens


def with_choices(prepared: PreparedRequest, n: int) -> list[PreparedRequest]:
    """Parallel sampling (OpenAI ``n``, TGI ``best_of``): one job per choice, placed together
    (``extra.group``: the same worker, which prefills their shared prompt once). A seeded
    request stays reproducible: choice ``i`` samples with ``seed + i``."""
    if n <= 1:
        return [prepared]
    group = uuid.uuid4().hex
    out = []
    for index in range(n):
        seed = prepared.params.seed
        if seed is not None and index:
            seed = (seed + index) % 2**63
        params = replace(prepared.params, choice=index, seed=seed)
        out.append(replace(prepared, params=params, extra={**prepared.extra, "group": group}))
    return out


@dataclass(frozen=True)
class ChatContext:
    """A chat request's session and knowledge bases, checked against the caller."""

    session_id: str | None = None
    knowledge_base_ids: tuple[str, ...] = ()
    rag: dict[str, Any] | None = None


def check_storable(text: str, *, param: str, error_status: int = status.HTTP_400_BAD_REQUEST) -> None:
    match = _UNSTORABLE.search(text)
    if match is not None:
        char = match.group()
        what = "a NUL character (\\u0000)" if char == "\x00" else f"a lone surrogate (\\u{ord(char):04x})"
        raise ApiError(
            f"The text contains {what}, which is not allowed.",
            status_code=error_status,
            code="invalid_value",
            param=param,
        )


def check_stop(stop: Sequence[str], *, param: str = "stop", error_status: int = 400) -> None:
    for index, item in enumerate(stop):
        check_storable(
            item, param=param if len(stop) == 1 else f"{param}[{index}]", error_status=error_status
        )


def resolve_chat_context(*, user: User, data: dict[str, Any]) -> ChatContext:
    """404 for a session or knowledge base that does not exist or is not the caller's to use
    (the same answer either way: existence is not disclosed)."""
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


def normalize_messages(
    messages: Sequence[dict[str, Any]], *, param: str = "messages"
) -> list[dict[str, Any]]:
    """OpenAI messages -> what the chat template reads: ``role`` and ``content`` (text parts
    joined), with an assistant's ``tool_calls`` (their arguments as objects, as transformers'
    templates expect) and a tool message's ``tool_call_id``."""
    normalized: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        content = message.get("content")
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        else:
            parts = []
            for part in content:
                if part.get("type") not in ("text", "input_text", "output_text"):
                    raise ApiError(
                        f"Only text content is supported ({param}[{index}] has a '{part.get('type')}' part).",
                        code="unsupported_content",
                        param=f"{param}[{index}].content",
                    )
                parts.append(str(part.get("text", "")))
            text = "".join(parts)
        role = ROLE_ALIASES.get(message["role"], message["role"])
        item: dict[str, Any] = {"role": role, "content": text}
        if message.get("tool_calls"):
            item["tool_calls"] = [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {
                        "name": call["function"]["name"],
                        "arguments": arguments_object(call["function"]["arguments"]),
                    },
                }
                for call in message["tool_calls"]
            ]
        if message.get("tool_call_id"):
            item["tool_call_id"] = message["tool_call_id"]
        normalized.append(item)
    return normalized


def _params(
    *,
    model: ServedModel,
    prompt_tokens: int,
    sampling: SamplingParams,
    default_max_tokens: int,
    max_tokens_param: str,
    prompt_param: str,
    error_status: int,
    guards: RequestGuards | None = None,
    param_names: dict[str, str] | None = None,
) -> SamplingParams:
    """The request's parameters with what depends on the prompt resolved (``max_tokens``
    against the context window) and checked against the model (token ids in its vocabulary)."""
    param_names = param_names or {}
    context = model.info.context_length
    room = context - prompt_tokens
    max_tokens = sampling.max_tokens
    if max_tokens is not None and max_tokens > settings.SLUICE_MAX_NEW_TOKENS:
        raise ApiError(
            f"{max_tokens_param} is too large: {max_tokens}. "
            f"The maximum is {settings.SLUICE_MAX_NEW_TOKENS}.",
            status_code=error_status,
            code="invalid_value",
            param=max_tokens_param,
        )
    if room <= 0:
        raise ApiError(
            f"This model's maximum context length is {context} tokens. However, your prompt has "
            f"{prompt_tokens} tokens. Please reduce the length of the prompt.",
            status_code=error_status,
            code="context_length_exceeded",
            param=prompt_param,
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
    if not 0 <= sampling.top_logprobs <= MAX_TOP_LOGPROBS:
        raise ApiError(
            f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}.",
            status_code=error_status,
            code="invalid_value",
            param="top_logprobs",
        )
    check_stop(sampling.stop, error_status=error_status)
    if sampling.min_tokens > max_tokens:
        raise ApiError(
            f"min_tokens ({sampling.min_tokens}) must not exceed {max_tokens_param} ({max_tokens}).",
            status_code=error_status,
            code="invalid_value",
            param="min_tokens",
        )
    vocab = model.info.vocab_size
    for param, ids in (
        ("logit_bias", [token for token, _ in sampling.logit_bias]),
        ("stop_token_ids", list(sampling.stop_token_ids)),
        ("allowed_token_ids", list(sampling.allowed_token_ids)),
    ):
        bad = next((i for i in ids if not 0 <= i < vocab), None)
        if bad is not None:
            raise ApiError(
                f"Token id {bad} in '{param}' is outside this model's vocabulary (0..{vocab - 1}).",
                status_code=error_status,
                code="invalid_value",
                param=param,
            )
    unsupported = model.unsupported(sampling)
    if unsupported is not None:
        field_name, why = unsupported
        raise ApiError(
            f"'{param_names.get(field_name, field_name)}' is not supported by this model's upstream: {why}.",
            status_code=error_status,
            code="unsupported_parameter",
            param=param_names.get(field_name, field_name),
        )
    return replace(
        sampling,
        max_tokens=max_tokens,
        stop=tuple(sampling.stop),
        output_guards=tuple(guards.output) if guards is not None else (),
    )


def _check_size(chars: int, error_status: int, param: str) -> None:
    if chars > settings.SLUICE_MAX_PROMPT_CHARS:
        raise ApiError(
            f"The prompt is too long ({chars} characters; the limit is {settings.SLUICE_MAX_PROMPT_CHARS}).",
            status_code=error_status,
            code="prompt_too_long",
            param=param,
        )


def _model_files_error(exc: ModelFilesError) -> ApiError:
    return ApiError(str(exc), status_code=status.HTTP_503_SERVICE_UNAVAILABLE, code="model_unavailable")


def prepare_chat(
    *,
    model: ServedModel,
    messages: Sequence[dict[str, Any]],
    sampling: SamplingParams,
    error_status: int = status.HTTP_400_BAD_REQUEST,
    context: ChatContext | None = None,
    history: Sequence[dict[str, Any]] = (),
    messages_param: str = "messages",
    max_tokens_param: str = "max_tokens",
    extra: dict[str, Any] | None = None,
    guards: RequestGuards | None = None,
    tools: ToolPlan | None = None,
    param_names: dict[str, str] | None = None,
) -> PreparedRequest:
    """``history``: earlier turns the worker will put before ``messages`` (a Responses chain),
    counted here so that the context check sees what the model will see. ``tools``: the
    request's tool plan (the template renders its tools; the job keeps it for the answer)."""
    normalized = normalize_messages(messages, param=messages_param)
    if not any(m["content"].strip() or m.get("tool_calls") for m in normalized):
        raise ApiError(
            "The messages contain no text: at least one message needs non-empty content.",
            status_code=error_status,
            code="empty_prompt",
            param=messages_param,
        )
    _check_size(
        sum(len(m["content"]) + len(json.dumps(m.get("tool_calls") or "")) for m in normalized),
        error_status,
        messages_param,
    )
    for index, message in enumerate(normalized):
        param = f"{messages_param}[{index}].content"
        check_storable(message["content"], param=param, error_status=error_status)
        for number, call in enumerate(message.get("tool_calls") or ()):
            check_storable(
                json.dumps(call, ensure_ascii=False),
                param=f"{messages_param}[{index}].tool_calls[{number}]",
                error_status=error_status,
            )
        if guards is not None and message["role"] != "assistant":  # the model's own turns pass
            message["content"] = guards.check(message["content"], param=param, error_status=error_status)
    if tools is not None:
        check_storable(
            json.dumps(list(tools.tools), ensure_ascii=False), param="tools", error_status=error_status
        )
    rendered_tools = list(tools.tools) if tools is not None and tools.rendered else None
    try:
        prompt_ids = model.info.chat_prompt_ids([*history, *normalized], tools=rendered_tools)
    except ChatTemplateError as exc:
        raise ApiError(
            f"The messages do not fit this model's chat format: {exc}",
            status_code=error_status,
            code="invalid_messages",
            param=messages_param,
        ) from exc
    except ModelFilesError as exc:
        raise _model_files_error(exc) from exc
    if sampling.truncate is not None and len(prompt_ids) > sampling.truncate:
        prompt_ids = prompt_ids[-sampling.truncate :]
    params = _params(
        model=model,
        prompt_tokens=len(prompt_ids),
        sampling=sampling,
        default_max_tokens=settings.SLUICE_DEFAULT_MAX_TOKENS,
        max_tokens_param=max_tokens_param,
        prompt_param=messages_param,
        error_status=error_status,
        guards=guards,
        param_names=param_names,
    )
    job_input: dict[str, Any] = {"messages": normalized}
    if tools is not None:
        job_input["tool_plan"] = tools.as_dict()
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
        extra=extra or {},
        prompt_ids=tuple(prompt_ids),
    )


def prepare_completion(
    *,
    model: ServedModel,
    prompt: str | Sequence[int],
    sampling: SamplingParams,
    default_max_tokens: int,
    max_tokens_param: str = "max_tokens",
    prompt_param: str = "prompt",
    error_status: int = status.HTTP_400_BAD_REQUEST,
    guards: RequestGuards | None = None,
    param_names: dict[str, str] | None = None,
) -> PreparedRequest:
    """``prompt``: text, or token ids of the model's tokenizer (OpenAI and vLLM accept both).
    Input guards see text prompts; token ids are the caller's own encoding, taken as they are."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ApiError(
                "The prompt is empty.", status_code=error_status, code="empty_prompt", param=prompt_param
            )
        _check_size(len(prompt), error_status, prompt_param)
        check_storable(prompt, param=prompt_param, error_status=error_status)
        if guards is not None:
            prompt = guards.check(prompt, param=prompt_param, error_status=error_status)
        try:
            prompt_ids = model.info.completion_prompt_ids(prompt)
        except ModelFilesError as exc:
            raise _model_files_error(exc) from exc
        job_input: dict[str, Any] = {"prompt": prompt}
    else:
        prompt_ids = [int(i) for i in prompt]
        if not prompt_ids:
            raise ApiError(
                "The prompt is empty.", status_code=error_status, code="empty_prompt", param=prompt_param
            )
        vocab = model.info.vocab_size
        bad = next((i for i in prompt_ids if not 0 <= i < vocab), None)
        if bad is not None:
            raise ApiError(
                f"Token id {bad} is outside this model's vocabulary (0..{vocab - 1}).",
                status_code=error_status,
                code="invalid_value",
                param=prompt_param,
            )
        _check_size(len(prompt_ids), error_status, prompt_param)
        job_input = {"prompt_ids": prompt_ids}
    if sampling.truncate is not None and len(prompt_ids) > sampling.truncate:
        prompt_ids = prompt_ids[-sampling.truncate :]
    params = _params(
        model=model,
        prompt_tokens=len(prompt_ids),
        sampling=sampling,
        default_max_tokens=default_max_tokens,
        max_tokens_param=max_tokens_param,
        prompt_param=prompt_param,
        error_status=error_status,
        guards=guards,
        param_names=param_names,
    )
    return PreparedRequest(
        model=model,
        kind=JobKind.COMPLETION,
        input=job_input,
        params=params,
        prompt_tokens=len(prompt_ids),
        prompt_ids=tuple(prompt_ids),
    )


def with_extra(prepared: PreparedRequest, **extra: Any) -> PreparedRequest:
    return replace(prepared, extra={**prepared.extra, **extra})


def with_input(prepared: PreparedRequest, **fields: Any) -> PreparedRequest:
    """Flags the worker reads from the job's input (``return_token_ids``: its first entry
    carries the prompt's token ids as the worker built them)."""
    return replace(prepared, input={**prepared.input, **fields})
