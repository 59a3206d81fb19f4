"""Explicit attention probabilities for scoring (SDPA never returns them).

Every function computes ``softmax(q k^T / sqrt(hd))`` in fp32 over *all* keys of the layer (prompt
and response, pad keys excluded), for a chosen set of query rows, in chunks of query heads so that
at most ``max_elements`` fp32 scores are alive at once. Query heads are reduced to their KV head
(``num_query_groups`` consecutive query heads share one KV head).
"""

from __future__ import annotations

import math

import torch

_MAX_ELEMENTS = 1 << 22  # 16 MiB of fp32 scores per chunk (a first pass's transient, next to its [T, d] tensors)


def _probabilities(q: torch.Tensor, k: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
    """fp32 softmax of ``q [B, h, R, hd]`` against ``k [B, h, L, hd]``; pad keys get probability 0.

    The scaling and masking run in place on the score matrix (the same arithmetic), so a chunk holds
    its scores and their softmax only.
    """
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)).div_(math.sqrt(q.shape[-1]))
    if key_valid is not None:
        logits.masked_fill_(~key_valid[:, None, None, :], float("-inf"))
    return torch.softmax(logits, dim=-1)


def attention_column_sums(
    queries: torch.Tensor,
    keys: torch.Tensor,
    *,
    query_weights: torch.Tensor | None = None,
    key_valid: torch.Tensor | None = None,
    group_reduce: str = "sum",
    max_elements: int = _MAX_ELEMENTS,
) -> torch.Tensor:
    """``sum_i w_i * A[i, j]`` per KV head, summed over each KV head's query group.

    Args:
        queries: ``[B, H, R, hd]`` post-RoPE queries of the voting rows.
        keys: ``[B, Hkv, L, hd]`` post-RoPE keys of the whole layer.
        query_weights: ``[B, R]`` weight of each voting row (0 drops it), or None for all ones.
        key_valid: ``[B, L]`` bool, False for pad keys.
        group_reduce: how a KV head's query group is reduced: ``sum`` (MaskKV D5 a) or ``max`` (D5 b).

    Returns:
        ``[B, Hkv, L]`` fp32 column sums (Mask-Voting Eq. 7 before restricting to prompt columns).
    """
    b, h, r, _ = queries.shape
    h_kv, length = keys.shape[1], keys.shape[2]
    group = h // h_kv
    out = torch.zeros(b, h_kv, length, dtype=torch.float32, device=keys.device)
    per_kv_head = max(1, max_elements // max(1, b * group * r * length))
    for start in range(0, h_kv, per_kv_head):
        stop = min(h_kv, start + per_kv_head)
        q = queries[:, start * group : stop * group]
        k = keys[:, start:stop] if group == 1 else keys[:, start:stop].repeat_interleave(group, dim=1)
        probs = _probabilities(q, k, key_valid)  # [B, h_chunk, R, L]
        del k
        if query_weights is not None:
            probs.mul_(query_weights[:, None, :, None].float())
        sums = probs.sum(dim=2)  # [B, h_chunk, L]
        grouped = sums.view(b, stop - start, group, length)
        out[:, start:stop] = grouped.sum(dim=2) if group_reduce == "sum" else grouped.amax(dim=2)
    return out
