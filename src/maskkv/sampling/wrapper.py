"""A denoiser that wraps another one for the sampler (timers, op counters, the server's observer)."""

from __future__ import annotations

from typing import Any

import torch


class DenoiserWrapper:
    """Stands in for ``inner`` (a model or a bound cache) in :func:`maskkv.generate`.

    Attributes the wrapper does not define are ``inner``'s (``begin_block``, ``static_positions``, ``plan``,
    ...). :meth:`reset` reaches ``inner`` when it has one: ``generate`` re-runs a call whose model committed the
    mask token and needs a fresh denoiser (a plain model is stateless). Subclasses override :meth:`logits_at`.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.config = inner.config

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def reset(self) -> None:
        """Start the inner denoiser afresh (``generate``'s committed-[MASK] re-run)."""
        inner_reset = getattr(self.inner, "reset", None)
        if inner_reset is not None:
            inner_reset()

    def logits_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  positions: torch.Tensor) -> torch.Tensor:  # fmt: skip
        return self.inner.logits_at(input_ids, attention_mask, positions)
