"""How many masked tokens each sampler step commits, and which (``sampling.md`` 1.3, 2.3, 2.6, 3.1).

- LLaDA: a per-block schedule fixed at the block's start (:func:`llada_num_transfer_tokens`).
- Dream: the count is recomputed every step from the current mask count and float32 timesteps
  (:func:`dream_timesteps`, :func:`dream_num_transfer_tokens`), truncated toward zero.
- Fast-dLLM: top-1 plus every eligible position at or above a confidence threshold
  (:func:`threshold_transfer_index`).
"""

from __future__ import annotations

import torch


def llada_num_transfer_tokens(mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA ``get_num_transfer_tokens`` (``sampling.md`` 1.3), vectorised.

    Each row's ``n`` masks are spread over ``steps`` steps: ``n // steps`` per step plus one extra
    for the first ``n % steps`` steps (10 masks over 4 steps gives ``[3, 3, 2, 2]``).

    Args:
        mask_index: ``[B, Lb]`` bool, True where the block holds the mask token.
        steps: steps of this block, ``>= 1``.

    Returns:
        ``[B, steps]`` int64 counts; each row sums to its mask count.
    """
    if steps <= 0:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if mask_index.dim() != 2:
        raise ValueError(f"mask_index must be 2-D [batch, block], got shape {tuple(mask_index.shape)}")
    mask_num = mask_index.sum(dim=1, keepdim=True)  # [B, 1] int64
    base = mask_num // steps
    remainder = mask_num % steps
    step_ids = torch.arange(steps, device=mask_index.device).unsqueeze(0)  # [1, steps]
    return base + (step_ids < remainder).to(torch.int64)


def llada_transfer_schedule(num_masks: int, steps: int) -> list[int]:
    """:func:`llada_num_transfer_tokens` of one row with ``num_masks`` masks, on the host (no tensor)."""
    if steps <= 0:
        raise ValueError(f"steps must be >= 1, got {steps}")
    base, remainder = divmod(num_masks, steps)
    return [base + (1 if i < remainder else 0) for i in range(steps)]


def dream_timesteps(steps: int, eps: float, device: torch.device | str | None = None) -> torch.Tensor:
    """Dream's ``torch.linspace(1, eps, steps + 1)`` in float32 (``sampling.md`` 2.3).

    torch.linspace itself is used on purpose: the per-step counts depend on its exact float32 values.
    """
    if steps <= 0:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(1, eps, steps + 1, device=device)


def dream_num_transfer_tokens(mask_index: torch.Tensor, timesteps: torch.Tensor, step: int, steps: int) -> int:
    """Tokens Dream commits per row at ``step`` (``sampling.md`` 2.4, 2.6).

    ``avg = mask_index.sum() / B`` (float32, the batch mean), then ``int(avg * (1 - s / t))``, or
    ``int(avg)`` at the last step; ``t = timesteps[step]``, ``s = timesteps[step + 1]``. Truncation makes
    the first step commit 0 tokens when ``steps == G``.

    Args:
        mask_index: ``[B, L]`` bool, the positions that may be committed this step.
        timesteps: ``[steps + 1]`` float32 from :func:`dream_timesteps`.
        step: 0-based step index.
        steps: number of steps of this schedule.
    """
    num_mask_token = mask_index.sum() / mask_index.shape[0]  # 0-dim float32 tensor
    if step < steps - 1:
        t = timesteps[step]
        s = timesteps[step + 1]
        return int(num_mask_token * (1 - s / t))
    return int(num_mask_token)


def dream_transfer_schedule(
    num_tokens: int, steps: int, eps: float = 1e-3, timesteps: torch.Tensor | None = None
) -> list[int]:
    """Per-step commit counts of one Dream row with ``num_tokens`` masks (``sampling.md`` 2.6).

    A dry run of :func:`dream_num_transfer_tokens`, assuming every step commits its full count
    (true for topk selection). ``num_tokens = steps = 32`` gives ``[0, 1, ..., 1, 2]``. ``timesteps``:
    the sampler's own (e.g. made on its device; moved to the CPU here), else :func:`dream_timesteps`.
    """
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
    timesteps = dream_timesteps(steps, eps) if timesteps is None else timesteps.cpu()
    remaining = num_tokens
    counts: list[int] = []
    for i in range(steps):
        mask_index = torch.zeros(1, max(num_tokens, 1), dtype=torch.bool)
        mask_index[0, :remaining] = True
        k = dream_num_transfer_tokens(mask_index, timesteps, i, steps)
        counts.append(k)
        remaining -= k
    return counts


def threshold_transfer_index(
    confidence: torch.Tensor, eligible: torch.Tensor, threshold: float, *, k: int | None = None
) -> torch.Tensor:
    """Fast-dLLM parallel-decoding rule (``sampling.md`` 3.1), per row, vectorised.

    Sort each row's eligible positions by confidence (``torch.topk`` over the full row, as the
    reference does), always keep the first, and keep each later one unless its confidence is
    ``< threshold``. Rows with no eligible position commit nothing.

    Args:
        confidence: ``[B, L]`` with ``-inf`` (or any value) at ineligible positions.
        eligible: ``[B, L]`` bool, positions that may be committed.
        threshold: in ``(0, 1]``.
        k: the largest eligible count of a row when the caller knows it (then nothing is read from the
            device); None counts it.

    Returns:
        ``[B, L]`` bool, the positions to commit.

    Exact tie parity with the (batch-1) reference holds for ``B = 1``; for larger batches the top-k
    is taken with the batch's largest eligible count.
    """
    if confidence.shape != eligible.shape or confidence.dim() != 2:
        raise ValueError(
            f"confidence {tuple(confidence.shape)} and eligible {tuple(eligible.shape)} must be equal 2-D shapes"
        )
    neg_inf = torch.tensor(float("-inf"), dtype=confidence.dtype, device=confidence.device)
    confidence = torch.where(eligible, confidence, neg_inf)
    num_eligible = eligible.sum(dim=1)  # [B]
    if k is None:
        k = int(num_eligible.max()) if eligible.numel() else 0
    pick = torch.zeros_like(eligible)
    if k == 0:
        return pick
    values, index = torch.topk(confidence, k)  # [B, k], descending
    rank = torch.arange(k, device=confidence.device).unsqueeze(0)
    keep = (rank < num_eligible.unsqueeze(1)) & ((rank == 0) | ~(values < threshold))
    return pick.scatter_(1, index, keep)
