"""Sparse-dLLM scoring: mean block query against each key, max-pooled, one set per layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import LayerContext, Press
from .snapkv_press import pool_scores


@dataclass(frozen=True)
class SparseDLLMPress(Press):
    """Sparse-dLLM (arXiv 2508.02558) scoring, one-shot port of ``baselines.md`` 6.5.

    The first ``block_length`` response queries are averaged per head; each prompt key's score is the
    raw dot product with that mean query (no scaling, no softmax; GQA keys repeated), averaged over
    all query heads, max-pooled with kernel 3; every KV head keeps the same set. Deviation from the
    original: one-shot at the first pass with prompt-only candidates and an absolute budget (the
    original re-selects every block with a keep ratio).
    """

    block_length: int = 32
    kernel_size: int = 3
    name: ClassVar[str] = "sparse_dllm"

    def score(self, ctx: LayerContext) -> torch.Tensor:
        p = ctx.prompt_length
        block = ctx.queries[:, :, p : p + self.block_length].float().mean(dim=2)  # [B, H, hd]
        group = ctx.config.num_query_groups
        keys = ctx.keys[:, :, :p].float().repeat_interleave(group, dim=1)  # [B, H, P, hd]
        dots = torch.einsum("bhd,bhpd->bhp", block, keys).mean(dim=1)  # [B, P]
        pooled = pool_scores(dots, self.kernel_size, "max")
        return pooled[:, None, :].expand(-1, ctx.keys.shape[1], -1)
