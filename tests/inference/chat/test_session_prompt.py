"""The worker's prompt for a chat job: profile, session history (trimmed by tokens), request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from inference.chat.services import profile_update, session_create, session_record_turn
from inference.jobs.prompt import job_prompt
from inference.models import Job, JobKind, Message
from inference.versions.registry import ServedModel
from tests.conftest import TEST_MODEL_NAME

pytestmark = pytest.mark.django_db


@pytest.fixture
def model(demo_model_dir: Path) -> ServedModel:
    return ServedModel(name=TEST_MODEL_NAME, path=demo_model_dir)


def chat_job(user: User, content: str, *, session_id: Any = None, max_tokens: int = 16) -> Job:
    return Job.objects.create(
        user=user,
        model=TEST_MODEL_NAME,
        kind=JobKind.CHAT,
        input={"messages": [{"role": "user", "content": content}]},
        params={"max_tokens": max_tokens, "temperature": 0.0},
        session_id=session_id,
    )


def prompt_text(model: ServedModel, job: Job) -> str:
    return model.info.decode(job_prompt(job=job, model=model).prompt_ids)


def test_second_turn_sees_the_first(model: ServedModel) -> None:
    user = User.objects.create(username="talker")
    session = session_create(user=user, title="rivers")
    first = chat_job(user, "Name a long river.", session_id=session.id)
    session_record_turn(job=first, messages=first.input["messages"], reply="The Nile is long.")
    second = chat_job(user, "How long is it?", session_id=session.id)
    text = prompt_text(model, second)
    assert text.index("Name a long river.") < text.index("The Nile is long.") < text.index("How long is it?")
    assert list(Message.objects.filter(session=session).values_list("role", flat=True)) == [
        "user",
        "assistant",
    ]


def test_history_is_trimmed_to_the_context_window_newest_kept(model: ServedModel) -> None:
    user = User.objects.create(username="chatty")
    session = session_create(user=user)
    for i in range(40):
        job = chat_job(user, f"Question number {i}: " + "tell me more " * 8, session_id=session.id)
        session_record_turn(
            job=job, messages=job.input["messages"], reply=f"Answer number {i}. " + "more " * 8
        )
    context = model.info.context_length
    latest = chat_job(user, "Summarise.", session_id=session.id, max_tokens=context // 2)
    plan = job_prompt(job=latest, model=model)
    assert len(plan.prompt_ids) <= context - context // 2
    text = model.info.decode(plan.prompt_ids)
    assert "Answer number 39." in text and "Summarise." in text  # the newest turn and the request
    assert "Question number 0:" not in text  # the oldest did not fit


def test_profile_goes_into_the_system_prompt(model: ServedModel) -> None:
    user = User.objects.create(username="profiled")
    profile_update(user=user, language="French", role="geologist", interests="rivers, {{ secrets }}")
    text = prompt_text(model, chat_job(user, "Hello"))
    assert "Preferred language: French" in text and "Role: geologist" in text
    assert "{{ secrets }}" in text  # a value, verbatim: never rendered as a template
