"""SnapKV: observation-window attention, pooled, with the window itself always kept."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .attention_stats import attention_column_sums
from .base import LayerContext, Press


@dataclass(frozen=True)
class SnapKVPress(Press):
    """SnapKV (Li et al., arXiv 2404.14469), ported to dLLMs as in ``baselines.md`` 2.

    The last ``w_eff = min(window, B_unit // 2)`` prompt rows observe (softmax over all keys of the
    first pass: prompt and masks, no causal mask); each prefix key's score is the sum of their
    attention (GQA: summed over the query group before pooling), max-pooled with ``kernel_size``
    (stride 1, ``-inf`` padding); the window is kept inside the budget. Defaults: w 32, k 7,
    max-pool (the paper's LongBench setting). ``B_unit`` is the layer's budget, except under PyramidKV's
    schedule, which keeps the w_eff of the global B in every layer (``Press.observation_window``).
    """

    kernel_size: int = 7
    pooling: str = "max"
    name: ClassVar[str] = "snapkv"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pooling not in ("max", "avg"):
            raise ValueError(f"{type(self).__name__}: pooling={self.pooling!r}; use 'max' or 'avg'")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"{type(self).__name__}: kernel_size={self.kernel_size} must be odd and >= 1")

    def uses_window(self) -> bool:
        return True

    def score(self, ctx: LayerContext) -> torch.Tensor:
        p, window = ctx.prompt_length, ctx.window
        observers = max(window, 1)
        sums = attention_column_sums(ctx.queries[:, :, p - observers : p], ctx.keys, key_valid=ctx.key_valid)
        prefix = sums[..., : p - window]
        pooled = pool_scores(prefix, self.kernel_size, self.pooling)
        protected = torch.full((*prefix.shape[:-1], window), float("inf"), device=prefix.device)
        return torch.cat([pooled, protected], dim=-1)


def pool_scores(scores: torch.Tensor, kernel_size: int, pooling: str) -> torch.Tensor:
    """1-D pooling over the last axis, stride 1, padding ``k // 2`` (max: -inf pad; avg: zeros counted)."""
    if kernel_size == 1 or scores.shape[-1] == 0:
        return scores
    flat = scores.reshape(-1, 1, scores.shape[-1])
    pad = kernel_size // 2
    if pooling == "max":
        out = F.max_pool1d(flat, kernel_size, stride=1, padding=pad)
    else:
        out = F.avg_pool1d(flat, kernel_size, stride=1, padding=pad, count_include_pad=True)
    return out.reshape(scores.shape)
