"""dLLM-Cache: the refresh policy of the feature cache (``dllm_cache.md`` 2, 4, 5; MaskKV App. A.1).

The policy is a small frozen dataclass; per-request state lives in the
:class:`~maskkv.cache.engine.CachedDenoiser` that :meth:`DLLMCache.bind` returns, so one policy
object can serve any number of requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..validation import check_number

if TYPE_CHECKING:
    from ..models.transformer import DiffusionTransformer
    from ..presses.base import Press
    from .engine import CachedDenoiser


@dataclass(frozen=True)
class DLLMCache:
    """Feature cache with separate prompt and response refresh schedules.

    Based on dLLM-Cache (Liu et al., arXiv 2506.06295) with MaskKV's memory optimisations
    (arXiv 2510.09309, Appendix A.1).

    Parameters
    ----------
    prompt_interval: int = 50
        Recompute the prompt every this many forward passes (``T_p``; pass ``s`` refreshes when
        ``(s - 1) % T_p == 0``). ``-1`` or ``1``: every pass.
    response_interval: int = 5
        Recompute every response row every this many passes (``T_r``).
    transfer_ratio: float = 0.25
        On passes without a response refresh, recompute the ``int(G * ratio)`` response rows whose
        value vectors moved most (lowest cosine similarity to the cached V), per layer ("V-verify").
        0 disables it.
    prompt_state_exclusion: bool = True
        Keep only the prompt's K/V, never its attention/MLP outputs, and run no prompt rows on passes
        that do not refresh the prompt (MaskKV App. A.1). False stores and re-adds the prompt
        features as dLLM-Cache does (for the memory ablation; the tokens are the same).
    mask_only_projection: bool = True
        Run the final norm and LM head only on the rows whose logits the sampler reads. False
        projects every row the pass holds (dLLM-Cache's behaviour, for the ablation).
    layer0_response_refresh: bool = True
        Refresh layer 0's response rows on every pass, as dLLM-Cache's hook does (its layer-0 prompt
        recomputation is dropped: those K/V depend only on the embeddings; MaskKV D7).
    refresh_all_values: bool = True
        V-verify replaces every cached response V but only the chosen rows' K, exactly like
        dLLM-Cache. False refreshes K and V of the chosen rows only.
    ragged_storage: bool = True
        After eviction, store a layer whose KV heads keep different counts flattened (MaskKV D10 b:
        exactly the kept pairs; attention pads them transiently, or packs them for a varlen kernel on
        CUDA). False pads every head to the layer's largest budget (D10 a). The tokens are the same.
    cuda_graphs: bool = False
        On CUDA, capture each kind of steady-state pass (V-verify, response refresh) in a CUDA graph and
        replay it (:mod:`maskkv.cache.graphs`); the sampler then asks for every position of its block so
        the shapes stay fixed. Ignored on other devices. The tokens are the same as without.
    """

    prompt_interval: int = 50
    response_interval: int = 5
    transfer_ratio: float = 0.25
    prompt_state_exclusion: bool = True
    mask_only_projection: bool = True
    layer0_response_refresh: bool = True
    refresh_all_values: bool = True
    ragged_storage: bool = True
    cuda_graphs: bool = field(default=False, repr=False)  # how it runs, not what it computes: not in run records

    def __post_init__(self) -> None:
        for name in ("prompt_interval", "response_interval"):
            value = getattr(self, name)
            if value == 0 or value < -1:
                raise ValueError(f"DLLMCache.{name}={value}: use a positive interval, or -1 for every pass")
        check_number("DLLMCache.transfer_ratio", self.transfer_ratio, low=0.0, high=1.0)

    def refresh_prompt(self, step: int) -> bool:
        """Pass ``step`` (1-based, counted over the whole request) recomputes the prompt."""
        return (step - 1) % self.prompt_interval == 0

    def refresh_response(self, step: int) -> bool:
        """Pass ``step`` recomputes every response row."""
        return (step - 1) % self.response_interval == 0

    def bind(
        self, model: DiffusionTransformer, prompt_length: int, press: Press | None = None, *,
        kept_attention: bool = False, block_length: int | None = None,
    ) -> CachedDenoiser:  # fmt: skip
        """A fresh per-request denoiser over ``model`` for prompts of ``prompt_length`` (padded) tokens.

        ``block_length`` (the sampler's, passed by ``generate`` to every cache policy) is not used:
        dLLM-Cache's refresh schedules count passes, not blocks.
        """
        from .engine import CachedDenoiser

        return CachedDenoiser(model, self, prompt_length, press=press, kept_attention=kept_attention)
