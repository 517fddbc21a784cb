"""OpenAI Embeddings API: ``POST /v1/embeddings`` on the embeddings worker.

``input``: a string, a list of strings, a list of token ids (of the embedding model's
tokenizer) or a list of such lists. ``encoding_format``: ``float`` or ``base64`` (little-endian
float32, what the openai SDK asks for by default and decodes). ``dimensions`` is accepted
only when it equals the model's (the model cannot shorten its vectors). Admission charges
the token bucket with the exact tokens the model reads, as for generation; there is no
generation to reserve. The web process never loads the model: a batch is one task on the
embeddings queue (`inference.rag.services.embed_remote`).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from gateway.admission import admit, with_ratelimit
from gateway.apis.base import GatewayApiView
from gateway.bodies import validated_body
from gateway.errors import ApiError, openai_exception_handler
from gateway.fields import StrictCharField, StrictIntegerField
from gateway.openai.fields import PromptField
from gateway.prepare import check_storable
from gateway.submission import Caller
from inference.admission.services import admission_release
from inference.core.db import release_connection
from inference.rag.services import EmbeddingUnavailable, embed_remote, embedding_model_facts

MAX_INPUTS = 2048  # OpenAI's limit per request


class EmbeddingCreateSerializer(serializers.Serializer):
    model = StrictCharField(max_length=200)
    input = PromptField(max_items=MAX_INPUTS)
    encoding_format = serializers.ChoiceField(choices=["float", "base64"], required=False, default="float")
    dimensions = StrictIntegerField(required=False, allow_null=True, min_value=1)
    user = StrictCharField(required=False, allow_blank=True, max_length=256)


class EmbeddingCreateApi(GatewayApiView):
    def get_exception_handler(self) -> Any:
        return openai_exception_handler

    @extend_schema(
        request=EmbeddingCreateSerializer,
        responses={200: OpenApiResponse(description="list of embeddings")},
        summary="Create embeddings (OpenAI-compatible)",
    )
    def post(self, request: Request) -> Response:
        data = validated_body(request, EmbeddingCreateSerializer)
        name = settings.SLUICE_EMBEDDING_MODEL_NAME
        if data["model"] != name:
            raise ApiError(
                f"The model '{data['model']}' does not exist or is not an embedding model (try '{name}').",
                status_code=status.HTTP_404_NOT_FOUND,
                code="model_not_found",
                param="model",
            )
        facts = embedding_model_facts()
        if data.get("dimensions") not in (None, facts.dimensions):
            raise ApiError(
                f"This model's embeddings have {facts.dimensions} dimensions; it cannot return "
                f"{data['dimensions']}.",
                code="invalid_value",
                param="dimensions",
            )
        inputs: list[str | list[int]] = data["input"]
        tokens = 0
        for index, item in enumerate(inputs):
            param = "input" if len(inputs) == 1 else f"input[{index}]"
            if isinstance(item, str):
                if not item:
                    raise ApiError("An input must not be empty.", code="invalid_value", param=param)
                if len(item) > settings.SLUICE_MAX_PROMPT_CHARS:
                    raise ApiError("The input is too long.", code="prompt_too_long", param=param)
                check_storable(item, param=param)
                tokens += facts.count(item)
            else:
                if any(not 0 <= i < facts.vocab_size for i in item):
                    raise ApiError(
                        f"Token ids must be in 0..{facts.vocab_size - 1}.", code="invalid_value", param=param
                    )
                tokens += min(len(item), facts.max_tokens)
        caller = Caller.of(request)
        admission = admit(
            user=caller.user, api_key=caller.api_key, model_name=f"embeddings:{name}", cost=tokens
        )
        release_connection()  # nothing below needs the database
        admission.wait()
        try:
            vectors = embed_remote(inputs)
        except EmbeddingUnavailable as exc:
            raise ApiError(
                f"Embeddings are unavailable right now: {exc}.",
                status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                code="model_unavailable",
                headers={"Retry-After": "5"},
            ) from exc
        except ValueError as exc:
            raise ApiError(
                f"The input could not be embedded: {exc}", code="invalid_value", param="input"
            ) from exc
        finally:
            admission_release(grant=admission.grant, used_tokens=tokens)
        base64_out = data["encoding_format"] == "base64"
        response = Response(
            {
                "object": "list",
                "data": [
                    {
                        "object": "embedding",
                        "index": index,
                        "embedding": (
                            base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
                            if base64_out
                            else vector
                        ),
                    }
                    for index, vector in enumerate(vectors)
                ],
                "model": name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )
        return with_ratelimit(response, admission)
