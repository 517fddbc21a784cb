"""text-generation-inference compatible routes, so that ``text_generation.Client``,
``huggingface_hub.InferenceClient(base_url=...)`` and any TGI client work unchanged:
``POST /generate``, ``POST /generate_stream``, ``POST /`` (TGI's compatibility route: a
one-element list, or a stream when the body says ``stream``), ``GET /info``, ``GET /health``.

TGI's behaviour where it differs from OpenAI's: invalid parameters are 422, errors are
``{"error", "error_type"}``, a matched stop sequence stays in ``generated_text``, sampling
without a seed reports the seed it drew, ``truncate`` keeps the end of the prompt,
``best_of`` answers with the most likely of that many sampled sequences (the others in
``details.best_of_sequences``).
"""

from __future__ import annotations

import random
from typing import Any

from django.conf import settings
from django.http import HttpResponse
from django.shortcuts import render
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway.admission import with_ratelimit
from gateway.apis.base import StreamingApiView
from gateway.auth import request_api_key, request_user
from gateway.errors import ApiError, tgi_exception_handler
from gateway.guards import guards_for
from gateway.idempotency import IdempotencyClaim
from gateway.prepare import prepare_completion, route_or_404, with_choices
from gateway.sse import observe_completed
from gateway.submission import Caller, Submission, submit_all
from gateway.tgi import shaping
from gateway.tgi.serializers import (
    TGI_DEFAULT_MAX_NEW_TOKENS,
    TgiGenerateSerializer,
    unprocessable,
    validated,
)
from inference.sampling_params import SamplingParams, StructuredOutput
from inference.versions.fleet import worker_heartbeats
from inference.versions.registry import default_model, served_models

#: SamplingParams fields under TGI's names.
PARAM_NAMES = {
    name: f"parameters.{name}"
    for name in (
        "repetition_penalty",
        "frequency_penalty",
        "typical_p",
        "top_k",
        "top_p",
        "temperature",
        "truncate",
    )
} | {"structured": "parameters.grammar", "max_tokens": "parameters.max_new_tokens"}


class TgiView(StreamingApiView):
    def get_exception_handler(self) -> Any:
        return tgi_exception_handler


def _sampling(parameters: dict[str, Any], constraint: StructuredOutput | None = None) -> SamplingParams:
    """TGI samples when asked to, or when any sampling knob is set (as its NextTokenChooser:
    temperature, top_k, top_p, typical_p); otherwise it is greedy. A sampled request without a
    seed gets one drawn here, so ``details.seed`` can report it. Penalties apply either way."""
    temperature = parameters.get("temperature")
    top_p = parameters.get("top_p")
    top_k = parameters.get("top_k")
    typical_p = parameters.get("typical_p")
    sample = parameters.get("do_sample") or any(v is not None for v in (temperature, top_p, top_k, typical_p))
    common: dict[str, Any] = {
        "max_tokens": parameters.get("max_new_tokens"),
        "stop": tuple(parameters.get("stop") or ()),
        "top_logprobs": int(parameters.get("top_n_tokens") or 0),
        "prompt_logprobs": 0 if parameters.get("decoder_input_details") else None,
        "include_stop": True,
        "truncate": parameters.get("truncate"),
        "repetition_penalty": float(parameters.get("repetition_penalty") or 1.0),
        "frequency_penalty": float(parameters.get("frequency_penalty") or 0.0),
        "structured": constraint,
    }
    if not sample:
        return SamplingParams(temperature=0.0, seed=None, **common)
    if temperature is not None and temperature <= 0:
        raise unprocessable("`temperature` must be strictly positive", param="parameters.temperature")
    if top_p is not None and not 0 < top_p < 1:
        raise unprocessable("`top_p` must be > 0.0 and < 1.0", param="parameters.top_p")
    seed = parameters.get("seed")
    return SamplingParams(
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        top_k=top_k or 0,
        typical_p=1.0 if typical_p is None else typical_p,
        seed=seed if seed is not None else random.getrandbits(63),
        **common,
    )


def _best_of(parameters: dict[str, Any], *, stream: bool) -> int:
    """TGI's rules (and messages) for ``best_of``: sampled, unseeded, not streamed."""
    best_of = parameters.get("best_of")
    if best_of is None or best_of == 1:
        return 1
    if not 0 < best_of <= settings.SLUICE_MAX_N:
        raise unprocessable(
            f"`best_of` must be > 0 and <= {settings.SLUICE_MAX_N}. Given: {best_of}",
            param="parameters.best_of",
        )
    if parameters.get("seed") is not None:
        raise unprocessable("`seed` must not be set when `best_of` > 1", param="parameters.seed")
    sampled = parameters.get("do_sample") or any(
        parameters.get(name) is not None for name in ("temperature", "top_k", "top_p", "typical_p")
    )
    if not sampled:
        raise unprocessable("you must use sampling when `best_of` is > 1", param="parameters.best_of")
    if stream:
        raise unprocessable("`best_of` != 1 is not allowed for this endpoint", param="parameters.best_of")
    return int(best_of)


def _run(request: Request, data: dict[str, Any], *, stream: bool, as_list: bool = False) -> Any:
    parameters = data.get("parameters") or {}
    best_of = _best_of(parameters, stream=stream)
    constraint = data.get("constraint")
    sampling = _sampling(parameters, constraint[0] if constraint else None)
    model = route_or_404(
        None, user=request_user(request), validation_status=status.HTTP_422_UNPROCESSABLE_ENTITY
    )
    prepared = prepare_completion(
        model=model,
        prompt=data["inputs"],
        sampling=sampling,
        guards=guards_for(user=request_user(request), api_key=request_api_key(request)),
        default_max_tokens=TGI_DEFAULT_MAX_NEW_TOKENS,
        max_tokens_param="parameters.max_new_tokens",
        prompt_param="inputs",
        error_status=status.HTTP_422_UNPROCESSABLE_ENTITY,
        param_names=PARAM_NAMES,
    )
    options = shaping.TgiOptions(
        info=model.info,
        seed=prepared.params.seed if prepared.params.temperature > 0 else None,
        prefix=data["inputs"] if parameters.get("return_full_text") else "",
        top_n_tokens=prepared.params.top_logprobs,
        prefill=prepared.params.prompt_logprobs is not None,
        input_length=prepared.prompt_tokens,
    )
    caller = Caller.of(request)
    claim = IdempotencyClaim.begin(request, user_id=caller.user.pk)
    if best_of > 1:
        # One job per sequence, placed together (one prefill); the best one answers.
        submissions = [
            Submission(caller, choice, source="tgi", idempotency=claim, index=index)
            for index, choice in enumerate(with_choices(prepared, best_of))
        ]
        jobs = submit_all(submissions)
        finished = [submission.finish(job) for submission, job in zip(submissions, jobs, strict=True)]
        observe_completed(finished[0], started=submissions[0].started)
        body = shaping.best_of_body(finished, options=options, details=bool(parameters.get("details")))
        return with_ratelimit(Response([body] if as_list else body), submissions[0].admission)
    submission = Submission(caller, prepared, source="tgi", idempotency=claim)
    submission.admit()
    if stream:
        return with_ratelimit(
            submission.stream(
                lambda job: shaping.generate_stream(job, options=options, started=submission.started),
                refused=shaping.refused,
            ),
            submission.admission,
        )
    job = submission.run()
    observe_completed(job, started=submission.started)
    body = shaping.generate_body(job, options=options, details=bool(parameters.get("details")))
    return with_ratelimit(Response([body] if as_list else body), submission.admission)


_RESPONSES = {200: OpenApiResponse(description="TGI response")}


class TgiGenerateApi(TgiView):
    @extend_schema(request=TgiGenerateSerializer, responses=_RESPONSES, summary="Generate (TGI-compatible)")
    def post(self, request: Request) -> Any:
        return _run(request, validated(request), stream=False)


class TgiGenerateStreamApi(TgiView):
    @extend_schema(
        request=TgiGenerateSerializer,
        responses=_RESPONSES,
        summary="Generate as a token stream (TGI-compatible)",
    )
    def post(self, request: Request) -> Any:
        return _run(request, validated(request), stream=True)


class TgiCompatGenerateApi(TgiView):
    """``POST /``: TGI's compatibility route; the body's ``stream`` picks the answer's form.
    As in TGI, a non-streaming answer is a one-element list (what ``text_generation`` reads).
    ``GET /`` (a person, the admin's "View site") gets a small landing page instead."""

    def get_permissions(self) -> Any:
        return [] if self.request.method in ("GET", "HEAD") else super().get_permissions()

    @extend_schema(exclude=True)
    def get(self, request: Request) -> HttpResponse:
        return render(
            request,
            "gateway/landing.html",
            {
                "models": [model.name for model in served_models()],
                "base": request.build_absolute_uri("/").rstrip("/"),
            },
        )

    @extend_schema(
        request=TgiGenerateSerializer,
        responses=_RESPONSES,
        summary="Generate, streaming if the body says so (TGI-compatible)",
    )
    def post(self, request: Request) -> Any:
        data = validated(request)
        return _run(request, data, stream=bool(data.get("stream")), as_list=True)


class TgiInfoApi(APIView):
    permission_classes: list[Any] = []
    authentication_classes: list[Any] = []

    def get_exception_handler(self) -> Any:
        return tgi_exception_handler

    @extend_schema(
        responses={200: OpenApiResponse(description="TGI server info")},
        summary="Server info (TGI-compatible)",
    )
    def get(self, request: Request) -> Response:
        model = default_model()
        context = model.info.context_length
        version = settings.SPECTACULAR_SETTINGS["VERSION"]
        return Response(
            {
                # TGI 3's Info schema, then the names older clients read.
                "model_id": model.name,
                "model_sha": None,
                "model_pipeline_tag": "text-generation",
                "model_dtype": model.dtype,
                "model_device_type": settings.SLUICE_DEVICE,
                "max_concurrent_requests": model.capacity or 0,
                "max_best_of": settings.SLUICE_MAX_N,
                "max_stop_sequences": 4,
                "max_input_tokens": context - 1,
                "max_total_tokens": context,
                "validation_workers": 1,
                "max_client_batch_size": 1,
                "router": "sluice",
                "version": version,
                "sha": None,
                "docker_label": None,
                "max_input_length": context - 1,
                "max_batch_total_tokens": model.batch_tokens,
                "max_waiting_tokens": 0,
                "max_batch_size": model.batch_size,
                "waiting_served_ratio": 0.0,
            }
        )


class HealthApi(APIView):
    """``GET /health`` as TGI and vLLM serve it: 200 when the default model has a worker (an
    empty body), 503 otherwise. ``/healthz`` stays the process's own liveness."""

    permission_classes: list[Any] = []
    authentication_classes: list[Any] = []

    def get_exception_handler(self) -> Any:
        return tgi_exception_handler

    @extend_schema(
        responses={200: OpenApiResponse(description="a worker serves the model"), 503: OpenApiResponse()},
        summary="Health (TGI- and vLLM-compatible)",
    )
    def get(self, request: Request) -> Response:
        name = default_model().name
        try:
            served = any(name in beat.get("models", []) for beat in worker_heartbeats())
        except Exception:
            served = False
        if not served:
            raise ApiError(
                f"No worker serves '{name}' right now.",
                status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                code="model_unavailable",
                tgi_type="overloaded",
            )
        return Response(None, status=status.HTTP_200_OK)
