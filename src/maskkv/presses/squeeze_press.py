"""SqueezeAttention: layer groups by attention-sublayer cosine, the least important group squeezed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .snapkv_press import SnapKVPress


@dataclass(frozen=True)
class SqueezeAttentionPress(SnapKVPress):
    """SqueezeAttention (Wang et al., arXiv 2404.04793), ported as in ``baselines.md`` 4.

    Per request, each layer's mean cosine between the stream entering it and the stream after the
    attention residual (prompt tokens of the first pass) is clustered into 3 groups (exact 1-D
    k-means); the least important group keeps ``squeeze_fraction`` (40%) of B per layer, the rest share
    the remainder equally. Online by nature: the whole first pass runs before any eviction. Tokens
    are ranked by SnapKV.
    """

    layer_allocation: str = "squeeze"
    name: ClassVar[str] = "squeeze"
