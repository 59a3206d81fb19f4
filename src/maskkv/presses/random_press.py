"""Random: i.i.d. uniform scores, the floor every method must beat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import LayerContext, Press


@dataclass(frozen=True)
class RandomPress(Press):
    """Uniform random scores per (layer, KV head, position), drawn from a CPU generator seeded with
    ``seed + layer`` so runs are reproducible on any device (``baselines.md`` 6.4)."""

    seed: int = 0
    name: ClassVar[str] = "random"

    def score(self, ctx: LayerContext) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + ctx.layer)
        b, heads = ctx.keys.shape[:2]
        return torch.rand(b, heads, ctx.prompt_length, generator=generator).to(ctx.keys.device)
