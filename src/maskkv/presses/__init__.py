"""Presses: prompt K/V eviction methods, one per file, sharing :class:`~maskkv.presses.base.Press`.

``Press(budget=N)`` builds any of them with the paper's defaults; ``PRESSES`` maps CLI names to classes.
"""

import dataclasses

from .adakv_press import AdaKVPress
from .base import KeepSet, LayerContext, Press, PressPlan
from .h2o_press import H2OPress
from .knorm_press import KNormPress
from .maskkv_press import MaskKVPress
from .pyramidkv_press import PyramidKVPress
from .random_press import RandomPress
from .snapkv_press import SnapKVPress
from .sparse_dllm_press import SparseDLLMPress
from .squeeze_press import SqueezeAttentionPress
from .streaming_press import StreamingLLMPress

PRESSES: dict[str, type[Press]] = {
    cls.name: cls
    for cls in (
        MaskKVPress, SnapKVPress, PyramidKVPress, SqueezeAttentionPress, AdaKVPress, StreamingLLMPress,
        H2OPress, KNormPress, RandomPress, SparseDLLMPress,
    )
}  # fmt: skip


def make_press(name: str, budget: int, **options: object) -> Press:
    """The press registered as ``name`` (see ``PRESSES``) with ``budget`` and any field overrides."""
    if name not in PRESSES:
        raise ValueError(f"unknown press {name!r}; choose one of {sorted(PRESSES)}")
    press_class = PRESSES[name]
    known = {f.name for f in dataclasses.fields(press_class)} - {"budget"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"{press_class.__name__} has no option {', '.join(unknown)}; its options are {sorted(known)}")
    return press_class(budget=budget, **options)


__all__ = [
    "PRESSES", "AdaKVPress", "H2OPress", "KNormPress", "KeepSet", "LayerContext", "MaskKVPress", "Press",
    "PressPlan", "PyramidKVPress", "RandomPress", "SnapKVPress", "SparseDLLMPress", "SqueezeAttentionPress",
    "StreamingLLMPress", "make_press",
]  # fmt: skip
