"""Watching ``generate`` from outside: a cache-policy proxy that sees every pass, and the kept-token counts.

:func:`maskkv.generate` takes a cache policy and calls its ``bind``; :class:`StepHook` binds the real policy
(through ``generate``'s own :func:`~maskkv.sampling.generate.bind_denoiser`) and wraps the per-request denoiser so
that a callback sees the canvas before every forward pass and the press's plan after the first one. The
tokens are exactly ``generate``'s (tested); nothing in the sampler or the caches is changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..sampling.wrapper import DenoiserWrapper


class _NoStats:
    @staticmethod
    def as_dict() -> None:
        return None


class _ObservedDenoiser(DenoiserWrapper):
    """Wraps the per-request denoiser ``generate`` would have used; calls the hook before every pass."""

    def __init__(self, inner: Any, hook: StepHook) -> None:
        super().__init__(inner)
        self._hook = hook
        self._passes = 0

    def reset(self) -> None:
        """``generate`` re-runs a call whose model committed the mask token: start the inner denoiser afresh."""
        super().reset()
        self._passes = 0

    @property
    def stats(self) -> Any:
        return getattr(self.inner, "stats", _NoStats())

    def logits_at(self, x: torch.Tensor, attention_mask: torch.Tensor | None, positions: torch.Tensor) -> torch.Tensor:
        self._hook.before_pass(x)
        logits = self.inner.logits_at(x, attention_mask, positions)
        self._passes += 1
        if self._passes == 1:
            self._hook.after_first_pass(getattr(self.inner, "plan", None))
        return logits


class StepHook:
    """Cache-policy proxy handed to ``generate(cache=...)``: ``on_pass(canvas [B, L])`` runs before every
    forward pass (it may raise to stop decoding), ``on_first_pass(plan)`` after the first one with the press's
    :class:`~maskkv.presses.PressPlan` (None without a press or when nothing is evicted)."""

    def __init__(self, policy: Any, on_pass: Callable[[torch.Tensor], None],
                 on_first_pass: Callable[[Any], None]) -> None:
        self.policy = policy
        self.before_pass = on_pass
        self.after_first_pass = on_first_pass

    def bind(self, model: Any, prompt_length: int, press: Any = None, *,
             block_length: int | None = None) -> _ObservedDenoiser:
        from ..sampling.generate import bind_denoiser

        return _ObservedDenoiser(bind_denoiser(model, prompt_length, self.policy, press, block_length=block_length),
                                 self)


def kept_counts(plan: Any, prompt_length: int, num_layers: int, num_kv_heads: int, batch: int,
                prompt_valid: torch.Tensor) -> torch.Tensor:
    """``[B, D, P]`` number of KV heads of each layer that kept each prompt position after the first pass.

    Without eviction (no press, or a budget covering the prompt) every real position is kept by every head.
    """
    full = prompt_valid[:, None, :].cpu().to(torch.int64) * num_kv_heads  # [B, 1, P]
    if plan is None or not plan.keep:
        return full.expand(batch, num_layers, prompt_length).clone()
    layers = []
    for layer in range(num_layers):
        keep = plan.keep[layer]
        index = torch.where(keep.valid, keep.indices, prompt_length)  # [B, Hkv, K], P = the dropped slot
        slots = torch.zeros(batch, index.shape[1], prompt_length + 1, dtype=torch.int64, device=index.device)
        slots.scatter_(2, index, 1)
        layers.append(slots[..., :prompt_length].sum(1))
    return torch.stack(layers, dim=1).cpu() * prompt_valid[:, None, :].cpu()
