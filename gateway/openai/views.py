"""OpenAI-compatible routes: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models[/{id}]``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from gateway.admission import with_ratelimit
from gateway.apis.base import GatewayApiView, StreamingApiView
from gateway.auth import request_api_key, request_user
from gateway.bodies import validated_body
from gateway.errors import ApiError, openai_exception_handler
from gateway.guards import guards_for
from gateway.idempotency import IdempotencyClaim
from gateway.openai import shaping, streaming
from gateway.openai.serializers import ChatCompletionSerializer, CompletionSerializer
from gateway.parameters import check_parameters, declared
from gateway.prepare import (
    prepare_chat,
    prepare_completion,
    resolve_chat_context,
    route_or_404,
    with_choices,
    with_extra,
    with_input,
)
from gateway.sse import observe_completed, sse_response
from gateway.submission import Caller, Submission, submit_all
from inference.models import Job
from inference.tools.calls import ToolError, ToolPlan, tool_plan
from inference.versions.registry import ServedModel, served_models


class OpenAIView(StreamingApiView):
    def get_exception_handler(self) -> Any:
        return openai_exception_handler


def unsupported(message: str, param: str) -> ApiError:
    return ApiError(message, code="unsupported_parameter", param=param)


def validated(serializer_class: type[serializers.Serializer], request: Request) -> dict[str, Any]:
    """The body checked: every parameter known (refused ones at their neutral value), then typed."""
    refused = getattr(serializer_class, "REFUSED", {})
    return validated_body(
        request,
        serializer_class,
        check=lambda data: check_parameters(
            data, known=declared(serializer_class, refused), refused=refused, error=unsupported
        ),
    )


#: SamplingParams fields under the names OpenAI's and vLLM's clients send them.
PARAM_NAMES = {
    "structured": "response_format",
    "truncate": "truncate_prompt_tokens",
    "include_stop": "include_stop_str_in_output",
}


def caller_of(request: Request, data: dict[str, Any]) -> Caller:
    """The caller; a body's ``request_id`` (vLLM) names the job unless X-Request-ID did."""
    caller = Caller.of(request)
    if data.get("request_id") and not caller.request_id:
        caller = replace(caller, request_id=str(data["request_id"]))
    return caller


def job_extra(data: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` (kept on the job, shown in the console) and the end user's identifiers."""
    extra: dict[str, Any] = {}
    metadata = dict(data.get("metadata") or {})
    for name in ("user", "safety_identifier"):
        if data.get(name):
            metadata.setdefault(f"openai.{name}", data[name])
    if metadata:
        extra["metadata"] = metadata
    return extra


def tools_of(data: dict[str, Any], model: ServedModel) -> ToolPlan | None:
    try:
        return tool_plan(
            data.get("tools"),
            data.get("tool_choice"),
            parallel=data.get("parallel_tool_calls"),
            parser=model.tool_parser,
        )
    except ToolError as exc:
        raise ApiError(str(exc), code="invalid_value", param=exc.param) from exc


def _logprobs(
    model: ServedModel, wanted: bool, top: int, *, as_ids: bool = False, include_sampled: bool = False
) -> shaping.Logprobs | None:
    if not wanted:
        return None
    info = model.info
    return shaping.Logprobs(
        info=info, eos=info.eos_token_ids, top=top, as_ids=as_ids, include_sampled=include_sampled
    )


class ChatCompletionCreateApi(OpenAIView):
    @extend_schema(
        request=ChatCompletionSerializer,
        responses={200: OpenApiResponse(description="chat.completion, or text/event-stream of chunks")},
        summary="Create a chat completion (OpenAI-compatible)",
    )
    def post(self, request: Request) -> Any:
        data = validated(ChatCompletionSerializer, request)
        user = request_user(request)
        model = route_or_404(data["model"], user=user)
        tools = tools_of(data, model)
        top = int(data.get("top_logprobs") or 0)
        prepared = prepare_chat(
            model=model,
            guards=guards_for(user=user, api_key=request_api_key(request)),
            context=resolve_chat_context(user=user, data=data),
            messages=data["messages"],
            sampling=ChatCompletionSerializer.to_sampling_params(data, tools=tools),
            tools=tools,
            param_names=PARAM_NAMES,
            extra=job_extra(data),
        )
        if data.get("return_token_ids"):
            prepared = with_input(prepared, return_token_ids=True)
        claim = IdempotencyClaim.begin(request, user_id=user.pk)
        caller = caller_of(request, data)
        n = int(data.get("n") or 1)
        submissions = [
            Submission(caller, choice, source="openai.chat", idempotency=claim, index=index)
            for index, choice in enumerate(with_choices(prepared, int(data.get("best_of") or n)))
        ]
        logprobs = _logprobs(
            model, bool(data.get("logprobs")), top, as_ids=bool(data.get("return_tokens_as_token_ids"))
        )
        shape = shaping.Shape(model=model, logprobs=logprobs, tools=tools, n=n, **_options(data))
        return _respond(
            request, submissions, data, shape=shape, stream=streaming.chat_stream, body=shaping.chat_body
        )


class CompletionCreateApi(OpenAIView):
    @extend_schema(
        request=CompletionSerializer,
        responses={200: OpenApiResponse(description="text_completion, or text/event-stream of chunks")},
        summary="Create a text completion (OpenAI-compatible, legacy)",
    )
    def post(self, request: Request) -> Any:
        data = validated(CompletionSerializer, request)
        model = route_or_404(data["model"], user=request_user(request))
        top = data.get("logprobs")
        sampling = CompletionSerializer.to_sampling_params(data)
        guards = guards_for(user=request_user(request), api_key=request_api_key(request))
        prompts = data["prompt"]
        caller = caller_of(request, data)
        claim = IdempotencyClaim.begin(request, user_id=caller.user.pk)
        n = int(data.get("n") or 1)
        # One job per prompt and choice: prompt 0's choices, then prompt 1's, ...
        prepared = [
            prepare_completion(
                model=model,
                prompt=prompt,
                sampling=sampling,
                guards=guards,
                default_max_tokens=16,  # OpenAI's default for /v1/completions
                prompt_param="prompt" if len(prompts) == 1 else f"prompt[{index}]",
                param_names=PARAM_NAMES,
            )
            for index, prompt in enumerate(prompts)
        ]
        flags = {"return_token_ids": True} if data.get("return_token_ids") else {}
        jobs = [
            with_input(with_extra(choice, **job_extra(data)), **flags)
            for one in prepared
            for choice in with_choices(one, int(data.get("best_of") or n))
        ]
        submissions = [
            Submission(caller, one, source="openai.completions", idempotency=claim, index=index)
            for index, one in enumerate(jobs)
        ]
        logprobs = _logprobs(
            model,
            top is not None,
            int(top or 0),
            as_ids=bool(data.get("return_tokens_as_token_ids")),
            include_sampled=True,
        )
        shape = shaping.Shape(model=model, logprobs=logprobs, n=n, prompts=prepared, **_options(data))
        return _respond(
            request,
            submissions,
            data,
            shape=shape,
            stream=streaming.completion_stream,
            body=shaping.completion_body,
        )


def _options(data: dict[str, Any]) -> dict[str, Any]:
    stream_options = data.get("stream_options") or {}
    return {
        "include_usage": bool(stream_options.get("include_usage")),
        "continuous_usage": bool(stream_options.get("continuous_usage_stats")),
        "token_ids": bool(data.get("return_token_ids")),
        "echo": bool(data.get("echo")),
        "prompt_logprobs": data.get("prompt_logprobs"),
    }


def _respond(
    request: Request,
    submissions: list[Submission],
    data: dict[str, Any],
    *,
    shape: shaping.Shape,
    stream: Callable[..., AsyncIterator[bytes]],
    body: Callable[..., dict[str, Any]],
) -> Any:
    """One request's jobs (several: prompts of a batch, choices of n > 1) answered as one
    stream or one body. A single streamed job shows its admission wait as queue comments;
    several are all admitted (waiting if they must), then created together."""
    started = submissions[0].started

    def stream_for(*jobs: Job) -> AsyncIterator[bytes]:
        return stream(jobs, shape=shape, started=started)

    if data["stream"] and len(submissions) == 1:
        submissions[0].admit()
        return with_ratelimit(
            submissions[0].stream(stream_for, refused=streaming.refused), submissions[0].admission
        )
    jobs = submit_all(submissions)
    if data["stream"]:
        return with_ratelimit(sse_response(stream_for(*jobs)), submissions[0].admission)
    finished = [submission.finish(job) for submission, job in zip(submissions, jobs, strict=True)]
    observe_completed(finished[0], started=started)
    return with_ratelimit(Response(body(finished, shape=shape)), submissions[0].admission)


def _model_object(name: str, owned_by: str = "sluice") -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": owned_by}


def _listed() -> list[dict[str, Any]]:
    models = [_model_object(model.name) for model in served_models()]
    models.append(_model_object(settings.SLUICE_EMBEDDING_MODEL_NAME))
    return models


class ModelListApi(GatewayApiView):
    def get_exception_handler(self) -> Any:
        return openai_exception_handler

    @extend_schema(
        responses={200: OpenApiResponse(description="list of models")},
        summary="List models",
        operation_id="models_list",
    )
    def get(self, request: Request) -> Response:
        return Response({"object": "list", "data": _listed()}, status=status.HTTP_200_OK)


class ModelDetailApi(GatewayApiView):
    def get_exception_handler(self) -> Any:
        return openai_exception_handler

    @extend_schema(responses={200: OpenApiResponse(description="a model")}, summary="Retrieve a model")
    def get(self, request: Request, model_id: str) -> Response:
        for model in _listed():
            if model["id"] == model_id:
                return Response(model)
        raise ApiError(
            f"The model '{model_id}' does not exist or you do not have access to it.",
            status_code=status.HTTP_404_NOT_FOUND,
            code="model_not_found",
            param="model",
        )
