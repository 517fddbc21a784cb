"""The openai backend against real OpenAI-compatible servers: two more Sluice web processes
(same database, Redis and model worker as `live`) are the upstream replicas of a version
"remote", which the versions worker serves; a third web process, whose default model is
"remote", is the gateway in front (so TGI's `/generate`, which has no model field, reaches it).

Covered: every client protocol through the upstream (OpenAI SDK, TGI's client, Responses,
WebSocket) with the same greedy text as the upstream gives directly, usage, text mode, cancel
reaching the upstream's job, retries with nothing listening, least-outstanding spread under
concurrent load, a replica killed mid-stream (that job fails cleanly, the next ones go to the
other replica) and coming back after its cooldown.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from django.test import Client
from text_generation import Client as TgiClient
from websockets.sync.client import connect

from config.processes import ServerProcess, free_port, wait_until, web_process
from inference.core.redis import get_redis
from inference.models import Job, JobStatus, ModelVersion
from inference.versions.replicas import read_replicas
from tests.conftest import TEST_MODEL_NAME, ApiUser, Live, child_env
from tests.support import versions as versions_support
from tests.support.metrics import scrape, value
from tests.support.versions import REMOTE, complete, create, loaded, submit_job

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROMPT = "The river"


@dataclass
class Replicas:
    urls: list[str]
    webs: list[ServerProcess]


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def replicas(
    live: Live, test_database_url: str, demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    log_dir = tmp_path_factory.mktemp("replica-logs")
    webs, urls = [], []
    for _ in range(2):
        port = free_port()
        webs.append(web_process(child_env(test_database_url, demo_model_dir), port, log_dir).start())
        urls.append(f"http://127.0.0.1:{port}")
    wait_until(lambda: all(_up(url) for url in urls), timeout=60, what="the replicas")
    yield Replicas(urls, webs)
    for web in webs:
        web.stop()


@pytest.fixture(scope="module")
def front(
    live: Live, test_database_url: str, demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The gateway in front: its default model is "remote" (TGI routes have no model field)."""
    port = free_port()
    env = child_env(
        test_database_url, demo_model_dir, SLUICE_MODEL_NAME=REMOTE, SLUICE_REGISTRY_CACHE_S="0.5"
    )
    web = web_process(env, port, tmp_path_factory.mktemp("front-logs")).start()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _up(url), timeout=60, what="the front web server")
    yield url
    web.stop()


def openai_version(
    urls: list[str], upstream: ApiUser, demo_model_dir: Path, *, label: str = "oa", **extra: Any
) -> ModelVersion:
    # The upstream's key reaches the worker as a mounted secret (SLUICE_TEST_UPSTREAM_KEY_FILE).
    versions_support.upstream_key_file.write_text(upstream.key + "\n")
    version = create(
        label,
        demo_model_dir,
        name=REMOTE,
        backend="openai",
        url=urls[0],
        replica_urls="\n".join(urls[1:]),
        upstream_model=TEST_MODEL_NAME,
        api_key_env="SLUICE_TEST_UPSTREAM_KEY",
        **extra,
    )
    loaded(version)
    return version


def _sdk(base: str, user: ApiUser) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=user.key, max_retries=0, timeout=60)


def _job(job_id: str) -> Job:
    return Job.objects.get(id=job_id.removeprefix("cmpl-").removeprefix("chatcmpl-").removeprefix("resp_"))


def _replica_state(version: ModelVersion, url: str) -> str:
    states = read_replicas(get_redis(), f"{version.served_name}@{version.label}", [url])
    return states[0].state


def test_every_protocol_through_two_replicas_matches_the_upstream(
    live: Live,
    clean_versions: None,
    replicas: Replicas,
    front: str,
    make_api_user: Callable[..., ApiUser],
    demo_model_dir: Path,
) -> None:
    upstream, client = make_api_user(), make_api_user()
    version = openai_version(replicas.urls, upstream, demo_model_dir)
    direct = _sdk(replicas.urls[0], upstream).completions.create(
        model=TEST_MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=0, logprobs=2
    )
    expected = direct.choices[0].text
    assert expected

    # OpenAI completions, streamed through the front: the same greedy text, token for token.
    sdk = _sdk(front, client)
    chunks = list(
        sdk.completions.create(
            model=REMOTE,
            prompt=PROMPT,
            max_tokens=12,
            temperature=0,
            logprobs=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == expected
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == direct.usage.completion_tokens  # type: ignore[union-attr]
    assert usage.prompt_tokens == direct.usage.prompt_tokens  # type: ignore[union-attr]
    # Log-probabilities came through exactly (the upstream's, by token id).
    streamed_lps = [
        lp
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for lp in c.choices[0].logprobs.token_logprobs or []
    ]
    assert streamed_lps == pytest.approx(direct.choices[0].logprobs.token_logprobs, abs=1e-5)  # type: ignore[union-attr]
    job = _job(chunks[0].id)
    assert job.status == JobStatus.SUCCEEDED and job.model_version_id == version.pk
    assert job.served_by in replicas.urls
    timings = httpx.get(f"{front}/api/v1/jobs/{job.id}", headers=client.headers).json()["timings"]
    assert timings["served_by"] == job.served_by
    # The upstream ran it as a job of its own, for the upstream's user.
    assert Job.objects.filter(user=upstream.user, source="openai.completions").count() >= 2

    # Chat, streamed: rendered here with the version's template, run there.
    chat = sdk.chat.completions.create(
        model=REMOTE,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    chat_text = "".join(c.choices[0].delta.content or "" for c in chat if c.choices)
    assert chat_text

    # Responses.
    response = sdk.responses.create(model=REMOTE, input="Good morning", max_output_tokens=8, temperature=0)
    assert response.output_text and _job(response.id).served_by in replicas.urls

    # TGI's own client on /generate (the front's default model is the openai version).
    tgi = TgiClient(front, headers=client.headers, timeout=60)
    generated = tgi.generate(PROMPT, max_new_tokens=12)
    assert generated.generated_text == expected
    assert generated.details.generated_tokens == direct.usage.completion_tokens  # type: ignore[union-attr]

    # WebSocket.
    with connect(f"{front.replace('http', 'ws')}/ws/v1/jobs/", additional_headers=client.headers) as ws:
        assert json.loads(ws.recv(timeout=30)) == {"type": "ready"}
        ws.send(
            json.dumps(
                {"type": "request", "model": REMOTE, "prompt": PROMPT, "max_tokens": 12, "temperature": 0}
            )
        )
        accepted = json.loads(ws.recv(timeout=30))
        assert accepted["type"] == "job", accepted
        pieces = []
        while True:
            message = json.loads(ws.recv(timeout=60))
            if message["type"] == "token":
                pieces.append(message["text"])
            elif message["type"] == "end":
                break
    assert message["status"] == "succeeded" and "".join(pieces) == expected

    # The admin shows both replicas in rotation.
    assert {s.state for s in read_replicas(get_redis(), f"{REMOTE}@oa", replicas.urls)} == {"closed"}


def test_text_mode_keeps_the_text_and_the_upstream_usage(
    live: Live,
    clean_versions: None,
    replicas: Replicas,
    make_api_user: Callable[..., ApiUser],
    demo_model_dir: Path,
) -> None:
    upstream, client = make_api_user(), make_api_user()
    openai_version(replicas.urls[:1], upstream, demo_model_dir, label="text", token_ids=False)
    direct = _sdk(replicas.urls[0], upstream).completions.create(
        model=TEST_MODEL_NAME, prompt=PROMPT, max_tokens=10, temperature=0
    )
    through = _sdk(live.base_url, client).completions.create(
        model=REMOTE, prompt=PROMPT, max_tokens=10, temperature=0
    )
    assert through.choices[0].text == direct.choices[0].text
    assert through.usage.completion_tokens == direct.usage.completion_tokens  # type: ignore[union-attr]


def test_sampling_controls_constraints_and_tools_go_upstream(
    live: Live,
    clean_versions: None,
    replicas: Replicas,
    make_api_user: Callable[..., ApiUser],
    demo_model_dir: Path,
) -> None:
    """Token-id mode: each control reaches the upstream in vLLM's form and has its effect
    there; usage is exact, every generated token counted (also one that adds no text, under
    ignore_eos); tools are rendered and parsed here. Text mode refuses what it cannot carry."""
    upstream, client = make_api_user(), make_api_user()
    openai_version(replicas.urls[:1], upstream, demo_model_dir, label="ctl")
    sdk: Any = _sdk(live.base_url, client)
    forced = sdk.completions.create(
        model=REMOTE, prompt=PROMPT, max_tokens=4, temperature=0, logit_bias={"300": 100}
    )
    assert forced.usage.completion_tokens == 4
    assert (
        _job(forced.id).output_text
        == _sdk(replicas.urls[0], upstream)
        .completions.create(
            model=TEST_MODEL_NAME, prompt=PROMPT, max_tokens=4, temperature=0, logit_bias={"300": 100}
        )
        .choices[0]
        .text
    )
    choice = sdk.completions.create(
        model=REMOTE, prompt=PROMPT, max_tokens=10, seed=1, extra_body={"guided_choice": ["north", "south"]}
    )
    assert choice.choices[0].text in ("north", "south")
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    structured = sdk.chat.completions.create(
        model=REMOTE,
        messages=[{"role": "user", "content": "Status?"}],
        max_tokens=20,
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    )
    assert json.loads(structured.choices[0].message.content or "") in ({"ok": True}, {"ok": False})
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {
                "type": "object",
                "properties": {"x": {"enum": ["a", "b"]}},
                "required": ["x"],
                "additionalProperties": False,
            },
        },
    }
    called = sdk.chat.completions.create(
        model=REMOTE,
        messages=[{"role": "user", "content": "Call f."}],
        tools=[tool],
        tool_choice="required",
        max_tokens=60,
    )
    call = (called.choices[0].message.tool_calls or [])[0]
    assert (
        called.choices[0].finish_reason == "tool_calls" and json.loads(call.function.arguments)["x"] in "ab"
    )
    # Every token counted, one that adds no text too (the end of sequence, under ignore_eos).
    for count in (5, 12):
        exact = sdk.completions.create(
            model=REMOTE,
            prompt=PROMPT,
            max_tokens=count,
            temperature=0,
            extra_body={"ignore_eos": True, "min_tokens": count},
        )
        assert exact.usage.completion_tokens == count, count


def test_text_mode_refuses_what_it_cannot_carry(
    live: Live,
    clean_versions: None,
    replicas: Replicas,
    make_api_user: Callable[..., ApiUser],
    demo_model_dir: Path,
) -> None:
    """By name, before a job exists: a text upstream's tokenizer is not this version's."""
    upstream, client = make_api_user(), make_api_user()
    openai_version(replicas.urls[:1], upstream, demo_model_dir, label="txt", token_ids=False)
    sdk = _sdk(live.base_url, client)
    before = Job.objects.count()
    for extra, param in (({"min_tokens": 2}, "min_tokens"), ({"guided_choice": ["a"]}, "response_format")):
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.completions.create(model=REMOTE, prompt=PROMPT, max_tokens=4, extra_body=extra)
        assert refused.value.code == "unsupported_parameter" and refused.value.param == param
    assert Job.objects.count() == before


def test_cancel_closes_the_upstream_job(
    live: Live,
    clean_versions: None,
    replicas: Replicas,
    make_api_user: Callable[..., ApiUser],
    demo_model_dir: Path,
) -> None:
    upstream, client = make_api_user(), make_api_user()
    openai_version(replicas.urls[:1], upstream, demo_model_dir, label="cancel")
    submitted = submit_job(live, client, max_tokens=400)
    upstream_jobs = Job.objects.filter(user=upstream.user)
    wait_until(
        lambda: upstream_jobs.filter(status=JobStatus.RUNNING).exists(), timeout=30, what="the upstream job"
    )
    httpx.post(f"{live.base_url}/api/v1/jobs/{submitted['id']}/cancel", headers=client.headers)
    wait_until(lambda: Job.objects.get(id=submitted["id"]).is_terminal, timeout=20, what="the cancel")
    assert Job.objects.get(id=submitted["id"]).status == JobStatus.CANCELLED
    # The closed stream reached the upstream: its job ends well before its 400 tokens.
    wait_until(lambda: upstream_jobs.get().is_terminal, timeout=20, what="the upstream job to end")
    assert (upstream_jobs.get().completion_tokens or 0) < 400


def test_retries_then_fails_clearly_when_nothing_listens(
    live: Live, clean_versions: None, make_api_user: Callable[..., ApiUser], demo_model_dir: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    version = openai_version([dead], make_api_user(), demo_model_dir, label="dead")
    client = make_api_user()
    started = time.monotonic()
    response = complete(live, client, model=REMOTE, max_tokens=4)
    assert response.status_code == 500, response.text
    message = response.json()["error"]["message"]
    assert "after 3 attempt(s)" in message and ("Connect" in message or "rotation" in message), message
    assert time.monotonic() - started >= 0.6  # backoff 0.2 s, then 0.4 s
    # Failed requests and probes took the replica out of rotation.
    wait_until(
        lambda: _replica_state(version, dead) != "closed", timeout=10, what="the replica to leave rotation"
    )


def _long(live: Live, user: ApiUser, max_tokens: int, out: list[tuple[int, str]]) -> None:
    response = complete(live, user, model=REMOTE, max_tokens=max_tokens, ignore_eos=True)
    out.append((response.status_code, response.json().get("id", response.text)))


def test_least_outstanding_spread_across_two_replicas(
    live: Live,
    clean_versions: None,
    replicas: Replicas,
    make_api_user: Callable[..., ApiUser],
    demo_model_dir: Path,
) -> None:
    upstream = make_api_user()
    version = openai_version(replicas.urls, upstream, demo_model_dir, label="spread")
    users = [make_api_user() for _ in range(8)]
    results: list[tuple[int, str]] = []
    # Long enough that a scrape of /metrics (slower late in a busy suite) lands while they run.
    threads = [threading.Thread(target=_long, args=(live, u, 320, results)) for u in users]
    for thread in threads:
        thread.start()
    seen_busy: set[str] = set()

    def busy() -> bool:
        # /metrics (every web process's fleet view) shows the load in flight per replica.
        for url in replicas.urls:
            if (
                value(
                    scrape(live.base_url),
                    "sluice_upstream_outstanding_requests",
                    version="spread",
                    replica=url,
                )
                > 0
            ):
                seen_busy.add(url)
        return bool(seen_busy) or not any(t.is_alive() for t in threads)

    wait_until(busy, timeout=120, what="load on the replicas in /metrics")
    for thread in threads:
        thread.join()
    assert [status for status, _ in results] == [200] * 8, results
    assert seen_busy, "no load seen in /metrics"
    # Eight equal requests at once: least-outstanding alternates between the two replicas.
    spread = Counter(_job(job_id).served_by for _, job_id in results)
    assert set(spread) == set(replicas.urls) and max(spread.values()) - min(spread.values()) <= 2, spread

    # Everything given back once the requests ended.
    def given_back() -> bool:
        states = read_replicas(get_redis(), f"{REMOTE}@spread", replicas.urls)
        left[:] = [(s.url, s.outstanding_requests, s.outstanding_tokens) for s in states]
        return all(s.outstanding_requests == 0 and s.outstanding_tokens == 0 for s in states)

    left: list[Any] = []
    try:
        wait_until(given_back, timeout=10, what="outstanding load back to zero")
    except TimeoutError:
        pytest.fail(f"load left: {left}")
    # The admin shows each replica's health and load; the console its requests and TTFT.
    staff = _staff()
    page = staff.get(f"/admin/inference/modelversion/{version.pk}/change/").content.decode()
    assert 'id="replicas"' in page and all(url in page for url in replicas.urls)
    assert "2/2 in rotation" in staff.get("/admin/inference/modelversion/").content.decode()

    last: list[Any] = []

    def console() -> bool:
        snapshot = staff.get("/dashboard/snapshot").json()
        last[:] = [snapshot.get("upstreams"), snapshot.get("alerts")]
        rows = [r for r in snapshot.get("upstreams", []) if r["version"] == f"{REMOTE}@spread"]
        return (
            {r["replica"] for r in rows} == set(replicas.urls)
            # Each ended by the upstream (ok) or closed here at max_tokens (closed), none failed.
            and sum(r["requests"].get("ok", 0) + r["requests"].get("closed", 0) for r in rows) >= 8
            and not any(r["requests"].get("error") for r in rows)
            and all(r["ttft"]["n"] > 0 and r["state"] == "closed" for r in rows)
        )

    try:
        wait_until(console, timeout=30, what="the console's upstream table")
    except TimeoutError:
        pytest.fail(f"console upstreams: {last}")


def _staff() -> Client:
    from django.contrib.auth.models import User

    client = Client()
    client.force_login(User.objects.create_superuser("ops", "ops@example.com", "pw-not-used"))
    return client


def test_a_replica_killed_mid_stream_fails_its_job_then_traffic_moves_and_it_comes_back(
    live: Live,
    clean_versions: None,
    replicas: Replicas,
    make_api_user: Callable[..., ApiUser],
    demo_model_dir: Path,
) -> None:
    upstream, client = make_api_user(), make_api_user()
    version = openai_version(replicas.urls, upstream, demo_model_dir, label="kill")
    submitted = submit_job(live, client, max_tokens=480)
    job_id = submitted["id"]
    stream = f"sluice:job:{{{job_id}}}:events"
    wait_until(
        lambda: any(f.get(b"t") == b"tok" for _, f in get_redis().xrange(stream)),  # type: ignore[union-attr]
        timeout=30,
        interval=0.005,
        what="first tokens",
    )
    # The replica holding it is the one with a request outstanding (nothing else runs).
    busy = [
        s.url for s in read_replicas(get_redis(), f"{REMOTE}@kill", replicas.urls) if s.outstanding_requests
    ]
    assert len(busy) == 1, busy
    victim_url = busy[0]
    victim = replicas.webs[replicas.urls.index(victim_url)]
    other_url = next(url for url in replicas.urls if url != victim_url)
    assert victim.process is not None
    victim.process.send_signal(signal.SIGSTOP)  # no more bytes: a stream cut mid-way
    time.sleep(0.5)
    victim.kill()
    wait_until(lambda: Job.objects.get(id=job_id).is_terminal, timeout=30, what="the job to fail")
    job = Job.objects.get(id=job_id)
    assert job.status == JobStatus.FAILED and "mid-stream" in job.error, job.error
    # The next requests all succeed, on the other replica.
    served = []
    for _ in range(4):
        response = complete(live, client, model=REMOTE, max_tokens=4)
        assert response.status_code == 200, response.text
        served.append(_job(response.json()["id"]).served_by)
    assert set(served) == {other_url}
    wait_until(lambda: _replica_state(version, victim_url) != "closed", timeout=10, what="the victim out")
    # It comes back: restarted, past its cooldown, a trial request closes its breaker.
    victim.start()
    wait_until(lambda: _up(victim_url), timeout=60, what="the victim to restart")

    def back() -> bool:
        response = complete(live, client, model=REMOTE, max_tokens=2)
        assert response.status_code == 200, response.text
        return _replica_state(version, victim_url) == "closed"

    wait_until(back, timeout=60, interval=0.5, what="the victim back in rotation")
    assert value(scrape(live.base_url), "sluice_upstream_healthy", version="kill", replica=victim_url) == 1.0
