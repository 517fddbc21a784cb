"""text-generation-inference compatible API, so that ``huggingface_hub.InferenceClient(
base_url=...)`` (and any TGI client) works unchanged: ``POST /generate``,
``POST /generate_stream``, ``POST /`` (either, by the body's ``stream``), ``GET /info``.

TGI answers invalid parameters with 422; so do these routes.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway.apis.base import GatewayApiView
from gateway.auth import request_api_key, request_user
from gateway.errors import ApiError, first_error
from gateway.fields import (
    AnyJSONField,
    StopField,
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
)
from gateway.protocol import (
    admit_prepared,
    create_admitted_job,
    prepare_completion,
    raise_for_failed,
    route_or_404,
    tgi_finish_reason,
)
from gateway.streaming import Entry, admitted_stream, observe_completed, sse_response, tgi_refused, tgi_stream
from inference.models import Job
from inference.registry import default_model
from inference.selectors import job_wait_finished
from inference.store import get_redis
from inference.streams import decode_fields, stream_key

TGI_DEFAULT_MAX_NEW_TOKENS = 100
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "repetition_penalty": (None, 1, 1.0),
    "frequency_penalty": (None, 0, 0.0),
    "typical_p": (None, 1, 1.0),
    "watermark": (None, False),
    "truncate": (None,),
    "best_of": (None, 1),
    "top_n_tokens": (None, 0),
    "grammar": (None,),
    "adapter_id": (None, ""),
    "decoder_input_details": (None, False),
}


class TgiParametersSerializer(serializers.Serializer):
    max_new_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)
    temperature = StrictFloatField(required=False, allow_null=True, min_value=0.0, max_value=100.0)
    top_k = StrictIntegerField(required=False, allow_null=True, min_value=1)
    top_p = StrictFloatField(required=False, allow_null=True, min_value=0.0, max_value=1.0)
    do_sample = StrictBooleanField(required=False, default=False)
    seed = StrictIntegerField(required=False, allow_null=True, min_value=0, max_value=2**64 - 1)
    stop = StopField()
    details = StrictBooleanField(required=False, default=False)
    return_full_text = StrictBooleanField(required=False, default=False, allow_null=True)
    decoder_input_details = AnyJSONField()


class TgiGenerateSerializer(serializers.Serializer):
    inputs = StrictCharField(allow_blank=True, trim_whitespace=False)
    parameters = TgiParametersSerializer(required=False, default=dict)
    stream = StrictBooleanField(required=False, default=False)


def _validated(request: Request) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise ApiError("The request body must be a JSON object.", code="invalid_json")
    parameters = request.data.get("parameters") or {}
    if isinstance(parameters, dict):
        for name, neutral in _NEUTRAL.items():
            if name in parameters and parameters[name] not in neutral:
                raise ApiError(
                    f"'{name}' is not supported by this server.",
                    status_code=status.HTTP_422_UNPROCESSABLE_ENTITY,
                    code="unsupported_parameter",
                    param=f"parameters.{name}",
                )
    serializer = TgiGenerateSerializer(data=request.data)
    if not serializer.is_valid():
        param, message = first_error(serializer.errors)
        raise ApiError(
            f"Invalid value for '{param}': {message}",
            status_code=status.HTTP_422_UNPROCESSABLE_ENTITY,
            code="validation",
            param=param,
        )
    return dict(serializer.validated_data)


def _sampling(parameters: dict[str, Any]) -> tuple[float, float, int]:
    """TGI samples when asked to, or when any sampling knob is set; otherwise it is greedy."""
    temperature = parameters.get("temperature")
    top_p = parameters.get("top_p")
    top_k = parameters.get("top_k")
    sample = parameters.get("do_sample") or any(v is not None for v in (temperature, top_p, top_k))
    if not sample:
        return 0.0, 1.0, 0
    if temperature is not None and temperature <= 0:
        raise ApiError(
            "`temperature` must be strictly positive",
            status_code=status.HTTP_422_UNPROCESSABLE_ENTITY,
            code="validation",
            param="parameters.temperature",
        )
    if top_p is not None and not 0 < top_p < 1:
        raise ApiError(
            "`top_p` must be > 0.0 and < 1.0",
            status_code=status.HTTP_422_UNPROCESSABLE_ENTITY,
            code="validation",
            param="parameters.top_p",
        )
    return (1.0 if temperature is None else temperature), (1.0 if top_p is None else top_p), (top_k or 0)


def _details(
    job_id: str, finish_reason: str, usage: dict[str, int] | None, seed: int | None, eos: frozenset[int]
) -> dict[str, Any]:
    tokens: list[dict[str, Any]] = []
    entries: Any = get_redis().xrange(stream_key(job_id))
    for _, raw in entries:
        entry = Entry("", decode_fields(raw))
        if entry.kind != "tok":
            continue
        ids, logprobs = entry.token_ids, entry.logprobs
        for position, token_id in enumerate(ids):
            tokens.append(
                {
                    "id": token_id,
                    "text": entry.text if position == len(ids) - 1 else "",
                    "logprob": logprobs[position] if position < len(logprobs) else 0.0,
                    "special": token_id in eos,
                }
            )
    return {
        "finish_reason": tgi_finish_reason(finish_reason),
        "generated_tokens": (usage or {}).get("completion_tokens", len(tokens)),
        "seed": seed,
        "prefill": [],
        "tokens": tokens,
        "top_tokens": None,
        "best_of_sequences": None,
    }


def _run(request: Request, data: dict[str, Any], *, stream: bool) -> Any:
    started = time.perf_counter()
    parameters = data.get("parameters") or {}
    max_new_tokens = parameters.get("max_new_tokens")
    if max_new_tokens is not None and max_new_tokens > settings.SLUICE_MAX_NEW_TOKENS:
        raise ApiError(
            f"`max_new_tokens` must be <= {settings.SLUICE_MAX_NEW_TOKENS}. Given: {max_new_tokens}",
            status_code=status.HTTP_422_UNPROCESSABLE_ENTITY,
            code="validation",
            param="parameters.max_new_tokens",
        )
    temperature, top_p, top_k = _sampling(parameters)
    model = route_or_404(
        None, user=request_user(request), validation_status=status.HTTP_422_UNPROCESSABLE_ENTITY
    )
    prepared = prepare_completion(
        model=model,
        prompt=data["inputs"],
        max_tokens=max_new_tokens,
        default_max_tokens=TGI_DEFAULT_MAX_NEW_TOKENS,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=parameters.get("seed"),
        stop=parameters.get("stop") or (),
        max_tokens_param="parameters.max_new_tokens",
        prompt_param="inputs",
        error_status=status.HTTP_422_UNPROCESSABLE_ENTITY,
    )
    admission = admit_prepared(request, prepared)
    user, api_key = request_user(request), request_api_key(request)

    def create() -> Job:
        return create_admitted_job(
            user=user, api_key=api_key, prepared=prepared, source="tgi", admission=admission
        )

    prefix = data["inputs"] if parameters.get("return_full_text") else ""
    info = model.info
    if stream:

        def stream_for(job: Job) -> Any:
            return tgi_stream(
                job_id=str(job.id),
                model=job.model,
                seed=parameters.get("seed"),
                eos_ids=info.eos_token_ids,
                prefix=prefix,
                started=started,
                decode=info.decode,
            )

        if admission.admitted:
            return sse_response(stream_for(create()))
        return sse_response(admitted_stream(admission, create=create, stream=stream_for, refused=tgi_refused))
    admission.wait()
    job = job_wait_finished(job_id=create().id, timeout_s=settings.SLUICE_JOB_TIMEOUT_S + 5)
    raise_for_failed(job)
    observe_completed(job, started=started)
    body: dict[str, Any] = {"generated_text": prefix + job.output_text}
    if parameters.get("details"):
        body["details"] = _details(
            str(job.id), job.finish_reason, job.usage, parameters.get("seed"), info.eos_token_ids
        )
    return Response(body)


_RESPONSES = {200: OpenApiResponse(description="TGI response")}


class TgiGenerateApi(GatewayApiView):
    @extend_schema(request=TgiGenerateSerializer, responses=_RESPONSES, summary="Generate (TGI-compatible)")
    def post(self, request: Request) -> Any:
        return _run(request, _validated(request), stream=False)


class TgiGenerateStreamApi(GatewayApiView):
    @extend_schema(
        request=TgiGenerateSerializer,
        responses=_RESPONSES,
        summary="Generate as a token stream (TGI-compatible)",
    )
    def post(self, request: Request) -> Any:
        return _run(request, _validated(request), stream=True)


class TgiCompatGenerateApi(GatewayApiView):
    """``POST /``: TGI's compatibility route; the body's ``stream`` picks the answer's form."""

    @extend_schema(
        request=TgiGenerateSerializer,
        responses=_RESPONSES,
        summary="Generate, streaming if the body says so (TGI-compatible)",
    )
    def post(self, request: Request) -> Any:
        data = _validated(request)
        return _run(request, data, stream=bool(data.get("stream")))


class TgiInfoApi(APIView):
    permission_classes: list[Any] = []
    authentication_classes: list[Any] = []

    @extend_schema(
        responses={200: OpenApiResponse(description="TGI server info")},
        summary="Server info (TGI-compatible)",
    )
    def get(self, request: Request) -> Response:
        model = default_model()
        context = model.info.context_length
        return Response(
            {
                "model_id": model.name,
                "model_sha": None,
                "model_pipeline_tag": "text-generation",
                "max_input_tokens": context - 1,
                "max_total_tokens": context,
                "max_best_of": 1,
                "max_stop_sequences": 4,
                "validation_workers": 1,
                "router": "sluice",
                "version": settings.SPECTACULAR_SETTINGS["VERSION"],
            }
        )
