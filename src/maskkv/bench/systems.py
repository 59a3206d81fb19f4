"""The systems a benchmark compares, and the per-pass timer that wraps each one.

Every system is one way to run the same LLaDA/Dream sampler (``maskkv.sampling.generate``):

- ``vanilla``: no cache, every pass recomputes every row (``cache=None``). The model's
  ``logits_at`` already projects only the rows the sampler reads.
- ``vanilla-ref``: like ``vanilla`` but the forward returns logits for *every* row, as the
  reference LLaDA ``generate.py`` does (``model(x).logits``); the vanilla of the paper's Figure 4.
- ``dllm-cache``: :class:`~maskkv.cache.DLLMCache` with its defaults (prompt-state exclusion and
  mask-only projection on).
- ``dllm-cache-no-mop``: the same without mask-only projection (ablation, MaskKV Table 5).
- ``dllm-cache-orig``: neither optimisation, as the original dLLM-Cache code (Table 5's first row).
- ``fast-dllm-prefix`` / ``fast-dllm-dual``: :class:`~maskkv.cache.FastDLLMCache` (Fast-dLLM's per-block
  prefix / dual cache, ``sampling.md`` 3.2-3.3) with LLaDA's step schedule (no confidence threshold).
- ``maskkv`` and the baselines (``snapkv``, ``pyramidkv``, ...): the press at the benchmark's
  budget on top of ``DLLMCache()``. Without ``--profile`` MaskKV is the online variant (every layer's
  full prompt K/V held until the first pass ends).
- ``maskkv-offline``: MaskKV with a layer profile (``--profile``, or one calibrated on a seeded random
  prompt before timing), so each layer is evicted as soon as its attention ran (Table 5's offline row).
- ``maskkv-padded``: MaskKV with every KV head of a layer padded to the layer's largest budget
  (``DLLMCache(ragged_storage=False)``, MaskKV D10 a) instead of the flattened storage (D10 b).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..cache.dllm_cache import DLLMCache
from ..cache.fast_dllm import FastDLLMCache
from ..presses import PRESSES, make_press
from ..presses.base import Press
from ..sampling.wrapper import DenoiserWrapper


@dataclass(frozen=True)
class System:
    """One benchmarked configuration of the sampler (see the module docstring)."""

    name: str
    label: str
    cache: dict[str, Any] | None = None  # DLLMCache fields, or None for no cache
    fast_dllm: str | None = None  # a FastDLLMCache mode instead of DLLMCache
    press: str | None = None  # a name of maskkv.presses.PRESSES
    reference_logits: bool = False  # project every row, as the reference forward does
    offline: bool = False  # MaskKV with an offline layer profile (layer-by-layer eviction in the first pass)
    description: str = field(default="", compare=False)

    def make_cache(self, cuda_graphs: bool = False) -> DLLMCache | FastDLLMCache | None:
        """The system's cache policy; ``cuda_graphs``: replay its steady passes from CUDA graphs (on CUDA)."""
        if self.fast_dllm is not None:
            return FastDLLMCache(self.fast_dllm, cuda_graphs=cuda_graphs)
        return None if self.cache is None else DLLMCache(**self.cache, cuda_graphs=cuda_graphs)

    def make_press(self, budget: int, profile: str | None = None) -> Press | None:
        if self.press is None:
            return None
        if self.offline and not profile:
            raise ValueError(f"system {self.name!r} needs a layer profile")
        options = {"profile": profile} if profile and self.press == "maskkv" else {}
        return make_press(self.press, budget, **options)


_PRESS_LABELS = {
    "maskkv": "MaskKV", "snapkv": "SnapKV", "pyramidkv": "PyramidKV", "squeeze": "SqueezeAttention",
    "adakv": "AdaKV", "streaming": "StreamingLLM", "h2o": "H2O", "knorm": "KNorm", "random": "Random",
    "sparse_dllm": "Sparse-dLLM",
}  # fmt: skip

SYSTEMS: dict[str, System] = {
    s.name: s
    for s in (
        System("vanilla", "vanilla", description="no cache: every pass recomputes every row"),
        System("vanilla-ref", "vanilla (all-row logits)", reference_logits=True,
               description="no cache, logits for every row as LLaDA's reference generate.py"),
        System("dllm-cache", "dLLM-Cache", cache={}, description="DLLMCache() defaults"),
        System("dllm-cache-no-mop", "dLLM-Cache w/o mask-only proj.", cache={"mask_only_projection": False},
               description="DLLMCache(mask_only_projection=False)"),
        System("dllm-cache-orig", "dLLM-Cache (original)",
               cache={"mask_only_projection": False, "prompt_state_exclusion": False},
               description="DLLMCache(mask_only_projection=False, prompt_state_exclusion=False)"),
        System("fast-dllm-prefix", "Fast-dLLM prefix cache", fast_dllm="prefix",
               description="FastDLLMCache('prefix'): prompt and earlier blocks frozen per block"),
        System("fast-dllm-dual", "Fast-dLLM dual cache", fast_dllm="dual",
               description="FastDLLMCache('dual'): every position frozen per block, the block recomputed"),
        *(
            System(name, _PRESS_LABELS.get(name, name), cache={}, press=name,
                   description=f"make_press({name!r}, budget) on DLLMCache()")
            for name in PRESSES
        ),
        System("maskkv-offline", "MaskKV (offline profile)", cache={}, press="maskkv", offline=True,
               description="MaskKV with an offline layer profile: --profile, or one calibrated on a random "
                           "prompt before timing"),
        System("maskkv-padded", "MaskKV (padded heads)", cache={"ragged_storage": False}, press="maskkv",
               description="MaskKV on DLLMCache(ragged_storage=False): heads padded to the layer's largest budget"),
    )
}  # fmt: skip

DEFAULT_SYSTEMS = (
    "vanilla", "vanilla-ref", "dllm-cache", "dllm-cache-no-mop", "fast-dllm-prefix", "fast-dllm-dual", "maskkv",
    "maskkv-offline",
)  # fmt: skip
BASELINES = tuple(name for name in PRESSES if name != "maskkv")
GROUPS = {"default": DEFAULT_SYSTEMS, "baselines": BASELINES, "all": tuple(SYSTEMS)}


def resolve_systems(spec: str) -> list[str]:
    """System names from a comma/space separated list of names and groups (default, baselines, all)."""
    names: list[str] = []
    for item in spec.replace(",", " ").split():
        expanded = GROUPS.get(item, (item,))
        for name in expanded:
            if name not in SYSTEMS:
                raise ValueError(
                    f"unknown system {name!r}; choose from {', '.join(SYSTEMS)} or the groups {', '.join(GROUPS)}"
                )
            if name not in names:
                names.append(name)
    if not names:
        raise ValueError("no system given; e.g. --systems default,snapkv")
    return names


class StopTiming(Exception):
    """Raised by :class:`PassTimer` after its pass limit, to end an extrapolated run early."""


class PassTimer(DenoiserWrapper):
    """Wraps anything with ``config`` and ``logits_at`` and records the wall time of every pass.

    ``reference_logits``: call ``inner(x, mask).logits`` (all rows) and pick the positions, as the
    reference LLaDA forward does. ``max_passes``: raise :class:`StopTiming` after that many passes.
    CUDA is synchronised around each pass so the times are the device's.
    """

    def __init__(
        self, inner: Any, *, reference_logits: bool = False, max_passes: int | None = None,
        memory: Callable[[], int | None] | None = None, memory_passes: int = 2,
    ) -> None:  # fmt: skip
        """``memory``: read after each of the first ``memory_passes`` passes into :attr:`memory_peaks`
        (e.g. the peak memory since a reset: the first pass and one decode step)."""
        super().__init__(inner)
        self.reference_logits = reference_logits
        self.max_passes = max_passes
        self.seconds: list[float] = []
        self.memory, self.memory_passes = memory, memory_passes
        self.memory_peaks: list[int | None] = []
        self._cuda = _device_of(inner).type == "cuda"

    def logits_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  positions: torch.Tensor) -> torch.Tensor:  # fmt: skip
        if self.max_passes is not None and len(self.seconds) >= self.max_passes:
            raise StopTiming
        if self._cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        if self.reference_logits:
            logits = self.inner(input_ids, attention_mask).logits[:, positions]
        else:
            logits = self.inner.logits_at(input_ids, attention_mask, positions)
        if self._cuda:
            torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - start)
        if self.memory is not None and len(self.seconds) <= self.memory_passes:
            self.memory_peaks.append(self.memory())
        return logits


def _device_of(model: Any) -> torch.device:
    inner = getattr(model, "model", model)  # a CachedDenoiser holds the model
    return inner.embed_tokens.weight.device
