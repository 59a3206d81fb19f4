"""KNorm: keep the keys with the smallest L2 norm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import LayerContext, Press


@dataclass(frozen=True)
class KNormPress(Press):
    """KNorm (Devoto et al., arXiv 2406.11430), ``baselines.md`` 6.3: score = ``-||k_j||_2`` per KV head."""

    name: ClassVar[str] = "knorm"

    def score(self, ctx: LayerContext) -> torch.Tensor:
        return -ctx.keys[:, :, : ctx.prompt_length].float().norm(dim=-1)
