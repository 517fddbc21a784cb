"""Sampling one token per row of a batch's logits: greedy, temperature, top-k and top-p, each
row's random draws from its own generator (a seeded sequence samples the same tokens whatever
else is in the batch)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from inference.backends.base import Sampled
from inference.sampling_params import SamplingParams


def sample_batch(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    process: Callable[[torch.Tensor], dict[int, Exception]] | None = None,
) -> list[Sampled | Exception]:
    """Sample one token per row, vectorized over the batch.

    Every random draw comes from the row's own generator (one uniform number per row and
    step), and all other arithmetic is row-wise, so a seeded sequence samples the same
    tokens whatever else is in the batch.

    ``process`` changes the float32 logits in place before a token is chosen (penalties, bias,
    min_tokens, grammar masks: logits.py, grammar.py) and returns the rows that failed. The
    reported log-probabilities are the model's own, before processing (vLLM's default
    ``raw_logprobs``): what the model thought of the token, whatever constrained the choice.
    """
    logits = logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    failed: dict[int, Exception] = process(logits) if process is not None else {}
    sampled_rows = [row for row, param in enumerate(params) if not param.greedy]
    if len(sampled_rows) < len(params):
        # ``max`` over a dim, not ``argmax``: the same first-maximum index, in 0.7 ms rather
        # than 1.7 for a [64, 32000] float32 batch on the CPU.
        tokens = logits.max(dim=-1).indices
    else:
        tokens = torch.zeros(len(params), dtype=torch.long, device=logits.device)
    sampled_rows = [row for row in sampled_rows if row not in failed]
    if sampled_rows:
        for row, outcome in zip(
            sampled_rows, sample_rows(logits, sampled_rows, params, generators), strict=True
        ):
            if isinstance(outcome, Exception):
                failed[row] = outcome
            else:
                tokens[row] = outcome
    chosen = tokens.tolist()
    chosen_logprobs = logprobs.gather(1, tokens[:, None])[:, 0].tolist()
    top: list[tuple[tuple[int, float], ...]] = [()] * len(params)
    wanted = max((param.top_logprobs for param in params), default=0)
    if wanted > 0:
        values, indices = torch.topk(logprobs, min(wanted, logprobs.shape[-1]), dim=-1)
        values_l, indices_l = values.tolist(), indices.tolist()
        for row, param in enumerate(params):
            if param.top_logprobs:
                count = param.top_logprobs
                top[row] = tuple(
                    (int(i), float(v))
                    for i, v in zip(indices_l[row][:count], values_l[row][:count], strict=True)
                )
    return [
        failed[row]
        if row in failed
        else Sampled(token_id=int(chosen[row]), logprob=float(chosen_logprobs[row]), top=top[row])
        for row in range(len(params))
    ]


_TOP_P_WINDOW = 1024  # nucleus search starts in the top 1024 tokens (exact: falls back to a full sort)


def sample_rows(
    logits: torch.Tensor,
    rows: list[int],
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> list[int | Exception]:
    """Inverse-CDF sampling with temperature, top-k and top-p for the given rows, vectorized.

    Rows without truncation sample from the cumulative sum in vocabulary order (no sort).
    Truncated rows work in their top-``window`` tokens (``topk`` is sorted); a top-p row whose
    nucleus does not fit in that window is redone with a full sort, so the result is exact.
    """
    device = logits.device
    vocab = logits.shape[-1]
    temperature = torch.tensor([max(params[r].temperature, 1e-5) for r in rows], device=device)
    # Unnormalized probabilities exp((x - max) / T): sampling by inverse CDF needs no division
    # by their sum (the draw is scaled by each row's total instead).
    # Works in place on ``logits`` (the caller's copy) when every row is sampled.
    scaled = logits[rows] if len(rows) < logits.shape[0] else logits
    scaled.sub_(scaled.amax(dim=-1, keepdim=True)).div_(temperature[:, None]).exp_()
    probs = scaled
    # min_p, then typical_p, then top-k/top-p (vLLM's order for min_p; typical as transformers'
    # TypicalLogitsWarper), each only over the rows that ask for it.
    min_p = [params[r].min_p for r in rows]
    if any(value > 0.0 for value in min_p):
        # The most likely token's weight is exactly 1 here: the threshold is min_p itself.
        probs.mul_(probs >= torch.tensor(min_p, device=device)[:, None])
    typical = [i for i, r in enumerate(rows) if params[r].typical_p < 1.0]
    if typical:
        at = torch.tensor(typical, device=device)
        mass = torch.tensor([params[rows[i]].typical_p for i in typical], device=device)
        probs[at] = _typical(probs[at], mass)
    draws = torch.cat([torch.rand(1, generator=generators[r], device=device) for r in rows])
    top_k = torch.tensor([params[r].top_k if 0 < params[r].top_k < vocab else 0 for r in rows], device=device)
    top_p = torch.tensor([min(params[r].top_p, 1.0) for r in rows], device=device)
    tokens = torch.zeros(len(rows), dtype=torch.long, device=device)

    total = torch.ones(len(rows), device=device)  # probability mass sampled from, per row
    plain = ((top_k == 0) & (top_p >= 1.0)).nonzero()[:, 0]
    if plain.numel():
        weights = probs if plain.numel() == len(rows) else probs[plain].contiguous()
        picks, total[plain] = _inverse_cdf(weights, draws[plain])
        tokens[plain] = picks

    truncated = ((top_k > 0) | (top_p < 1.0)).nonzero()[:, 0]
    if truncated.numel():
        window = min(vocab, max(int(top_k[truncated].max()), _TOP_P_WINDOW))
        probs_t = probs[truncated]
        probs_t /= probs_t.sum(dim=-1, keepdim=True)  # top-p is a fraction of the whole mass
        values, order = torch.topk(probs_t, window, dim=-1)
        too_narrow = (top_k[truncated] == 0) & (values.sum(dim=-1) < top_p[truncated])
        if window < vocab and bool(too_narrow.any()):
            values, order = torch.sort(probs_t, dim=-1, descending=True)
            window = vocab
        positions = torch.arange(window, device=device)[None, :]
        k = torch.where(top_k[truncated] > 0, top_k[truncated], window)
        keep = positions < k[:, None]
        keep &= (values.cumsum(dim=-1) - values) < top_p[truncated][:, None]  # the first token always stays
        cdf = (values * keep).cumsum(dim=-1)
        total[truncated] = values.sum(dim=-1)
        picked = torch.searchsorted(cdf, (draws[truncated] * cdf[:, -1])[:, None], right=True).clamp(
            max=window - 1
        )
        tokens[truncated] = order.gather(1, picked)[:, 0]

    # NaN or infinite logits make the row's total mass non-finite (cheaper than scanning probs).
    invalid = (~torch.isfinite(total)).tolist()
    return [
        ValueError("sampling failed: the model produced invalid probabilities") if bad else int(token)
        for token, bad in zip(tokens.tolist(), invalid, strict=True)
    ]


def _typical(weights: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """Locally typical sampling's truncation (transformers' TypicalLogitsWarper) over rows of
    unnormalized weights: keep the tokens whose surprisal is closest to the row's entropy, in
    that order, until they hold ``mass`` of the probability (at least one token)."""
    p = weights / weights.sum(dim=-1, keepdim=True)
    logp = torch.log(p)
    entropy = -(p * logp).nansum(dim=-1, keepdim=True)
    distance = (-logp - entropy).abs()
    ordered, order = torch.sort(distance, dim=-1)
    cumulative = p.gather(1, order).cumsum(dim=-1)
    last = (cumulative < mass[:, None]).sum(dim=-1).clamp(max=weights.shape[-1] - 1)
    return weights * (distance <= ordered.gather(1, last[:, None]))


_CDF_BLOCK = 256


def _inverse_cdf(weights: torch.Tensor, draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index ``i`` per row with ``cdf[i-1] <= u * total < cdf[i]``, and each row's total.

    A full cumulative sum over a 32k vocabulary is the slowest part of sampling a batch; a
    two-level search (block sums, then one block) touches every weight once, in parallel.
    """
    rows, vocab = weights.shape
    size = _block_size(vocab)
    blocks = -(-vocab // size)
    if blocks * size == vocab:
        padded = weights.view(rows, blocks, size)  # no copy
    else:
        padded = torch.nn.functional.pad(weights, (0, blocks * size - vocab)).view(rows, blocks, size)
    block_cdf = padded.sum(dim=-1).cumsum(dim=-1)
    total = block_cdf[:, -1]
    target = (draws * total)[:, None]
    block = torch.searchsorted(block_cdf, target, right=True).clamp_(max=blocks - 1)  # [rows, 1]
    before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp(min=0)), torch.zeros_like(target))
    inner = padded.gather(1, block[:, :, None].expand(rows, 1, size))[:, 0].cumsum(dim=-1) + before
    offset = torch.searchsorted(inner, target, right=True).clamp_(max=size - 1)
    index = (block * size + offset)[:, 0].clamp_(max=vocab - 1)
    return index, total


def _block_size(vocab: int) -> int:
    """A block size near 256 that divides the vocabulary (no padding copy), else 256."""
    for size in range(256, 63, -1):
        if vocab % size == 0:
            return size
    return _CDF_BLOCK
