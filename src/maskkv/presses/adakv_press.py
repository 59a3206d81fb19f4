"""AdaKV: SnapKV scores with head budgets from a global top-k over the layer's heads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .snapkv_press import SnapKVPress


@dataclass(frozen=True)
class AdaKVPress(SnapKVPress):
    """Ada-SnapKV (Feng et al., arXiv 2407.11550), ``baselines.md`` 5.

    Within each layer, ``adakv_floor`` (20%) of the per-head budget is uniform and the rest follows a
    global top-k over every head's pooled SnapKV scores; heads keep ``round((1 - a) n_h + int(a Bb))``
    prefix tokens plus the window. Storage is really ragged per head (no masked-only eviction).
    """

    head_allocation: str = "adakv"
    name: ClassVar[str] = "adakv"
