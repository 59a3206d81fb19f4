"""Budget allocation math for MaskKV and its baselines: pure, vectorised torch functions.

Based on "Mask Tokens as Prophet: Fine-Grained Cache Eviction for Efficient dLLM Inference" (Huang et al., 2025,
arXiv 2510.09309), Eqs. 8-16, and on the allocation rules of PyramidKV, SqueezeAttention and AdaKV as restated in
`spec/baselines.md`. Worked numbers: `spec/budgets.md`.

Conventions shared by every function here:

* **Unit.** A budget is absolute: the number of prompt K/V pairs kept by one KV head in one layer. ``budget`` (B) is the
  average of that number over layers and KV heads, so a request keeps ``B * num_layers * num_kv_heads`` prompt pairs.
  For the SnapKV-based baselines the budget *includes* the protected observation window (`baselines.md` 1.2).
* **Integers.** Every returned budget is an ``int64`` tensor on the device of the input (on the CPU for
  ``uniform_budgets`` and ``pyramidkv_layer_budgets``, which take no tensor input but ``prompt_len``).
* **Rounding.** ``rounding="exact"`` (default for MaskKV, `maskkv.md` D2b): floor each real-valued share, then hand
  the leftover units one by one to the largest fractional remainders (Hamilton / largest remainder). Remainders are
  compared after rounding to 1e-6, and ties go to the lower index (layer or head). The budgets then sum *exactly* to
  the target. ``rounding="floor"`` reproduces the paper's floors (Eqs. 9, 13 and 15) and loses up to one unit per
  layer or head. The baselines use ``rounding="original"`` (their reference integer arithmetic) or ``"exact"``.
* **Float snapping.** Values that are integers in exact arithmetic can come out as 76.999...; every floor here is
  ``floor(x + 1e-6)`` on float64 (`maskkv.md` 5.4). This hides float64 noise, not the noise of float32 inputs.
* **Cap at the prompt length** (`maskkv.md` D8). No unit ever exceeds ``prompt_len`` (n). When a real share exceeds n,
  the surplus is water-filled: every unit gets ``min(n, lam * share)`` with one common ``lam >= 1`` chosen so the
  total is kept, i.e. the surplus goes to the uncapped units in proportion to their pre-cap shares (if only
  zero-share units remain uncapped, they split the rest equally). The result is then integerised as above, so the
  total is ``min(target, units * n)``. SqueezeAttention's ``rounding="original"`` caps without redistributing, as
  its reference does. ``budget >= n`` gives every unit exactly n in every function: the press is a no-op.
* **Ties in token selection** (Eq. 16, AdaKV's global top-k): the lower position (lower head, then lower position for
  flattened scores) wins. Selection uses a stable descending sort, not ``torch.topk``, whose tie order is unspecified.

Nothing here loops over heads or tokens. The only Python loops are a bisection (about log2(n) vectorised steps) in
``min_head_budget`` handling and the split-point enumeration of SqueezeAttention's k-means, which is one tensor op.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "adakv_head_budgets",
    "effective_window",
    "layer_importance",
    "maskkv_head_budgets",
    "maskkv_layer_budgets",
    "prompt_preference",
    "pyramidkv_layer_budgets",
    "squeeze_layer_budgets",
    "topk_keep_indices",
    "uniform_budgets",
]

_SNAP = 1e-6  # floor(x + _SNAP): absorbs float64 noise on values that are integers in exact arithmetic
_REM_QUANTUM = 1e-6  # remainders closer than this are ties (then the lower index wins)
_MAX_KMEANS_CANDIDATES = 5_000_000  # split-point combinations SqueezeAttention's exact k-means may enumerate


# ----------------------------------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------------------------------


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__}); pass e.g. int({name}).")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    return int(value)


def _check_budget(budget: object, name: str = "budget") -> int:
    if isinstance(budget, numbers.Integral) and not isinstance(budget, bool) and budget <= 0:
        raise ValueError(
            f"{name} must be a positive number of prompt K/V pairs per KV head per layer, got {budget}; "
            "to disable eviction use a budget >= the prompt length instead."
        )
    return _check_int(budget, name, 1)


def _check_fraction(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a real number in [0, 1], got {value!r}.")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}; the paper's defaults are alpha=0.1, beta=0.4.")
    return float(value)


def _check_choice(value: str, name: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}.")
    return value


def _check_finite(t: torch.Tensor, name: str, nonnegative: bool = False) -> None:
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the statistics that produced it.")
    if nonnegative and (t < 0).any():
        raise ValueError(f"{name} must be >= 0, got a minimum of {t.min().item()}.")


def _prompt_len_tensor(prompt_len: int | torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """Validate ``prompt_len`` (an int or an integer tensor of per-sample lengths) and return it as int64."""
    if prompt_len is None:
        return None
    if isinstance(prompt_len, torch.Tensor):
        if prompt_len.is_floating_point() or prompt_len.dtype == torch.bool:
            raise ValueError(f"prompt_len must hold integers, got dtype {prompt_len.dtype}; pass prompt_len.long().")
        if (prompt_len < 0).any():
            raise ValueError(f"prompt_len must be >= 0, got a minimum of {prompt_len.min().item()}.")
        return prompt_len.to(device=device, dtype=torch.int64)
    return torch.tensor(_check_int(prompt_len, "prompt_len", 0), dtype=torch.int64, device=device)


def _broadcast(shape_a: Sequence[int], shape_b: Sequence[int], what: str) -> torch.Size:
    try:
        return torch.broadcast_shapes(tuple(shape_a), tuple(shape_b))
    except RuntimeError as err:
        raise ValueError(f"{what}: shapes {tuple(shape_a)} and {tuple(shape_b)} do not broadcast ({err}).") from None


def _floor_snap(x: float) -> int:
    """Python-float version of floor(x + 1e-6)."""
    return math.floor(x + _SNAP)


# ----------------------------------------------------------------------------------------------------------------------
# allocation core: water-filling under a cap, then exact-sum integerisation
# ----------------------------------------------------------------------------------------------------------------------


def _waterfill(x0: torch.Tensor, total: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
    """Cap real shares at ``cap`` and hand the surplus to the uncapped units in proportion to their shares.

    Args:
        x0: ``[..., U]`` float64 non-negative shares whose sum is ``total`` in exact arithmetic (``total`` may be
            smaller when it was clipped to ``U * cap``).
        total: ``[...]`` float64 target sum, already ``<= U * cap``.
        cap: ``[...]`` float64 per-unit maximum.

    Returns:
        ``[..., U]`` float64 ``min(cap, lam * x0)`` with the common ``lam`` that restores ``total``. When every
        positive share is capped and ``total`` is still not reached, the zero-share units split the rest equally.
        Rows where no share exceeds ``cap`` are returned unchanged (bit for bit).
    """
    num_units = x0.shape[-1]
    cap_u = cap.unsqueeze(-1)
    tol = 1e-12 * (1.0 + cap_u)
    untouched = (x0 <= cap_u + tol).all(dim=-1, keepdim=True)

    s, order = torch.sort(x0, dim=-1, descending=True, stable=True)
    m = torch.arange(num_units, device=x0.device, dtype=x0.dtype)  # units capped before sorted position m
    rest = torch.flip(torch.cumsum(torch.flip(s, [-1]), dim=-1), [-1])  # rest[m] = sum of s[m:]
    safe_rest = torch.where(rest > 0, rest, torch.ones_like(rest))
    lam = (total.unsqueeze(-1) - m * cap_u) / safe_rest
    ok = (rest > 0) & (lam * s <= cap_u + tol)  # the m-th largest is not capped under lam_m
    has_ok = ok.any(dim=-1, keepdim=True)
    m_star = torch.argmax(ok.to(torch.int8), dim=-1, keepdim=True)  # first True
    lam_star = torch.gather(lam, -1, m_star)
    filled = torch.where(m < m_star, cap_u, lam_star * s)

    # Every positive share capped: the zero-share units split what is left equally.
    n_pos = (s > 0).sum(dim=-1, keepdim=True)
    n_zero = (num_units - n_pos).clamp(min=1)
    even = ((total.unsqueeze(-1) - n_pos * cap_u) / n_zero).clamp(min=0)
    filled = torch.where(has_ok, filled, torch.where(s > 0, cap_u, even))
    filled = torch.minimum(filled, cap_u)

    out = torch.empty_like(filled).scatter_(-1, order, filled)
    return torch.where(untouched, x0, out)


def _largest_remainder(x: torch.Tensor, total: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
    """Integerise real shares so they sum exactly to ``total`` (Hamilton's method, ties to the lower index).

    Args:
        x: ``[..., U]`` float64 shares, each ``<= cap``, summing to ``total`` in exact arithmetic.
        total: ``[...]`` int64 target, ``<= U * cap``.
        cap: ``[...]`` int64 per-unit maximum.

    Returns:
        ``[..., U]`` int64.
    """
    cap_u = cap.unsqueeze(-1)
    fl = torch.minimum(torch.floor(x + _SNAP).clamp(min=0).to(torch.int64), cap_u)
    leftover = total - fl.sum(dim=-1)
    eligible = fl < cap_u
    if (leftover < 0).any() or (leftover > eligible.sum(dim=-1)).any():
        raise RuntimeError(
            "largest-remainder rounding could not reach the target sum; the shares do not add up to the total "
            "(this is a bug in maskkv.presses.budgets, please report the inputs)."
        )
    rem = (x - fl.to(x.dtype)).clamp(min=0.0)
    key = torch.round(rem / _REM_QUANTUM).to(torch.int64)
    key = torch.where(eligible, key, torch.full_like(key, -1))
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices  # ties: lower index first
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(x.shape[-1], device=x.device).expand_as(order))
    return fl + (rank < leftover.unsqueeze(-1)).to(torch.int64)


def _allocate(
    x0: torch.Tensor, total: torch.Tensor, cap: torch.Tensor | None, rounding: str
) -> torch.Tensor:
    """Water-fill real shares under ``cap``, then integerise (``"exact"``: largest remainder; ``"floor"``: floor).

    ``x0`` is ``[..., U]`` float64 summing to ``total`` (``[...]`` int64) in exact arithmetic; ``cap`` is ``[...]``
    int64 or None (no cap). The exact mode returns ``min(total, U * cap)`` in total.
    """
    batch_shape = x0.shape[:-1]
    total = total.expand(batch_shape)
    if cap is None:
        cap = total
    cap = cap.expand(batch_shape)
    total_eff = torch.minimum(total, x0.shape[-1] * cap)
    x = _waterfill(x0, total_eff.to(torch.float64), cap.to(torch.float64))
    if rounding == "floor":
        return torch.minimum(torch.floor(x + _SNAP).clamp(min=0).to(torch.int64), cap.unsqueeze(-1))
    return _largest_remainder(x, total_eff, cap)


def _raise_to_floor(b: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """Raise every unit to ``floor`` and take the units from the largest ones (`maskkv.md` D3b); the sum is kept.

    Args:
        b: ``[..., U]`` int64 budgets.
        floor: ``[...]`` int64 minimum, already ``<= b.sum(-1) // U``.

    Returns:
        ``[..., U]`` int64: the largest units are cut down to a common level ``L >= floor``; the units that cutting
        to ``L`` over-removes go back to the cut units with the lowest indices.
    """
    floor_u = floor.unsqueeze(-1)
    raised = torch.maximum(b, floor_u)
    excess = (raised - b).sum(dim=-1)

    def removed(level: torch.Tensor) -> torch.Tensor:
        return (raised - level.unsqueeze(-1)).clamp(min=0).sum(dim=-1)

    lo = floor.clone()  # removed(lo) >= excess holds because sum(b) >= U * floor
    hi = raised.max(dim=-1).values
    while bool((lo < hi).any()):  # bisection for the largest level with removed(level) >= excess
        mid = (lo + hi + 1) // 2
        good = removed(mid) >= excess
        lo = torch.where(good, mid, lo)
        hi = torch.where(good, hi, mid - 1)
    level = lo.unsqueeze(-1)
    give_back = (removed(lo) - excess).unsqueeze(-1)
    above = raised > level
    rank_above = torch.cumsum(above.to(torch.int64), dim=-1) - 1
    return torch.minimum(raised, level) + (above & (rank_above < give_back)).to(torch.int64)


# ----------------------------------------------------------------------------------------------------------------------
# MaskKV
# ----------------------------------------------------------------------------------------------------------------------


def layer_importance(
    hidden_in: torch.Tensor, hidden_out: torch.Tensor, token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Layer importance I(l) = 1 - mean_i cos(h_in_i, h_out_i) (Eq. 8).

    Inputs are one layer's residual stream, per `maskkv.md` 5.2 / D13: ``hidden_in`` is the stream entering layer l
    (before the attention norm) and ``hidden_out`` is the stream right after the attention residual add
    (``h_in + o_proj(attn)``), both for the tokens of pass 0. The offline profile is the mean of this value over the
    calibration samples (one call per layer and sample batch; average the results).

    Args:
        hidden_in: ``[..., n, d_model]`` any float dtype.
        hidden_out: same shape as ``hidden_in``.
        token_mask: optional ``[..., n]`` bool, True for the tokens that count (e.g. non-padding, or prompt rows only
            for the "prompt positions" option). Default: all n tokens (the spec's default token set).

    Returns:
        ``[...]`` float32 importance in [0, 2]; larger = more important layer.

    Deviations: the cosine is computed in fp32 (spec decision) with torch's eps=1e-8 on the norms, and clamped to
    [-1, 1] so fp32 noise cannot produce a negative importance.
    """
    if hidden_in.shape != hidden_out.shape:
        raise ValueError(
            f"hidden_in {tuple(hidden_in.shape)} and hidden_out {tuple(hidden_out.shape)} must have the same shape "
            "[..., n, d_model]."
        )
    if hidden_in.dim() < 2:
        raise ValueError(f"hidden states must be [..., n, d_model], got shape {tuple(hidden_in.shape)}.")
    cos = F.cosine_similarity(hidden_in.float(), hidden_out.float(), dim=-1, eps=1e-8).clamp(-1.0, 1.0)  # [..., n]
    if token_mask is None:
        return 1.0 - cos.mean(dim=-1)
    if token_mask.dtype != torch.bool:
        raise ValueError(f"token_mask must be a bool tensor, got dtype {token_mask.dtype}.")
    try:
        mask = torch.broadcast_to(token_mask.to(cos.device), cos.shape)
    except RuntimeError:
        raise ValueError(
            f"token_mask shape {tuple(token_mask.shape)} does not broadcast to the hidden states' [..., n] = "
            f"{tuple(cos.shape)}."
        ) from None
    count = mask.sum(dim=-1)
    if (count == 0).any():
        raise ValueError("token_mask selects no token for some rows; Eq. 8 needs at least one token per row.")
    return 1.0 - (cos * mask).sum(dim=-1) / count


def maskkv_layer_budgets(
    importance: torch.Tensor,
    budget: int,
    beta: float = 0.4,
    prompt_len: int | torch.Tensor | None = None,
    boundary_layers: Sequence[int] | None = None,
    rounding: str = "exact",
) -> torch.Tensor:
    """Boundary-aware layer budgets k_l (Eqs. 9-13).

    ``k_base = floor(beta * B)`` (Eq. 9, with k_p = D * B), ``k_imp = D * B - D * k_base`` (Eq. 10); ``k_imp`` is split
    between the boundary group and the middle group in proportion to their summed importance I_B and I_M
    (Eqs. 11-12, real-valued), and every layer of a group gets an equal share on top of ``k_base`` (Eq. 13). Only I_B
    and I_M matter: the individual values inside a group do not.

    Args:
        importance: ``[..., D]`` layer importance I(l) >= 0 (Eq. 8): the offline profile ``[D]``, or per-sample
            profiles ``[batch, D]`` (online variant).
        budget: B, average prompt pairs kept per KV head per layer (> 0).
        beta: layer base rate in [0, 1] (paper default 0.4).
        prompt_len: n, the prompt length (int, or an int64 tensor broadcastable to ``importance.shape[:-1]`` for
            per-sample lengths); None means no cap.
        boundary_layers: S_bound, default ``(0, D - 1)`` (`maskkv.md` D1a); negative indices allowed, duplicates
            merged. The other layers form S_mid.
        rounding: ``"exact"`` (default, `maskkv.md` D2b): largest remainder over the layers, ties to the lower layer,
            so ``sum_l k_l = D * min(B, n)`` exactly. ``"floor"``: the paper's Eq. 13 floors, which lose
            ``D*B - sum_l k_l`` in [0, D-1] units.

    Returns:
        ``[..., D]`` int64 per-head average budget of every layer. Every ``k_l <= n``; ``k_l >= min(k_base, n)``.

    Deviations from the paper: (1) exact-sum rounding by default; (2) the cap at n with proportional water-filling of
    the surplus (`maskkv.md` D8b; the paper has no cap), so ``B >= n`` gives every layer n; (3) if I_B + I_M = 0 the
    importance budget is split in proportion to the group sizes (the paper divides by zero); (4) an empty group
    (D <= 2, or ``boundary_layers=()``) simply receives nothing.
    """
    budget = _check_budget(budget)
    beta = _check_fraction(beta, "beta")
    rounding = _check_choice(rounding, "rounding", ("exact", "floor"))
    if not isinstance(importance, torch.Tensor) or importance.dim() < 1 or importance.shape[-1] < 1:
        raise ValueError("importance must be a tensor [..., num_layers] with at least one layer.")
    num_layers = importance.shape[-1]
    imp = importance.to(torch.float64)
    _check_finite(imp, "importance", nonnegative=True)
    n = _prompt_len_tensor(prompt_len, imp.device)
    batch_shape = imp.shape[:-1] if n is None else _broadcast(imp.shape[:-1], n.shape, "importance vs prompt_len")

    if boundary_layers is None:
        boundary_layers = (0, num_layers - 1)
    bound = torch.zeros(num_layers, dtype=torch.bool, device=imp.device)
    for layer in boundary_layers:
        layer = _check_int(layer, "boundary layer index", -num_layers)
        if layer >= num_layers:
            raise ValueError(f"boundary layer index {layer} is out of range for {num_layers} layers.")
        bound[layer] = True
    n_bound = int(bound.sum())
    n_mid = num_layers - n_bound

    k_base = _floor_snap(beta * budget)  # Eq. 9: floor(beta * k_p / D) with k_p = D * B
    k_imp = num_layers * budget - num_layers * k_base  # Eq. 10
    i_b = (imp * bound).sum(dim=-1)
    i_m = (imp * ~bound).sum(dim=-1)
    i_tot = i_b + i_m
    size_frac = torch.full_like(i_b, n_bound / num_layers)  # fallback when every I(l) is 0
    frac_b = torch.where(i_tot > 0, i_b / torch.where(i_tot > 0, i_tot, 1.0), size_frac)
    k_group_b = k_imp * frac_b  # Eq. 11 (real-valued)
    k_group_m = k_imp - k_group_b  # Eq. 12
    share_b = (k_group_b / max(n_bound, 1)).unsqueeze(-1)
    share_m = (k_group_m / max(n_mid, 1)).unsqueeze(-1)
    real = k_base + torch.where(bound, share_b, share_m)  # Eq. 13 before the floor, [..., D]
    real = real.expand(*batch_shape, num_layers)

    total = torch.tensor(num_layers * budget, dtype=torch.int64, device=imp.device)
    return _allocate(real, total, n, rounding)


def prompt_preference(s_mask_to_prompt: torch.Tensor, s_mask_to_mask: torch.Tensor) -> torch.Tensor:
    """Prompt preference P = S_m->p / (S_m->p + S_m->m) of every head (Eq. 14).

    Args:
        s_mask_to_prompt: ``[..., H]`` sum of the mask queries' attention over prompt keys (= sum_j I_j of Eq. 7).
        s_mask_to_mask: ``[..., H]`` the same sum over response (mask) keys.

    Returns:
        ``[..., H]`` float P in [0, 1] (0 where both sums are 0). For GQA pass the sums over each KV head's query
        group (`maskkv.md` D5a). At pass 0, S_m->p + S_m->m = n_r, so P = S_m->p / n_r.
    """
    _check_finite(s_mask_to_prompt, "s_mask_to_prompt", nonnegative=True)
    _check_finite(s_mask_to_mask, "s_mask_to_mask", nonnegative=True)
    denom = s_mask_to_prompt + s_mask_to_mask
    return torch.where(denom > 0, s_mask_to_prompt / torch.where(denom > 0, denom, 1), torch.zeros_like(denom))


def maskkv_head_budgets(
    prompt_preference: torch.Tensor,
    layer_budget: int | torch.Tensor,
    alpha: float = 0.1,
    prompt_len: int | torch.Tensor | None = None,
    rounding: str = "exact",
    min_head_budget: int = 0,
) -> torch.Tensor:
    """Prompt-preference head budgets k_{l,h} (Eqs. 14-15).

    ``k_{l,h} = floor(alpha * k_l + (1 - alpha) * N_h * k_l * P_hat_h)`` with ``P_hat = P / sum_h P`` and
    ``N_h`` = number of KV heads; before the floor the heads of a layer sum to ``N_h * k_l``.

    Args:
        prompt_preference: ``[..., H]`` P of Eq. 14 (see ``prompt_preference()``), e.g. ``[batch, H]`` for one layer
            or ``[batch, D, H]`` for all layers at once. It is normalised here; any non-negative scale works.
        layer_budget: k_l, an int or an int64 tensor broadcastable to ``prompt_preference.shape[:-1]`` (e.g. ``[D]``
            against ``[batch, D, H]``).
        alpha: head base rate in [0, 1] (paper default 0.1).
        prompt_len: n (int or per-sample int64 tensor broadcastable to the leading shape); None means no cap.
        rounding: ``"exact"`` (default): largest remainder over the heads, ties to the lower head, so
            ``sum_h k_{l,h} = N_h * min(k_l, n)``. ``"floor"``: the paper's Eq. 15 floor (loses up to N_h - 1 units).
        min_head_budget: optional minimum per head (`maskkv.md` D3b, default 0 = faithful). Heads below it are raised
            and the units are taken from the largest heads (cut down to a common level); the layer's sum is kept.
            It is lowered to ``sum_h k_{l,h} // N_h`` where the layer cannot give every head that much.

    Returns:
        ``[..., H]`` int64 budgets, each in ``[floor(alpha * min(k_l, n)), n]`` (when ``min_head_budget`` is 0).

    Deviations from the paper: exact-sum rounding by default; ``k_l`` is first capped at n and heads are capped at n,
    the surplus water-filled over the other heads in proportion to their Eq. 15 shares (`maskkv.md` D8b), so
    ``k_l >= n`` gives every head n; if ``sum_h P = 0`` the heads share uniformly (the paper divides by zero).
    """
    alpha = _check_fraction(alpha, "alpha")
    rounding = _check_choice(rounding, "rounding", ("exact", "floor"))
    min_head_budget = _check_int(min_head_budget, "min_head_budget", 0)
    if not isinstance(prompt_preference, torch.Tensor) or prompt_preference.dim() < 1:
        raise ValueError("prompt_preference must be a tensor [..., num_kv_heads].")
    num_heads = prompt_preference.shape[-1]
    if num_heads < 1:
        raise ValueError("prompt_preference has no heads (last dimension is 0).")
    pref = prompt_preference.to(torch.float64)
    _check_finite(pref, "prompt_preference", nonnegative=True)
    device = pref.device

    if isinstance(layer_budget, torch.Tensor):
        if layer_budget.is_floating_point() or layer_budget.dtype == torch.bool:
            raise ValueError(f"layer_budget must hold integers, got dtype {layer_budget.dtype}.")
        if (layer_budget < 0).any():
            raise ValueError(f"layer_budget must be >= 0, got a minimum of {layer_budget.min().item()}.")
        k_l = layer_budget.to(device=device, dtype=torch.int64)
    else:
        k_l = torch.tensor(_check_int(layer_budget, "layer_budget", 0), dtype=torch.int64, device=device)
    n = _prompt_len_tensor(prompt_len, device)
    batch_shape = _broadcast(pref.shape[:-1], k_l.shape, "prompt_preference vs layer_budget")
    if n is not None:
        batch_shape = _broadcast(batch_shape, n.shape, "prompt_preference vs prompt_len")
        k_l = torch.minimum(k_l, n)  # D8: a layer never averages more than the prompt
    k_l = k_l.expand(batch_shape)

    total_p = pref.sum(dim=-1, keepdim=True)
    p_hat = torch.where(total_p > 0, pref / torch.where(total_p > 0, total_p, 1.0), 1.0 / num_heads)
    k = k_l.to(torch.float64).unsqueeze(-1)
    real = alpha * k + (1.0 - alpha) * num_heads * k * p_hat  # Eq. 15 before the floor
    real = real.expand(*batch_shape, num_heads)

    out = _allocate(real, num_heads * k_l, n, rounding)
    if min_head_budget > 0:
        floor = torch.minimum(torch.full_like(k_l, min_head_budget), out.sum(dim=-1) // num_heads)
        out = _raise_to_floor(out, floor)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# baselines
# ----------------------------------------------------------------------------------------------------------------------


def effective_window(budget: int, window: int = 32) -> int:
    """Effective SnapKV observation window w_eff = min(w, floor(B_x / 2)) for a unit budget B_x (`baselines.md` 1.3).

    Not in the paper (which pairs w = 32 with B = 16 and 32 without saying how); equals w for B_x >= 2 * w.
    """
    budget = _check_int(budget, "budget", 0)
    window = _check_int(window, "window", 0)
    return min(window, budget // 2)


def uniform_budgets(
    budget: int, num_layers: int, num_kv_heads: int, prompt_len: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Uniform budgets (SnapKV-style): every KV head of every layer keeps ``min(B, n)``.

    Args:
        budget: B (> 0). num_layers, num_kv_heads: sizes (>= 1).
        prompt_len: n (int, or int64 tensor ``[batch]``); None means no cap.

    Returns:
        ``[num_layers, num_kv_heads]`` int64, or ``[*prompt_len.shape, num_layers, num_kv_heads]`` for a tensor n.
    """
    budget = _check_budget(budget)
    num_layers = _check_int(num_layers, "num_layers", 1)
    num_kv_heads = _check_int(num_kv_heads, "num_kv_heads", 1)
    n = _prompt_len_tensor(prompt_len, torch.device("cpu"))
    b = torch.tensor(budget, dtype=torch.int64)
    if n is not None:
        b = torch.minimum(b, n)
    return b[..., None, None].expand(*b.shape, num_layers, num_kv_heads).clone()


def pyramidkv_layer_budgets(
    budget: int,
    num_layers: int,
    prompt_len: int | torch.Tensor,
    beta: int = 20,
    window: int = 32,
    rounding: str = "original",
) -> torch.Tensor:
    """PyramidKV layer budgets: a linear schedule from the first (largest) to the last (smallest) layer.

    Original integer schedule (`baselines.md` 3; KVCache-Factory ``PyramidKVCluster``), with B including the window::

        Bb = B - w; mn = Bb // beta; mx = 2*Bb - mn
        if mx >= n - w: mx = n - w; mn = 2*Bb - mx
        step = (mx - mn) // (D - 1); cap_l = mx - l*step
        n < B: keep all n;  n < 2*Bb: every layer keeps Bb + w;  else layer l keeps cap_l + w

    Args:
        budget: B (> window), kept pairs per KV head per layer on average, window included.
        num_layers: D (>= 1).
        prompt_len: n (int, or int64 tensor ``[batch]`` of per-sample lengths).
        beta: PyramidKV's ratio (an integer >= 1, paper 20; unrelated to MaskKV's beta).
        window: the observation window w actually used (already effective: pass ``effective_window(B, 32)`` for
            small budgets; w = 32 when B >= 64).
        rounding: ``"original"`` (default): the integer schedule above, whose floored step makes the mean budget
            >= B (e.g. 142.5 for B = 128). ``"exact"``: the real schedule ``mx - l*(mx - mn)/(D - 1)`` integerised by
            largest remainder (ties to the lower layer), so the mean is exactly B (option of `baselines.md` 3).

    Returns:
        ``[D]`` int64 (``[*prompt_len.shape, D]`` for a tensor n): kept pairs per KV head in layer l, window
        included; every value <= n.

    Deviations: D = 1 keeps ``min(B, n)`` (the original divides by zero).
    """
    budget = _check_budget(budget)
    num_layers = _check_int(num_layers, "num_layers", 1)
    beta = _check_int(beta, "beta (PyramidKV)", 1)
    window = _check_int(window, "window", 0)
    rounding = _check_choice(rounding, "rounding", ("original", "exact"))
    if budget <= window:
        raise ValueError(
            f"PyramidKV needs budget > window, got budget={budget}, window={window}; pass "
            f"window=effective_window({budget}, {window}) = {effective_window(budget, window)}."
        )
    n = _prompt_len_tensor(prompt_len, torch.device("cpu"))
    if n is None:
        raise ValueError("prompt_len is required for PyramidKV (its schedule depends on the prompt length).")
    layers = torch.arange(num_layers, dtype=torch.int64)
    if num_layers == 1:
        return torch.minimum(torch.tensor(budget), n)[..., None].expand(*n.shape, 1).clone()

    bb = budget - window
    mn0 = bb // beta
    mx0 = 2 * bb - mn0
    clamp = mx0 >= n - window
    mx = torch.where(clamp, n - window, torch.tensor(mx0))
    mn = torch.where(clamp, 2 * bb - mx, torch.tensor(mn0))
    if rounding == "original":
        step = torch.div(mx - mn, num_layers - 1, rounding_mode="floor")
        pyramid = mx[..., None] - layers * step[..., None] + window
    else:
        real = mx[..., None].double() - layers.double() * ((mx - mn).double() / (num_layers - 1))[..., None]
        pyramid = _allocate(real, num_layers * torch.tensor(bb, dtype=torch.int64), None, "exact") + window
    uniform = torch.full_like(pyramid, budget)
    keep_all = n[..., None].expand_as(pyramid)
    out = torch.where((n < 2 * bb)[..., None], uniform, pyramid)
    return torch.where((n < budget)[..., None], keep_all, out)


def _exact_1d_kmeans_top_group(values: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact 1-D k-means: the members of the cluster with the largest centre, and whether k clusters exist.

    In 1-D the optimal clusters are contiguous in sorted order, so every set of ``groups - 1`` split points is tried and
    the smallest within-cluster sum of squares wins (earliest split points on ties, within 1e-12 relative).

    Args:
        values: ``[..., D]`` float64.
    Returns:
        (``[..., D]`` bool, True for the top cluster in original layer order; ``[...]`` bool, True where at least
        ``groups`` distinct values exist).
    """
    d = values.shape[-1]
    sorted_vals, order = torch.sort(values, dim=-1, stable=True)
    centred = sorted_vals - sorted_vals.mean(dim=-1, keepdim=True)
    zeros = torch.zeros_like(centred[..., :1])
    p1 = torch.cat([zeros, torch.cumsum(centred, dim=-1)], dim=-1)  # [..., D+1]
    p2 = torch.cat([zeros, torch.cumsum(centred * centred, dim=-1)], dim=-1)
    splits = torch.tensor(list(itertools.combinations(range(1, d), groups - 1)), dtype=torch.int64)  # [C, k-1]
    bounds = torch.cat(
        [torch.zeros(len(splits), 1, dtype=torch.int64), splits, torch.full((len(splits), 1), d, dtype=torch.int64)],
        dim=1,
    )  # [C, k+1]
    lo, hi = bounds[:, :-1], bounds[:, 1:]  # [C, k]
    s1 = p1[..., hi] - p1[..., lo]  # [..., C, k]
    s2 = p2[..., hi] - p2[..., lo]
    sse = (s2 - s1 * s1 / (hi - lo).to(values.dtype)).sum(dim=-1)  # [..., C]
    best = sse.min(dim=-1, keepdim=True).values
    tol = 1e-12 * (1.0 + p2[..., -1:].abs())
    choice = torch.argmax((sse <= best + tol).to(torch.int8), dim=-1)  # first (earliest) candidate within tolerance
    start = splits[choice, -1]  # [...] sorted position where the top cluster begins
    in_top_sorted = torch.arange(d) >= start.unsqueeze(-1)
    in_top = torch.empty_like(in_top_sorted).scatter_(-1, order, in_top_sorted)
    distinct = 1 + (sorted_vals[..., 1:] > sorted_vals[..., :-1]).sum(dim=-1)
    return in_top, distinct >= groups


def squeeze_layer_budgets(
    layer_similarity: torch.Tensor,
    budget: int,
    prompt_len: int | torch.Tensor | None = None,
    groups: int = 3,
    least_fraction: float = 0.4,
    rounding: str = "original",
) -> torch.Tensor:
    """SqueezeAttention layer budgets: 1-D k-means of the layer similarities, the least important group gets 40% of B.

    `baselines.md` 4 (absolute-budget port of ``hetailang/SqueezeAttention``): cluster the D layer scores into
    ``groups`` clusters; the cluster with the largest centre (highest similarity = least important) is G3 and each
    of its layers gets ``b3 = int(least_fraction * B)``; every other layer gets
    ``b12 = int((D*B - |G3| * least_fraction * B) / (D - |G3|))`` (the real 0.4*B inside, as in the original).
    Groups 1 and 2 get the same budget; the clusters only isolate G3.

    Args:
        layer_similarity: ``[..., D]`` mean cosine similarity between a layer's input stream and its stream after the
            attention residual add, i.e. ``1 - I(l)`` of Eq. 8 (higher = less important). ``[batch, D]`` for the
            per-sample (online) original.
        budget: B (> 0), window included.
        prompt_len: n (int or int64 tensor broadcastable to the leading shape); None means no cap.
        groups: number of clusters (>= 2; the paper uses 3).
        least_fraction: share of B given to each layer of G3, in [0, 1] (paper 0.4).
        rounding: ``"original"`` (default): int truncation, ``sum_l b_l <= D*B``; each b_l is capped at n without
            redistribution, as in the original. ``"exact"``: the real-valued b3/b12 water-filled under n and
            integerised by largest remainder, so ``sum_l b_l = D * min(B, n)``.

    Returns:
        ``[..., D]`` int64 per-head budget of every layer (window included), each <= n.

    Deviations: k-means is an exact, deterministic 1-D search (the original uses sklearn KMeans without a seed);
    fewer than ``groups`` distinct values give uniform B; ``B >= n`` keeps all n in every layer (the original would
    still give G3 only 40% at B == n).
    """
    budget = _check_budget(budget)
    groups = _check_int(groups, "groups", 2)
    least_fraction = _check_fraction(least_fraction, "least_fraction")
    rounding = _check_choice(rounding, "rounding", ("original", "exact"))
    if not isinstance(layer_similarity, torch.Tensor) or layer_similarity.dim() < 1:
        raise ValueError("layer_similarity must be a tensor [..., num_layers].")
    num_layers = layer_similarity.shape[-1]
    if num_layers < 1:
        raise ValueError("layer_similarity has no layers (last dimension is 0).")
    n_candidates = math.comb(num_layers - 1, groups - 1) if num_layers >= groups else 0
    if n_candidates > _MAX_KMEANS_CANDIDATES:
        raise ValueError(
            f"exact k-means over {num_layers} layers with groups={groups} would try {n_candidates} splits; "
            "use groups=3 (the paper's setting) or fewer layers."
        )
    sim = layer_similarity.detach().to(device="cpu", dtype=torch.float64)
    _check_finite(sim, "layer_similarity")
    n = _prompt_len_tensor(prompt_len, torch.device("cpu"))
    batch_shape = sim.shape[:-1] if n is None else _broadcast(sim.shape[:-1], n.shape, "layer_similarity vs prompt_len")
    sim = sim.expand(*batch_shape, num_layers)

    if num_layers >= groups:
        in_g3, clustered = _exact_1d_kmeans_top_group(sim, groups)
    else:
        in_g3 = torch.zeros(sim.shape, dtype=torch.bool)
        clustered = torch.zeros(batch_shape, dtype=torch.bool)
    n_g3 = in_g3.sum(dim=-1, keepdim=True).to(torch.float64)
    b3_real = least_fraction * budget
    b12_real = (num_layers * budget - n_g3 * b3_real) / (num_layers - n_g3).clamp(min=1)
    real = torch.where(in_g3, torch.full_like(sim, b3_real), b12_real)
    real = torch.where(clustered.unsqueeze(-1), real, torch.full_like(sim, float(budget)))  # uniform fallback

    if rounding == "exact":
        total = torch.tensor(num_layers * budget, dtype=torch.int64)
        out = _allocate(real, total, n, "exact")
    else:
        out = torch.floor(real + _SNAP).to(torch.int64)
        if n is not None:
            n_u = n.unsqueeze(-1)
            out = torch.where(n_u <= budget, n_u, torch.minimum(out, n_u))  # B >= n: no compression
    return out.to(layer_similarity.device)


def adakv_head_budgets(
    scores: torch.Tensor,
    layer_budget: int,
    floor_fraction: float = 0.2,
    window: int = 0,
) -> torch.Tensor:
    """AdaKV (Ada-SnapKV) head budgets inside one layer: a uniform floor plus a global top-k over all heads.

    `baselines.md` 5 (AdaKV ``AdaptiveSnapKVCluster``)::

        Bb = B - w;  F = int(alpha * Bb)
        n_h = number of the H*Bb globally largest candidate scores (all heads pooled) that belong to head h
        c_h = round((1 - alpha) * n_h + F)      # float32, round half to even
        head h keeps c_h candidates + the w window tokens

    Args:
        scores: ``[batch, H, n_cand]`` pooled SnapKV scores of the prefix candidates only (the window's own positions
            excluded), GQA-reduced to KV heads. ``-inf`` is allowed (never-kept padding); NaN is not.
        layer_budget: B of this layer (per-head average, window included, > window).
        floor_fraction: alpha in [0, 1] (paper 0.2).
        window: number of window tokens the caller protects (w_eff), added back to every head's budget.

    Returns:
        ``[batch, H]`` int64 kept pairs per head, window included (``c_h + w``); select the top ``c_h`` candidates per
        head with ``topk_keep_indices(scores, budgets - window)``. The sum is generally *not* ``H * B`` (the original
        truncates F and rounds per head; `budgets.md` 4). If ``Bb >= n_cand`` (i.e. B >= n) every head keeps all
        ``n_cand + w``. Deviation: the original compresses when ``Bb == n_cand``, where the truncated F can make a
        head drop tokens (e.g. n_cand = 3: round(0.8 * 3 + 0) = 2); here ``B >= n`` is always a no-op.

    Ties in the global top-k go to the lower head, then the lower position (stable sort; the original uses
    ``torch.topk``, whose tie order is unspecified). F is ``floor(alpha * Bb + 1e-6)`` like every floor in this
    module; it differs from the original's float ``int()`` only when ``alpha * Bb`` falls within 1e-6 below an
    integer in float64, which never happens for alpha = 0.2.
    """
    layer_budget = _check_budget(layer_budget, "layer_budget")
    alpha = _check_fraction(floor_fraction, "floor_fraction")
    window = _check_int(window, "window", 0)
    if not isinstance(scores, torch.Tensor) or scores.dim() != 3:
        raise ValueError(f"scores must be [batch, heads, n_candidates], got shape {getattr(scores, 'shape', None)}.")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; mask padding with -inf instead.")
    if layer_budget <= window:
        raise ValueError(
            f"AdaKV needs layer_budget > window, got layer_budget={layer_budget}, window={window}; pass "
            f"window=effective_window({layer_budget}, {window}) = {effective_window(layer_budget, window)}."
        )
    batch, heads, n_cand = scores.shape
    bb = layer_budget - window
    if bb >= n_cand:  # B >= n: no compression (the original still compresses at Bb == n_cand, see above)
        return torch.full((batch, heads), n_cand + window, dtype=torch.int64, device=scores.device)
    floor_units = _floor_snap(alpha * bb)
    flat = scores.reshape(batch, heads * n_cand)
    top = torch.sort(flat, dim=-1, descending=True, stable=True).indices[:, : heads * bb]
    counts = torch.zeros(batch, heads, dtype=torch.int64, device=scores.device)
    counts.scatter_add_(1, torch.div(top, n_cand, rounding_mode="floor"), torch.ones_like(top))
    c = torch.round(counts.to(torch.float32) * (1.0 - alpha) + floor_units).to(torch.int64)
    return c.clamp(0, n_cand) + window


# ----------------------------------------------------------------------------------------------------------------------
# selection
# ----------------------------------------------------------------------------------------------------------------------


def topk_keep_indices(scores: torch.Tensor, budgets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head top-k selection with variable budgets, in a padded-plus-mask layout (Eq. 16).

    Head (b, h) keeps the ``budgets[b, h]`` positions with the largest scores (ties: the lower position wins). One
    stable descending sort serves every head; the first K = max budget columns are taken and masked per head.

    Args:
        scores: ``[batch, H, n]`` token scores (e.g. Mask-Voting's I of Eq. 7). ``-inf`` is allowed; NaN is not.
        budgets: int tensor broadcastable to ``[batch, H]``, each >= 0; values above n are clipped to n (keep all).

    Returns:
        ``(indices, valid)``: ``indices`` ``[batch, H, K]`` int64, each head's kept positions in ascending order in its
        first ``budgets[b, h]`` columns and 0 (gather-safe) in the padding; ``valid`` ``[batch, H, K]`` bool, True for
        the kept columns (``valid[..., j] == j < budget``). K = min(max budget, n). Cast to int32 for storage.

    Deviation: a full stable sort (O(n log n)) instead of ``torch.topk``, so the tie rule is deterministic.
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() != 3:
        raise ValueError(f"scores must be [batch, heads, n], got shape {getattr(scores, 'shape', None)}.")
    if not isinstance(budgets, torch.Tensor) or budgets.is_floating_point() or budgets.dtype == torch.bool:
        raise ValueError("budgets must be an integer tensor (e.g. the int64 output of the budget functions).")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; mask positions that must never be kept with -inf instead.")
    n = scores.shape[-1]
    try:
        b = torch.broadcast_to(budgets.to(scores.device, torch.int64), scores.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"budgets shape {tuple(budgets.shape)} does not broadcast to scores' [batch, heads] = "
            f"{tuple(scores.shape[:-1])}."
        ) from None
    if (b < 0).any():
        raise ValueError(f"budgets must be >= 0, got a minimum of {b.min().item()}.")
    b = b.clamp(max=n)
    k = int(b.max().item()) if b.numel() else 0
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]  # [batch, H, K]
    valid = torch.arange(k, device=scores.device) < b.unsqueeze(-1)
    kept = torch.where(valid, order, torch.full_like(order, n))  # padding sorts last
    indices = torch.sort(kept, dim=-1).values
    return torch.where(valid, indices, torch.zeros_like(indices)), valid
