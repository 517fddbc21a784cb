"""Chat reads: sessions, their messages, profiles."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.models import User
from django.db.models import Count, QuerySet

from inference.models import ChatSession, Job, Message, UserProfile
from inference.rag.selectors import is_uuid
from inference.tools.calls import ToolPlan, arguments_object
from inference.tools.stream import ToolCallStream


def sessions_for_user(*, user: User) -> QuerySet[ChatSession]:
    return ChatSession.objects.filter(user=user).annotate(message_count=Count("messages"))


def session_get_for_user(*, user: User, session_id: Any) -> ChatSession | None:
    if not is_uuid(session_id):
        return None
    return sessions_for_user(user=user).filter(id=session_id).first()


def session_history(*, session_id: Any, limit: int = 1000) -> list[dict[str, str]]:
    """The newest ``limit`` messages, oldest first (what the worker feeds the model)."""
    rows = list(
        Message.objects.filter(session_id=session_id).order_by("-id").values_list("role", "content")[:limit]
    )
    return [{"role": role, "content": content} for role, content in reversed(rows)]


MAX_RESPONSE_CHAIN = 100


def response_history(*, job_id: Any, limit: int = MAX_RESPONSE_CHAIN) -> list[dict[str, Any]]:
    """The conversation a Responses ``previous_response_id`` continues: each earlier response
    of the chain, oldest first, as its input messages and its output (instructions are not
    carried over, as in OpenAI's API). At most ``limit`` responses back."""
    chain: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []
    current = job_id
    while current is not None and len(chain) < limit:
        row = Job.objects.filter(id=current).values("input", "output_text", "previous_id").first()
        if row is None:
            break
        job_input = row["input"] if isinstance(row["input"], dict) else {}
        messages = [
            {key: m[key] for key in ("role", "content", "tool_calls", "tool_call_id") if key in m}
            for m in job_input.get("messages", [])
        ]
        chain.append((messages, _answer(job_input, row["output_text"], str(current))))
        current = row["previous_id"]
    history: list[dict[str, Any]] = []
    for messages, answer in reversed(chain):
        history += [*messages, answer]
    return history


def _answer(job_input: dict[str, Any], output: str, job_id: str) -> dict[str, Any]:
    """An earlier response's output as the assistant turn the template renders: its function
    calls as ``tool_calls`` (ids as that response reported them), else its text."""
    plan = job_input.get("tool_plan")
    if plan:
        reader = ToolCallStream(ToolPlan.from_dict(plan), call_id=f"call_{uuid.UUID(job_id).hex[:24]}")
        reader.read_all(output)
        if reader.calls:
            return {
                "role": "assistant",
                "content": reader.content.strip(),
                "tool_calls": [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": arguments_object(c.arguments)},
                    }
                    for c in reader.calls
                ],
            }
    return {"role": "assistant", "content": output}


def profile_attributes(*, user_id: int) -> dict[str, str]:
    profile = UserProfile.objects.filter(user_id=user_id).first()
    if profile is None:
        return {}
    return {"language": profile.language, "role": profile.role, "interests": profile.interests}
