"""The prompt a job runs: its tokens after the chat template, the session's history, the
passages retrieved from its knowledge bases, the user's profile; trimmed to the context window."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from inference.cache import cache_key, is_deterministic
from inference.chat.prompting import ContextPassage, assemble, profile_text
from inference.chat.selectors import profile_attributes, response_history, session_history
from inference.models import Job, JobKind
from inference.observability.recording import record_retrieval
from inference.rag.selectors import Hit, chunks_search
from inference.rag.services import local_embedder
from inference.tools.calls import ToolPlan
from inference.versions.registry import ServedModel


@dataclass
class PromptPlan:
    """What a job's model input turned out to be (DESIGN.md §1 step 5)."""

    prompt_ids: list[int]
    citations: list[dict[str, Any]] = field(default_factory=list)
    knowledge_base_ids: list[str] = field(default_factory=list)
    cache_key: str | None = None
    #: The model input as text (template applied): shown to staff on the job's admin page.
    rendered: str = ""


RENDERED_MAX_CHARS = 200_000


def job_prompt(*, job: Job, model: ServedModel) -> PromptPlan:
    """The prompt a job runs. Completions: the raw prompt. Chat: the profile and the chunks
    retrieved from the named knowledge bases in the system message, the session's history,
    the request's messages — trimmed to the context window minus ``max_tokens``."""
    info = model.info
    if job.kind != JobKind.CHAT:
        if "prompt_ids" in job.input:  # a client that sent token ids
            ids = [int(i) for i in job.input["prompt_ids"]]
        else:
            ids = info.completion_prompt_ids(job.input["prompt"])
        truncate = job.params.get("truncate")
        if truncate:
            ids = ids[-int(truncate) :]  # TGI's truncate: keep the end of the prompt
        plan = PromptPlan(prompt_ids=ids, rendered=info.decode(ids))
    else:
        plan = _chat_prompt(job=job, model=model)
    if is_deterministic(job.params):
        plan.cache_key = cache_key(model=model.cache_name, prompt_ids=plan.prompt_ids, params=job.params)
    return plan


def _chat_prompt(*, job: Job, model: ServedModel) -> PromptPlan:
    info = model.info
    new_messages: list[dict[str, str]] = job.input["messages"]
    if job.input.get("instructions"):  # Responses: instructions lead, and are not history
        new_messages = [{"role": "system", "content": job.input["instructions"]}, *new_messages]
    kb_ids = [str(i) for i in job.input.get("knowledge_base_ids") or []]
    if job.session_id:
        history = session_history(session_id=job.session_id)
    elif job.previous_id:
        history = response_history(job_id=job.previous_id)
    else:
        history = []
    hits: list[Hit] = []
    if kb_ids:
        query = next((m["content"] for m in reversed(new_messages) if m["role"] == "user"), "")
        if query.strip():
            rag = job.input.get("rag") or {}
            began = time.monotonic()
            vector = local_embedder().embed([query])[0]
            hits = chunks_search(
                kb_ids=kb_ids,
                embedding=vector,
                top_k=int(rag.get("top_k") or settings.SLUICE_RAG_TOP_K),
                min_score=float(rag.get("min_score", settings.SLUICE_RAG_MIN_SCORE)),
            )
            record_retrieval(model=job.model, seconds=time.monotonic() - began)
    budget = info.context_length - int(job.params["max_tokens"])
    plan = job.input.get("tool_plan")
    tools = ToolPlan.from_dict(plan).tools if plan and ToolPlan.from_dict(plan).rendered else None
    assembled = assemble(
        new_messages=new_messages,
        history=history,
        profile=profile_text(profile_attributes(user_id=job.user_id)),
        passages=[ContextPassage(document=hit.document, text=hit.text) for hit in hits],
        fits=lambda messages: len(info.chat_prompt_ids(messages, tools=tools)) <= budget,
    )
    ids = info.chat_prompt_ids(assembled.messages, tools=tools)
    truncate = job.params.get("truncate")
    if truncate:
        ids = ids[-int(truncate) :]
    return PromptPlan(
        prompt_ids=ids,
        rendered=info.render_chat(assembled.messages, tools=tools),
        citations=[hit.citation() for hit in hits[: assembled.passages_used]],
        knowledge_base_ids=kb_ids,
    )
