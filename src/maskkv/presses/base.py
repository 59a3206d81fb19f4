"""Press = scorer + budget allocator: the one place where prompt K/V are chosen for eviction.

A press scores every prompt token per KV head in the first denoising pass (``score``), an
allocator decides how many tokens each layer (``layer_allocation``) and each head
(``head_allocation``) keeps, and the top-scoring tokens of each head are kept (MaskKV Eq. 16).
Presses are frozen dataclasses holding only configuration; the per-request state is a
:class:`PressPlan`, so one press object can serve concurrent requests.

Budgets are absolute: ``budget`` = B, the average number of prompt K/V pairs kept per KV head per
layer (window tokens included). With ``B >= prompt length`` nothing is evicted and the output is
identical to running without a press (MaskKV D8).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from ..validation import check_number
from . import budgets as B
from .attention_stats import attention_column_sums

if TYPE_CHECKING:
    from ..models.config import ModelConfig

logger = logging.getLogger(__name__)
_ONLINE_NOTICE_GIVEN = False

LAYER_ALLOCATIONS = ("uniform", "boundary", "pyramid", "squeeze")
HEAD_ALLOCATIONS = ("uniform", "preference", "adakv")
PROMPT_REFRESH = ("keep", "revote", "none")


@dataclass
class LayerContext:
    """What a scorer may read about one layer in the scoring pass.

    Shapes: ``queries [B, H, L, hd]`` and ``keys [B, Hkv, L, hd]`` (post-RoPE, canvas order
    ``[prompt | response]``); ``key_valid [B, L]`` (False at pad keys); ``voter_rows [B, G]`` (True at
    response rows whose input is [MASK]); ``hidden_in``/``hidden_mid`` ``[B, L, d]`` (the residual
    stream entering the layer and after the attention residual add; None on re-votes). ``scores``: the
    press's scores when they were computed early (a layer waiting for online budgets drops its queries).
    """

    layer: int
    config: ModelConfig
    queries: torch.Tensor | None
    keys: torch.Tensor
    prompt_length: int
    key_valid: torch.Tensor | None
    voter_rows: torch.Tensor
    hidden_in: torch.Tensor | None = None
    hidden_mid: torch.Tensor | None = None
    window: int = 0  # protected/observation window chosen by the allocator for this layer
    layer_budget: int = 0
    group_reduce: str = "sum"
    scores: torch.Tensor | None = field(default=None, repr=False)
    _votes: torch.Tensor | None = field(default=None, repr=False)

    @property
    def prompt_valid(self) -> torch.Tensor | None:
        return None if self.key_valid is None else self.key_valid[:, : self.prompt_length]

    def mask_votes(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Mask-Voting column sums over all keys ``[B, Hkv, L]`` (Eqs. 6-7), voters = ``rows`` or the masks.

        ``rows [B, G]`` weights response rows (e.g. one quarter of the masks, Table 8). The all-mask
        result is memoised: the head allocation reads the same sums.
        """
        if rows is None and self._votes is not None:
            return self._votes
        p = self.prompt_length
        weights = (self.voter_rows if rows is None else rows).float()
        votes = attention_column_sums(
            self.queries[:, :, p:], self.keys, query_weights=weights, key_valid=self.key_valid,
            group_reduce=self.group_reduce,
        )  # fmt: skip
        if rows is None:
            self._votes = votes
        return votes


@dataclass(frozen=True)
class KeepSet:
    """Kept prompt positions of one layer: ``indices [B, Hkv, K]`` ascending, ``valid [B, Hkv, K]``."""

    indices: torch.Tensor
    valid: torch.Tensor


@dataclass(frozen=True)
class Press:
    """Base class: a scorer (``score``) plus layer and head allocation.

    Parameters
    ----------
    budget: int
        B, average prompt K/V pairs kept per KV head per layer (> 0).
    layer_allocation: str
        ``uniform`` (every layer B), ``boundary`` (MaskKV Eqs. 9-13), ``pyramid`` (PyramidKV),
        ``squeeze`` (SqueezeAttention).
    head_allocation: str
        ``uniform``, ``preference`` (MaskKV Eqs. 14-15), ``adakv`` (AdaKV).
    prompt_refresh: str = "keep"
        What a dLLM-Cache prompt refresh does after eviction (MaskKV D6): ``keep`` recomputes the
        prompt with full attention and keeps the pass-1 positions; ``revote`` re-runs the scoring
        with the masks still undecoded (layer budgets kept); ``none`` never refreshes the prompt.
    """

    budget: int
    layer_allocation: str = "uniform"
    head_allocation: str = "uniform"
    beta: float = 0.4  # boundary: base share (Eq. 9)
    alpha: float = 0.1  # preference: uniform share (Eq. 15)
    profile: str | Path | None = None  # boundary: offline layer-importance profile (JSON); None = online
    boundary_layers: tuple[int, ...] | None = None  # boundary: S_bound, default first and last (D1)
    pyramid_beta: int = 20
    squeeze_fraction: float = 0.4
    adakv_floor: float = 0.2
    window: int = 32  # pyramid/squeeze/adakv window accounting and SnapKV observation window
    rounding: str = "exact"  # boundary/preference: "exact" sums (D2 b) or the paper's "floor"
    min_head_budget: int = 0
    protect_first: int = 0  # D4: always keep the first N real prompt tokens (inside the budget)
    protect_last: int = 0  # D4: always keep the last N prompt tokens (e.g. the question)
    group_reduce: str = "sum"  # D5: reduce a KV head's query group by "sum" (a) or "max" (b)
    prompt_refresh: str = "keep"
    name: ClassVar[str] = "press"

    def __post_init__(self) -> None:
        if not isinstance(self.budget, int) or isinstance(self.budget, bool) or self.budget <= 0:
            raise ValueError(f"{type(self).__name__}: budget must be a positive int (pairs per KV head), got {self.budget!r}")
        for field_name, allowed in (
            ("layer_allocation", LAYER_ALLOCATIONS),
            ("head_allocation", HEAD_ALLOCATIONS),
            ("prompt_refresh", PROMPT_REFRESH),
            ("rounding", ("exact", "floor")),
            ("group_reduce", ("sum", "max")),
        ):
            if getattr(self, field_name) not in allowed:
                raise ValueError(
                    f"{type(self).__name__}: {field_name}={getattr(self, field_name)!r}; use one of {allowed}"
                )
        for field_name in ("alpha", "beta", "squeeze_fraction", "adakv_floor"):
            check_number(f"{type(self).__name__}.{field_name}", getattr(self, field_name), low=0.0, high=1.0)
        for field_name in ("window", "protect_first", "protect_last", "min_head_budget"):
            check_number(f"{type(self).__name__}.{field_name}", getattr(self, field_name), low=0, integer=True)
        check_number(f"{type(self).__name__}.pyramid_beta", self.pyramid_beta, low=1, integer=True)

    # ----- the one override point ---------------------------------------------------------

    def score(self, ctx: LayerContext) -> torch.Tensor:
        """Importance of each prompt token per KV head, ``[B, Hkv, P]`` (higher = keep)."""
        raise NotImplementedError

    def uses_window(self) -> bool:
        """Whether ``score`` protects an observation window (budget accounting of PyramidKV/AdaKV)."""
        return False

    def observation_window(self, layer_budget: int) -> int:
        """The observation / protected window of a layer whose per-head budget is ``layer_budget`` (0 if unused).

        ``baselines.md`` 1.3: ``w_eff = min(w, floor(B_x / 2))`` of the layer's own budget, except for the
        PyramidKV schedule, which subtracts one window ``w_eff(B)`` of the global B before building its layer
        budgets and then keeps that same window in every layer (the original passes one ``window_size`` to all).
        """
        if not self.uses_window() or layer_budget <= 0:
            return 0
        unit = self.budget if self.layer_allocation == "pyramid" else layer_budget
        return B.effective_window(unit, self.window)

    # ----- per request ----------------------------------------------------------------------

    def plan(self, config: ModelConfig, prompt_length: int, prompt_valid: torch.Tensor | None, batch: int) -> PressPlan:
        """Fresh per-request state."""
        return PressPlan(self, config, prompt_length, prompt_valid, batch)


@dataclass
class PressPlan:
    """Per-request eviction state: decides each layer's kept set in the scoring pass."""

    press: Press
    config: ModelConfig
    prompt_length: int
    prompt_valid: torch.Tensor | None  # [B, P] bool, None when unpadded
    batch: int
    layer_budgets: torch.Tensor | None = None  # [D] or [B, D] int64
    keep: dict[int, KeepSet] = field(default_factory=dict)
    _deferred: dict[int, LayerContext] = field(default_factory=dict)
    _similarity: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [B] cosine (Eq. 8)

    def __post_init__(self) -> None:
        device = self.prompt_valid.device if self.prompt_valid is not None else None
        lengths = (
            torch.full((self.batch,), self.prompt_length, dtype=torch.int64, device=device)
            if self.prompt_valid is None
            else self.prompt_valid.sum(-1)
        )
        self.real_lengths = lengths  # [B] real prompt tokens per sample
        self.active = bool((lengths > self.press.budget).any())  # else eviction is a no-op (D8)
        if self.active:
            self.layer_budgets = self._static_layer_budgets()

    @property
    def needs_hidden_states(self) -> bool:
        """True while the allocation still needs every row's hidden states (online Eq. 8 similarity)."""
        return self.layer_budgets is None and self.press.layer_allocation in ("boundary", "squeeze")

    def _static_layer_budgets(self) -> torch.Tensor | None:
        press, layers = self.press, self.config.num_layers
        if press.layer_allocation == "uniform":
            return torch.full((layers,), press.budget, dtype=torch.int64)
        if press.layer_allocation == "pyramid":
            window = press.observation_window(press.budget)
            return B.pyramidkv_layer_budgets(press.budget, layers, self.prompt_length, beta=press.pyramid_beta, window=window)
        if press.layer_allocation == "boundary" and press.profile is not None:
            from .profile import load_profile

            importance = load_profile(press.profile, self.config)
            return B.maskkv_layer_budgets(
                importance, press.budget, beta=press.beta, boundary_layers=press.boundary_layers,
                rounding=press.rounding,
            )  # fmt: skip
        if press.layer_allocation == "boundary":
            _notice_online_once()
        return None  # boundary online, squeeze: after the pass

    # ----- called by the engine ------------------------------------------------------------

    def after_layer(self, ctx: LayerContext) -> KeepSet | None:
        """Score layer ``ctx.layer`` and return its kept set now, or None if it must wait for ``finish``."""
        if ctx.hidden_in is not None and self.needs_hidden_states:
            tokens = None if self.press.layer_allocation == "boundary" else self._prompt_token_mask(ctx)
            self._similarity[ctx.layer] = 1.0 - B.layer_importance(ctx.hidden_in, ctx.hidden_mid, tokens)
        if self.layer_budgets is None:
            ctx.hidden_in = ctx.hidden_mid = None  # the similarity is all the allocation needs from them
            if not self.press.uses_window():
                # Scores that do not depend on the budget (MaskKV's votes) are taken now, so the waiting layer
                # need not hold its queries (LLaDA-8B at 32k: 256 MiB per layer in bf16).
                ctx.group_reduce = self.press.group_reduce
                ctx.scores = self.press.score(ctx)
                if self.press.head_allocation == "preference":
                    ctx.mask_votes()
                ctx.queries = None
            self._deferred[ctx.layer] = ctx
            return None
        keep = self._select(ctx, self.layer_budgets[..., ctx.layer])
        self.keep[ctx.layer] = keep
        return keep

    def finish(self) -> dict[int, KeepSet]:
        """Online allocation once every layer was seen; returns the kept sets of deferred layers."""
        if not self._deferred:
            return {}
        press, layers = self.press, self.config.num_layers
        similarity = torch.stack([self._similarity[i] for i in range(layers)], dim=-1)  # [B, D]
        if press.layer_allocation == "boundary":
            self.layer_budgets = B.maskkv_layer_budgets(
                1.0 - similarity, press.budget, beta=press.beta, prompt_len=self.real_lengths,
                boundary_layers=press.boundary_layers, rounding=press.rounding,
            )  # fmt: skip
        else:
            self.layer_budgets = B.squeeze_layer_budgets(
                similarity, press.budget, prompt_len=self.real_lengths, least_fraction=press.squeeze_fraction
            )
        out = {}
        for layer, ctx in sorted(self._deferred.items()):
            out[layer] = self.keep[layer] = self._select(ctx, self.layer_budgets[..., layer])
        self._deferred.clear()
        return out

    def revote(self, ctx: LayerContext) -> KeepSet:
        """Re-run scoring and head allocation for one layer with the current masks (D6 ``revote``)."""
        keep = self._select(ctx, self.layer_budgets[..., ctx.layer])
        self.keep[ctx.layer] = keep
        return keep

    # ----- selection -----------------------------------------------------------------------

    def _protected(self, device: torch.device) -> torch.Tensor:
        """``[B, P]`` True at the first ``protect_first`` real and the last ``protect_last`` prompt tokens (D4)."""
        p = self.prompt_length
        position = torch.arange(p, device=device)
        first_real = (p - self.real_lengths.to(device))[:, None]
        first = position < first_real + self.press.protect_first
        last = position >= p - self.press.protect_last
        return (first & (position >= first_real)) | last

    def _prompt_token_mask(self, ctx: LayerContext) -> torch.Tensor:
        length = ctx.hidden_in.shape[1]
        mask = torch.zeros(ctx.hidden_in.shape[0], length, dtype=torch.bool, device=ctx.hidden_in.device)
        mask[:, : self.prompt_length] = True if self.prompt_valid is None else self.prompt_valid
        return mask

    def _select(self, ctx: LayerContext, layer_budget: torch.Tensor) -> KeepSet:
        """Head budgets for this layer, the press's scores, and the per-head top-k (Eq. 16)."""
        press = self.press
        unit = int(layer_budget.max())
        ctx.layer_budget = unit
        ctx.window = press.observation_window(unit)
        ctx.group_reduce = press.group_reduce
        scores = (press.score(ctx) if ctx.scores is None else ctx.scores).float()  # [B, Hkv, P]
        if press.protect_first or press.protect_last:
            scores = scores.masked_fill(self._protected(scores.device)[:, None, :], float("inf"))
        if self.prompt_valid is not None:
            scores = scores.masked_fill(~self.prompt_valid[:, None, :], float("-inf"))
        cap = self.real_lengths.to(scores.device)  # built on the CPU when the batch has no padding
        heads = self.config.num_kv_heads
        layer_budget = layer_budget.to(scores.device)
        if press.head_allocation == "uniform":
            head_budgets = torch.minimum(layer_budget.expand(scores.shape[0]), cap)[:, None].expand(-1, heads)
        elif press.head_allocation == "preference":
            votes = ctx.mask_votes()
            p = self.prompt_length
            to_prompt, to_mask = votes[..., :p].sum(-1), votes[..., p:].sum(-1)
            preference = B.prompt_preference(to_prompt, to_mask)
            head_budgets = B.maskkv_head_budgets(
                preference.double(), layer_budget.expand(scores.shape[0]), alpha=press.alpha, prompt_len=cap,
                rounding=press.rounding, min_head_budget=press.min_head_budget,
            )  # fmt: skip
        else:  # adakv: floor plus global top-k over the heads' candidate scores
            candidates = scores[..., : self.prompt_length - ctx.window]
            if unit <= ctx.window:
                head_budgets = torch.full_like(cap, unit)[:, None].expand(-1, heads)
            else:
                head_budgets = B.adakv_head_budgets(candidates, unit, floor_fraction=press.adakv_floor, window=ctx.window)
            head_budgets = torch.minimum(head_budgets, cap[:, None])
        indices, valid = B.topk_keep_indices(scores, head_budgets)
        return KeepSet(indices=indices, valid=valid)



def _notice_online_once() -> None:
    """Boundary-aware budgets without a profile: say once per process that the online variant runs."""
    global _ONLINE_NOTICE_GIVEN
    if not _ONLINE_NOTICE_GIVEN:
        _ONLINE_NOTICE_GIVEN = True
        logger.warning(
            "MaskKV: no layer profile given, using the online variant (layer importance measured on each "
            "request; the full prompt K/V of every layer is held until the first pass ends). Make a profile "
            "with `maskkv calibrate` and pass MaskKVPress(profile=PATH) for layer-by-layer eviction."
        )
