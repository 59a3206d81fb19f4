"""PyramidKV: SnapKV scores with a linearly decreasing layer budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .snapkv_press import SnapKVPress


@dataclass(frozen=True)
class PyramidKVPress(SnapKVPress):
    """PyramidKV (Cai et al., arXiv 2406.02069): the original integer pyramid (``baselines.md`` 3).

    Layer 0 keeps the most, the last layer the least (``pyramid_beta`` = 20), window included; as in
    the original the mean budget can exceed B slightly (``budgets.md`` 3). Tokens are ranked by SnapKV.
    As in the original, one window ``w_eff(B) = min(window, B // 2)`` of the global B builds the schedule
    and is the observation and protected window of every layer: layer l keeps ``cap_l`` prefix tokens plus
    that window (``baselines.md`` 1.3, corrected; e.g. 3 + 32 in the last of 4 layers at B = 64), not a
    window shrunk to its own budget.
    """

    layer_allocation: str = "pyramid"
    name: ClassVar[str] = "pyramidkv"
