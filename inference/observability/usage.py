"""What a job's end is counted as: its outcome in the metrics and the console's series, and its
usage and cost in `UsageDaily` (one upsert per job; totals are sums over the job rows).

Called once per job, by whichever path ended it (the worker, the reconciler, a cancel)."""

from __future__ import annotations

import csv
import json
import logging
import uuid
from collections.abc import Iterable
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.db import connection
from django.db.models import Sum

from inference.models import Job, JobStatus, UsageDaily
from inference.observability.recording import record_request_end, record_usage
from inference.versions.registry import version_by_id

logger = logging.getLogger(__name__)

MILLION = Decimal(1_000_000)
COST_PLACES = Decimal("0.000001")

_UPSERT = f"""
INSERT INTO {UsageDaily._meta.db_table}
    (day, user_id, api_key_id, policy, model, version, requests, failed, prompt_tokens, completion_tokens,
     cached_tokens, cost)
VALUES (%s, %s, %s, %s, %s, %s, 1, %s, %s, %s, %s, %s)
ON CONFLICT ON CONSTRAINT usage_daily_unique DO UPDATE SET
    requests = {UsageDaily._meta.db_table}.requests + 1,
    failed = {UsageDaily._meta.db_table}.failed + EXCLUDED.failed,
    prompt_tokens = {UsageDaily._meta.db_table}.prompt_tokens + EXCLUDED.prompt_tokens,
    completion_tokens = {UsageDaily._meta.db_table}.completion_tokens + EXCLUDED.completion_tokens,
    cached_tokens = {UsageDaily._meta.db_table}.cached_tokens + EXCLUDED.cached_tokens,
    cost = {UsageDaily._meta.db_table}.cost + EXCLUDED.cost
"""  # noqa: S608 - the table name is ours; values are parameters


def job_cost(
    *, prompt_tokens: int, completion_tokens: int, cache_hit: bool, price_in: Decimal, price_out: Decimal
) -> Decimal:
    """Prompt tokens at the input price; completion tokens at the output price unless they came
    from the result cache (nothing was generated)."""
    generated = 0 if cache_hit else completion_tokens
    cost = (Decimal(prompt_tokens) * price_in + Decimal(generated) * price_out) / MILLION
    # As stored (6 places): a day's total is then exactly the sum of its jobs' costs.
    return cost.quantize(COST_PLACES, rounding=ROUND_HALF_UP)


def job_ended(*, job_id: uuid.UUID | str) -> None:
    """Count a job that just reached a terminal status. Never raises: accounting must not
    fail a job."""
    try:
        job = (
            Job.objects.select_related("user")
            .only(
                "id",
                "user__username",
                "user_id",
                "api_key_id",
                "admission",
                "model",
                "model_version_id",
                "status",
                "finish_reason",
                "prompt_tokens",
                "completion_tokens",
                "params",
                "cache_hit",
                "finished_at",
                "queued_at",
            )
            .get(id=job_id)
        )
    except Job.DoesNotExist:
        return
    try:
        version = version_by_id(job.model_version_id, job.model)
        label = version.label if version is not None else "default"
        record_request_end(model=job.model, version=label, status=job.status, reason=job.finish_reason)
        # n > 1: the prompt was computed once for all the request's choices, billed once.
        prompt = 0 if job.params.get("choice") else int(job.prompt_tokens or 0)
        completion = int(job.completion_tokens or 0)
        record_usage(user=job.user.username, key=str(job.api_key_id or "-"), tokens=prompt + completion)
        cost = job_cost(
            prompt_tokens=prompt,
            completion_tokens=completion,
            cache_hit=job.cache_hit,
            price_in=version.price_input if version is not None else Decimal(0),
            price_out=version.price_output if version is not None else Decimal(0),
        )
        day = (job.finished_at or job.queued_at).date()
        policy = str((job.admission or {}).get("policy", ""))[:100]
        with connection.cursor() as cursor:
            cursor.execute(
                _UPSERT,
                [
                    day, job.user_id, job.api_key_id, policy, job.model, label,
                    1 if job.status == JobStatus.FAILED else 0,
                    prompt, completion, completion if job.cache_hit else 0, cost,
                ],
            )  # fmt: skip
    except Exception:
        logger.warning("could not count the end of job %s", job_id, exc_info=True)


GROUPS = ("day", "model", "key", "version", "policy")


def usage_summary(
    *, user_id: int | None, start: date, end: date, group_by: str = "day"
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Usage between two days (both included) by ``group_by`` (day, model, key, version or
    policy), and the totals; ``user_id=None``: every user (staff views)."""
    rows = UsageDaily.objects.filter(day__gte=start, day__lte=end)
    if user_id is not None:
        rows = rows.filter(user_id=user_id)
    sums = {
        "requests": Sum("requests"),
        "failed": Sum("failed"),
        "prompt_tokens": Sum("prompt_tokens"),
        "completion_tokens": Sum("completion_tokens"),
        "cached_tokens": Sum("cached_tokens"),
        "cost": Sum("cost"),
    }
    columns = {
        "day": ["day"],
        "model": ["model"],
        "key": ["api_key_id", "api_key__name", "api_key__prefix"],
        "version": ["model", "version"],
        "policy": ["policy"],
    }[group_by]
    grouped = rows.values(*columns).annotate(**sums).order_by(*columns)

    def shaped(values: dict[str, Any]) -> dict[str, Any]:
        prompt, completion = int(values["prompt_tokens"] or 0), int(values["completion_tokens"] or 0)
        return {
            "requests": int(values["requests"] or 0),
            "failed": int(values["failed"] or 0),
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "cached_tokens": int(values["cached_tokens"] or 0),
            "cost": str(values["cost"] or Decimal(0)),
        }

    data = []
    for values in grouped:
        group: dict[str, Any]
        if group_by == "day":
            group = {"day": values["day"].isoformat()}
        elif group_by == "key":
            key_id = values["api_key_id"]
            group = {
                "api_key": {
                    "id": key_id,
                    "name": values["api_key__name"],
                    "prefix": values["api_key__prefix"],
                }
                if key_id is not None
                else None
            }
        elif group_by == "version":
            group = {"model": values["model"], "version": values["version"]}
        else:
            group = {group_by: values[group_by]}
        data.append({**group, **shaped(values)})
    return data, shaped(rows.aggregate(**sums))


CSV_COLUMNS = (
    "day", "user", "api_key", "policy", "model", "version", "requests", "failed", "prompt_tokens",
    "completion_tokens", "cached_tokens", "cost",
)  # fmt: skip


def usage_csv(rows: Iterable[UsageDaily], out: Any) -> None:
    """Write usage rows as CSV (one line per row, the admin's columns) to a file-like ``out``."""
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(
            [
                row.day.isoformat(), row.user.get_username(),
                f"{row.api_key.name or 'key'} ({row.api_key.prefix})" if row.api_key is not None else "",
                row.policy, row.model, row.version, row.requests, row.failed, row.prompt_tokens,
                row.completion_tokens, row.cached_tokens, row.cost,
            ]
        )  # fmt: skip


def usage_daily_chart(rows: Any) -> str:
    """Daily totals of a (filtered) queryset as unfold chart data (JSON): tokens and cost."""
    totals = list(
        rows.order_by().values("day").annotate(
            prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"), cost=Sum("cost")
        ).order_by("day")
    )  # fmt: skip
    return json.dumps(
        {
            "labels": [t["day"].isoformat() for t in totals],
            "datasets": [
                {"label": "prompt tokens", "data": [int(t["prompt"] or 0) for t in totals],
                 "backgroundColor": "#2563eb", "borderColor": "#2563eb", "stack": "tokens"},
                {"label": "completion tokens", "data": [int(t["completion"] or 0) for t in totals],
                 "backgroundColor": "#9333ea", "borderColor": "#9333ea", "stack": "tokens"},
                {"label": "cost", "data": [float(t["cost"] or 0) for t in totals], "type": "line",
                 "yAxisID": "cost", "borderColor": "#16a34a", "backgroundColor": "#16a34a"},
            ],
        }
    )  # fmt: skip
