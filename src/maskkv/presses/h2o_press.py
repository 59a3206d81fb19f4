"""H2O, one-shot: accumulated attention of the prompt queries (heavy hitters)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .attention_stats import attention_column_sums
from .base import LayerContext, Press


@dataclass(frozen=True)
class H2OPress(Press):
    """H2O (Zhang et al., arXiv 2306.14048), one-shot port of ``baselines.md`` 6.2.

    Score = column sums of the first pass's attention of every prompt query (``voters="all"``: every
    query), softmax over all keys, no pooling; the last ``w_eff`` prompt tokens are kept inside the
    budget. The original evicts incrementally while decoding, which has no dLLM analogue.
    """

    window: int = 8
    voters: str = "prompt"
    name: ClassVar[str] = "h2o"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.voters not in ("prompt", "all"):
            raise ValueError(f"H2OPress: voters={self.voters!r}; use 'prompt' or 'all'")

    def uses_window(self) -> bool:
        return True

    def score(self, ctx: LayerContext) -> torch.Tensor:
        p, window = ctx.prompt_length, ctx.window
        queries = ctx.queries if self.voters == "all" else ctx.queries[:, :, :p]
        weights = None
        if ctx.key_valid is not None:
            weights = ctx.key_valid if self.voters == "all" else ctx.prompt_valid
        sums = attention_column_sums(queries, ctx.keys, query_weights=weights, key_valid=ctx.key_valid)[..., :p]
        if window:
            sums[..., p - window :] = float("inf")
        return sums
