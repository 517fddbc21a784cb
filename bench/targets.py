"""The engine issue's targets, checked against what this run measured (printed last by
`make bench`, stored as ``targets`` in the JSON). A target whose inputs this run did not
measure (a part left out with ``--only``) says so instead of passing or failing."""

from __future__ import annotations

from typing import Any

NOT_MEASURED = "not measured in this run"


def _level(result: dict[str, Any], system: str, concurrency: int) -> dict[str, Any] | None:
    for row in (result.get("vllm") or {}).get("levels", []):
        if row["system"] == system and row["concurrency"] == concurrency:
            return dict(row)
    return None


def _raw(result: dict[str, Any], batch: int) -> dict[str, Any] | None:
    """The ~110M Llama's raw packed backend at ``batch`` (the engine part)."""
    for model in result.get("models", []):
        if model.get("model", "").startswith("llama-12x768"):
            for row in model.get("raw", []):
                if row["method"] == "backend" and row["batch"] == batch:
                    return dict(row)
    return None


def _row(target: str, measured: str, met: bool | None) -> dict[str, Any]:
    verdict = "-" if met is None else ("met" if met else "missed")
    return {"target": target, "measured": measured, "verdict": verdict}


def evaluate(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    ratios = {r["concurrency"]: r for r in (result.get("vllm") or {}).get("ratios", [])}
    speed = [ratios[c]["output_tokens_per_s_sluice_over_vllm"] for c in (16, 64) if c in ratios]
    rows.append(
        _row(
            "Sluice >= 1.5x vLLM-CPU tokens/s at c16 and c64",
            " / ".join(f"{v}x" for v in speed) if len(speed) == 2 else NOT_MEASURED,
            all(v >= 1.5 for v in speed) if len(speed) == 2 else None,
        )
    )
    p99 = {c: r["ttft_p99_ms_sluice_over_vllm"] for c, r in ratios.items()}
    rows.append(
        _row(
            "TTFT p99 lower than vLLM's at every level",
            ", ".join(f"c{c} {v}x" for c, v in sorted(p99.items())) if p99 else NOT_MEASURED,
            all(v is not None and v < 1 for v in p99.values()) if p99 else None,
        )
    )
    c64, raw64 = _level(result, "sluice", 64), _raw(result, 64)
    if c64 and raw64:
        share = c64["output_tokens_per_s"] / raw64["total_tokens_per_s"]
        rows.append(
            _row(
                "Sluice c64 >= 85% of raw prefill+decode at batch 64",
                f"{c64['output_tokens_per_s']} / {raw64['total_tokens_per_s']} tok/s = {share:.0%}",
                share >= 0.85,
            )
        )
    else:
        rows.append(_row("Sluice c64 >= 85% of raw prefill+decode at batch 64", NOT_MEASURED, None))
    c16, raw1, raw16 = _level(result, "sluice", 16), _raw(result, 1), _raw(result, 16)
    if c16 and raw1 and raw16:
        bound = raw1["prefill_ms"] + 2 * raw16["step_ms"]
        rows.append(
            _row(
                "under load (c16) TTFT p50 <= own prefill + 2 steps",
                f"{c16['ttft_p50_ms']} ms vs {bound:.1f} ms",
                c16["ttft_p50_ms"] <= bound,
            )
        )
        rows.append(
            _row(
                "under load (c16) ITL p99 <= 3x the decode step",
                f"{c16['itl_p99_ms']} ms vs 3 x {raw16['step_ms']} ms",
                c16["itl_p99_ms"] <= 3 * raw16["step_ms"],
            )
        )
    else:
        rows.append(_row("under load TTFT p50 <= own prefill + 2 steps (HTTP)", NOT_MEASURED, None))
    fused = (result.get("prefix") or {}).get("fused") or []
    if fused:
        ratio = fused[0]["itl_during_wave_over_decode_step"]
        rows.append(
            _row(
                f"engine: longest ITL in a prefill wave <= 3x the step (budget {fused[0]['step_tokens']})",
                f"{ratio}x",
                ratio <= 3,
            )
        )
    turn3 = (result.get("prefix") or {}).get("turn3_ttft_cached_over_uncached")
    rows.append(
        _row(
            "session turn 3 (2k history) TTFT <= 25% of uncached",
            f"{turn3:.0%}" if turn3 is not None else NOT_MEASURED,
            turn3 <= 0.25 if turn3 is not None else None,
        )
    )
    errors = {c: (_level(result, "sluice", c) or {}).get("errors") for c in (64, 128)}
    measured = {c: e for c, e in errors.items() if e is not None}
    rows.append(
        _row(
            "c64 and c128 with 0 errors",
            ", ".join(f"c{c}: {e} errors" for c, e in measured.items()) if measured else NOT_MEASURED,
            all(e == 0 for e in measured.values()) if len(measured) == 2 else None,
        )
    )
    sticky = (result.get("affinity") or {}).get("later_turns_ttft_on_over_off")
    rows.append(
        _row(
            "session affinity: turns 2+ TTFT with / without (two workers)",
            f"{sticky}x" if sticky is not None else NOT_MEASURED,
            None,
        )
    )
    return rows
