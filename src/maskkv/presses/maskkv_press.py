"""MaskKV: Mask-Voting token scores with boundary-aware layer and prompt-preference head budgets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .attention_stats import attention_column_sums
from .base import LayerContext, Press

VOTERS = ("mask", "prompt", "all")


@dataclass(frozen=True)
class MaskKVPress(Press):
    """MaskKV (Huang et al., arXiv 2510.09309).

    Scores (Eqs. 6-7): ``I_j = sum_i A_ij`` over the [MASK] query rows of the first pass, ``A`` the
    fp32 softmax over all keys (prompt and masks), restricted to prompt columns; per KV head (GQA:
    summed over the head's query group, D5). Layer budgets: boundary-aware (Eqs. 8-13, ``beta``),
    from an offline ``profile`` or, without one, measured on the request itself (online). Head
    budgets: prompt preference (Eqs. 14-15, ``alpha``). Selection: per-head top-k (Eq. 16).

    Options beyond the paper: ``voters`` = "prompt" / "all" (Table 7's Prompt-/All-Voting) and
    ``vote_segment = (index, count)``: only the ``index``-th of ``count`` equal contiguous parts of
    the masks votes (Table 8, position-aware voting). Deviation: budgets sum exactly (D2 b, set
    ``rounding="floor"`` for the paper's floors) and are capped at the prompt length with the surplus
    redistributed (D8 b).
    """

    layer_allocation: str = "boundary"
    head_allocation: str = "preference"
    voters: str = "mask"
    vote_segment: tuple[int, int] | None = None
    name: ClassVar[str] = "maskkv"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.voters not in VOTERS:
            raise ValueError(f"MaskKVPress: voters={self.voters!r}; use one of {VOTERS}")
        if self.vote_segment is not None:
            index, count = self.vote_segment
            if not (count >= 1 and 0 <= index < count):
                raise ValueError(f"MaskKVPress: vote_segment={self.vote_segment} must be (index, count), 0 <= index < count")

    def score(self, ctx: LayerContext) -> torch.Tensor:
        p = ctx.prompt_length
        if self.voters == "mask":
            rows = None
            if self.vote_segment is not None:
                index, count = self.vote_segment
                g = ctx.voter_rows.shape[1]
                position = torch.arange(g, device=ctx.voter_rows.device)
                rows = ctx.voter_rows & (position * count // g == index)
            return ctx.mask_votes(rows)[..., :p]
        queries = ctx.queries if self.voters == "all" else ctx.queries[:, :, :p]
        weights = None
        if ctx.prompt_valid is not None:
            weights = ctx.key_valid if self.voters == "all" else ctx.prompt_valid
        return attention_column_sums(queries, ctx.keys, query_weights=weights, key_valid=ctx.key_valid)[..., :p]
