"""StreamingLLM: attention sinks plus the most recent prompt tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import LayerContext, Press


@dataclass(frozen=True)
class StreamingLLMPress(Press):
    """StreamingLLM (Xiao et al., arXiv 2309.17453), ``baselines.md`` 6.1.

    Every head keeps the first ``n_sink`` real prompt tokens and the last ``B - n_sink`` ones (the
    end of the prompt, next to the response). Keys keep their true positions (no re-rotation).
    """

    n_sink: int = 4
    name: ClassVar[str] = "streaming"

    def score(self, ctx: LayerContext) -> torch.Tensor:
        p = ctx.prompt_length
        b, heads = ctx.keys.shape[0], ctx.keys.shape[1]
        position = torch.arange(p, device=ctx.keys.device, dtype=torch.float32)
        first_real = torch.zeros(b, 1, device=ctx.keys.device)
        if ctx.prompt_valid is not None:
            first_real = (p - ctx.prompt_valid.sum(-1, keepdim=True)).float()
        recency = position.expand(b, p) + 1.0
        scores = torch.where(position - first_real < self.n_sink, torch.full_like(recency, float("inf")), recency)
        return scores[:, None, :].expand(b, heads, p)
