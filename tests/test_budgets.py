"""Tests for maskkv.presses.budgets: the worked examples of spec/budgets.md, sum invariants, caps, selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maskkv.presses.budgets import (
    adakv_head_budgets,
    effective_window,
    layer_importance,
    maskkv_head_budgets,
    maskkv_layer_budgets,
    prompt_preference,
    pyramidkv_layer_budgets,
    squeeze_layer_budgets,
    topk_keep_indices,
    uniform_budgets,
)

D, H, N_P, B = 32, 32, 4000, 64

# budgets.md section 1: layer 0 = 0.55, layers 1-10 = 0.06, 11-20 = 0.04, 21-30 = 0.05, layer 31 = 0.45
PROFILE = [0.55] + [0.06] * 10 + [0.04] * 10 + [0.05] * 10 + [0.45]
# budgets.md section 2: heads 0-3 = 0.80, 4-11 = 0.50, 12-23 = 0.20, 24-31 = 0.05
PREFERENCE = [0.80] * 4 + [0.50] * 8 + [0.20] * 12 + [0.05] * 8


def _profile(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(PROFILE, dtype=dtype)


def _groups(values: list[int]) -> list[int]:
    """Per-head values of the four preference groups of budgets.md section 2."""
    return [values[0], values[4], values[12], values[24]]


# ----------------------------------------------------------------------------------------------------------------------
# budgets.md section 1: MaskKV layer budgets
# ----------------------------------------------------------------------------------------------------------------------


def test_layer_budgets_paper_floor_mode() -> None:
    k = maskkv_layer_budgets(_profile(), B, beta=0.4, prompt_len=N_P, rounding="floor")
    assert k.dtype == torch.int64
    assert k.tolist() == [274] + [49] * 30 + [274]
    assert int(k.sum()) == 2018  # deficit of 30 against 2048


def test_layer_budgets_exact_sum_mode() -> None:
    k = maskkv_layer_budgets(_profile(), B, beta=0.4, prompt_len=N_P)
    assert k.tolist() == [274] + [50] * 30 + [274]
    assert int(k.sum()) == D * B == 2048


@pytest.mark.parametrize("rounding", ["exact", "floor"])
def test_layer_budgets_only_group_sums_matter(rounding: str) -> None:
    ref = maskkv_layer_budgets(_profile(), B, prompt_len=N_P, rounding=rounding)
    g = torch.Generator().manual_seed(0)
    middle = _profile()[1:31][torch.randperm(30, generator=g)]
    permuted = torch.cat([_profile()[:1], middle, _profile()[31:]])
    flat = torch.tensor([0.55] + [0.05] * 30 + [0.45], dtype=torch.float64)
    assert torch.equal(maskkv_layer_budgets(permuted, B, prompt_len=N_P, rounding=rounding), ref)
    assert torch.equal(maskkv_layer_budgets(flat, B, prompt_len=N_P, rounding=rounding), ref)


def test_layer_budgets_float_noise_and_float32_input() -> None:
    # float64 sums give I_M = 1.5000000000000009 (budgets.md section 1): budgets must not care, nor in float32
    assert math.isclose(sum(PROFILE[1:31]), 1.5) and sum(PROFILE[1:31]) != 1.5
    for dtype in (torch.float32, torch.float64):
        assert maskkv_layer_budgets(_profile(dtype), B).tolist() == [274] + [50] * 30 + [274]
        assert maskkv_layer_budgets(_profile(dtype), B, rounding="floor").tolist() == [274] + [49] * 30 + [274]


def test_layer_budgets_batched_profiles_and_prompt_lengths() -> None:
    profiles = torch.stack([_profile(), _profile().flip(0)])
    k = maskkv_layer_budgets(profiles, B, prompt_len=torch.tensor([N_P, 100]))
    assert k.shape == (2, D)
    assert k[0].tolist() == [274] + [50] * 30 + [274]
    assert int(k[1].max()) <= 100 and int(k[1].sum()) == D * B


def test_layer_budgets_cap_waterfills_surplus() -> None:
    # boundary layers want 274.6 > n = 200: capped at 200, surplus spread over the middle layers
    k = maskkv_layer_budgets(_profile(), B, prompt_len=200)
    assert k[0] == k[31] == 200
    assert int(k.sum()) == D * B and int(k.max()) <= 200
    assert set(k[1:31].tolist()) <= {54, 55}  # (2048 - 400) / 30 = 54.93


# ----------------------------------------------------------------------------------------------------------------------
# budgets.md section 2: MaskKV head budgets
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k_l", "rounding", "per_group", "total"),
    [
        (274, "floor", [658, 421, 185, 66], 8748),
        (274, "exact", [659, 422, 185, 67], 8768),
        (50, "floor", [120, 77, 33, 12], 1588),
        (50, "exact", [120, 77, 34, 12], 1600),  # 77.0 must not floor to 76
        (49, "floor", [117, 75, 33, 11], 1552),
    ],
)
def test_head_budgets_worked_examples(k_l: int, rounding: str, per_group: list[int], total: int) -> None:
    pref = torch.tensor(PREFERENCE, dtype=torch.float64)
    k = maskkv_head_budgets(pref, k_l, alpha=0.1, prompt_len=N_P, rounding=rounding)
    assert k.dtype == torch.int64
    assert _groups(k.tolist()) == per_group
    assert k.tolist() == [per_group[0]] * 4 + [per_group[1]] * 8 + [per_group[2]] * 12 + [per_group[3]] * 8
    assert int(k.sum()) == total


def test_head_budgets_scale_invariant_and_pass0_consistency() -> None:
    pref = torch.tensor(PREFERENCE, dtype=torch.float64)
    # P_h = S_m->p / n_r with n_r = 32 (budgets.md section 2): the unnormalised sums give the same budgets
    s_mp = pref * 32
    p = prompt_preference(s_mp, 32 - s_mp)
    assert torch.allclose(p, pref)
    assert torch.equal(maskkv_head_budgets(p, 274), maskkv_head_budgets(pref, 274))
    assert torch.equal(maskkv_head_budgets(pref * 7.5, 50), maskkv_head_budgets(pref, 50))


@pytest.mark.parametrize(("rounding", "expected"), [("floor", 64_056), ("exact", 65_536)])
def test_request_totals_all_layers_vectorised(rounding: str, expected: int) -> None:
    k_l = maskkv_layer_budgets(_profile(), B, prompt_len=N_P, rounding=rounding)  # [D]
    pref = torch.tensor(PREFERENCE, dtype=torch.float64).expand(1, D, H)  # [batch, D, H]
    k = maskkv_head_budgets(pref, k_l, prompt_len=N_P, rounding=rounding)
    assert k.shape == (1, D, H)
    assert int(k.sum()) == expected
    if rounding == "exact":
        assert expected == D * H * B
        assert torch.equal(k.sum(-1)[0], H * k_l)
    # ragged storage: the largest head holds 2.4x the layer average (budgets.md section 2)
    assert int(k[0, 0].max()) == (659 if rounding == "exact" else 658)


def test_head_budgets_waterfill_hand_example() -> None:
    # alpha = 0: real shares 3*4*P_hat = [10, 1, 1]; cap 5 -> [5, 3.5, 3.5] -> largest remainder, tie to lower head
    k = maskkv_head_budgets(torch.tensor([10.0, 1.0, 1.0]), 4, alpha=0.0, prompt_len=5)
    assert k.tolist() == [5, 4, 3]
    # floor mode under the same cap: [5, 3, 3]
    floor = maskkv_head_budgets(torch.tensor([10.0, 1.0, 1.0]), 4, alpha=0.0, prompt_len=5, rounding="floor")
    assert floor.tolist() == [5, 3, 3]


def test_head_budgets_zero_share_heads_take_the_rest() -> None:
    # alpha = 0 and one head with P = 0: the other heads cap at n and the zero-share head takes the remainder
    k = maskkv_head_budgets(torch.tensor([1.0, 1.0, 0.0]), 8, alpha=0.0, prompt_len=10)
    assert k.tolist() == [10, 10, 4]
    # all preferences zero: uniform split
    assert maskkv_head_budgets(torch.zeros(4), 6, alpha=0.5).tolist() == [6, 6, 6, 6]


def test_head_budgets_min_head_budget_takes_from_largest() -> None:
    pref = torch.tensor(PREFERENCE, dtype=torch.float64)
    base = maskkv_head_budgets(pref, 10, alpha=0.0)  # smallest heads get 1 (0.05 share), largest 23
    assert int(base.min()) < 3
    k = maskkv_head_budgets(pref, 10, alpha=0.0, min_head_budget=3)
    assert int(k.sum()) == int(base.sum()) == 320
    assert int(k.min()) >= 3
    cut = k < base
    assert cut.any()
    assert int(k[cut].max() - k[cut].min()) <= 1  # cut heads end at a common level
    assert bool((k[~cut & (base > 3)] == base[~cut & (base > 3)]).all())  # untouched middle heads
    # a floor larger than the layer can afford is lowered to the layer average
    assert maskkv_head_budgets(pref, 2, alpha=0.0, min_head_budget=5).tolist() == [2] * 32


# ----------------------------------------------------------------------------------------------------------------------
# random sweeps: exact sums, caps, floors
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("num_layers", [1, 2, 3, 28, 32])
def test_maskkv_sweep_sums_caps_floors(seed: int, num_layers: int) -> None:
    g = torch.Generator().manual_seed(seed * 97 + num_layers)
    num_heads = (4, 8, 32, 7)[seed]
    for budget in (1, 7, 64, 512):
        for n in (1, 5, 50, 300, 4000):
            beta, alpha = torch.rand(2, generator=g).tolist()
            imp = torch.rand(num_layers, generator=g, dtype=torch.float64)
            if seed == 3:
                imp[torch.rand(num_layers, generator=g) < 0.5] = 0.0
            k_l = maskkv_layer_budgets(imp, budget, beta=beta, prompt_len=n)
            assert int(k_l.sum()) == num_layers * min(budget, n)
            assert int(k_l.max()) <= n
            assert int(k_l.min()) >= min(math.floor(beta * budget + 1e-6), n)
            k_floor = maskkv_layer_budgets(imp, budget, beta=beta, prompt_len=n, rounding="floor")
            assert int(k_floor.max()) <= n
            if budget < n and int(k_floor.max()) < n:  # no cap bound: paper's deficit lies in [0, D-1]
                assert 0 <= num_layers * budget - int(k_floor.sum()) <= num_layers - 1

            # concentrated preferences (Dirichlet-like) push heads over n
            pref = torch.rand(2, num_layers, num_heads, generator=g, dtype=torch.float64) ** 6
            k = maskkv_head_budgets(pref, k_l, alpha=alpha, prompt_len=n)
            assert k.shape == (2, num_layers, num_heads)
            assert torch.equal(k.sum(-1), (num_heads * k_l).expand(2, num_layers))
            assert int(k.max()) <= n and int(k.min()) >= 0
            kf = k_l.double()
            assert bool((k >= torch.floor(alpha * kf + 1e-6).long().unsqueeze(-1)).all())
            # water-filling only ever adds to uncapped heads
            p_hat = pref / pref.sum(-1, keepdim=True)
            real = alpha * kf.unsqueeze(-1) + (1 - alpha) * num_heads * kf.unsqueeze(-1) * p_hat
            assert bool((k >= torch.clamp(torch.floor(real + 1e-6), max=n).long()).all())
            assert int(k.sum()) == num_layers * num_heads * 2 * min(budget, n)

            kf_mode = maskkv_head_budgets(pref, k_l, alpha=alpha, prompt_len=n, rounding="floor")
            sums = kf_mode.sum(-1)
            target = num_heads * k_l
            assert bool((sums <= target).all()) and int(kf_mode.max()) <= n
            if int(real.max()) < n:
                assert bool((sums >= target - (num_heads - 1)).all())


@pytest.mark.parametrize("budget", [3, 64, 256])
def test_budget_at_or_above_prompt_keeps_everything(budget: int) -> None:
    n = budget  # budget == n, and budget > n below
    for prompt_len in (n, max(n - 2, 1)):
        k_l = maskkv_layer_budgets(_profile(), budget, prompt_len=prompt_len)
        assert k_l.tolist() == [prompt_len] * D
        pref = torch.tensor(PREFERENCE, dtype=torch.float64)
        assert maskkv_head_budgets(pref, k_l, prompt_len=prompt_len).unique().tolist() == [prompt_len]
        assert maskkv_head_budgets(pref, budget * 3, prompt_len=prompt_len).unique().tolist() == [prompt_len]
        assert uniform_budgets(budget, D, H, prompt_len).unique().tolist() == [prompt_len]
        assert squeeze_layer_budgets(1 - _profile(), budget, prompt_len).unique().tolist() == [prompt_len]
        assert squeeze_layer_budgets(1 - _profile(), budget, prompt_len, rounding="exact").unique().tolist() == [
            prompt_len
        ]
        scores = torch.rand(2, H, prompt_len)
        idx, valid = topk_keep_indices(scores, torch.full((2, H), budget))
        assert bool(valid.all()) and torch.equal(idx, torch.arange(prompt_len).expand(2, H, prompt_len))
        if budget > 32:
            assert pyramidkv_layer_budgets(budget, D, prompt_len).unique().tolist() == [prompt_len]


# ----------------------------------------------------------------------------------------------------------------------
# budgets.md section 3: PyramidKV
# ----------------------------------------------------------------------------------------------------------------------


def test_pyramidkv_b64_schedule() -> None:
    k = pyramidkv_layer_budgets(64, D, N_P, beta=20, window=32)
    assert k.tolist() == [95 - 2 * layer for layer in range(D)]
    assert k[0] == 95 and k[1] == 93 and k[15] == 65 and k[16] == 63 and k[31] == 33
    assert int(k.sum()) == D * 64  # mean 64.0 exactly


@pytest.mark.parametrize(
    ("budget", "num_layers", "n", "first", "last", "mean"),
    [
        (128, 32, 4000, 188 + 32, 33 + 32, 142.5),
        (256, 32, 4000, 437 + 32, 34 + 32, 267.5),
        (512, 32, 4000, 936 + 32, 37 + 32, 518.5),
        (64, 28, 4000, 63 + 32, 9 + 32, 68.0),  # Dream: step = 62 // 27 = 2
        (64, 32, 90, 90, 27 + 32, 74.5),  # mx clamps to n - w = 58
        (64, 32, 64, 64, 64, 64.0),  # step 0: every layer keeps all 64
        (64, 32, 60, 60, 60, 60.0),  # n < B: no compression
    ],
)
def test_pyramidkv_table(budget: int, num_layers: int, n: int, first: int, last: int, mean: float) -> None:
    k = pyramidkv_layer_budgets(budget, num_layers, n)
    assert (int(k[0]), int(k[-1])) == (first, last)
    assert float(k.double().mean()) == mean
    assert int(k.max()) <= n


def test_pyramidkv_small_budget_effective_window() -> None:
    w = effective_window(16, 32)
    assert w == 8
    assert pyramidkv_layer_budgets(16, D, N_P, window=w).tolist() == [24] * D  # step = 16 // 31 = 0
    with pytest.raises(ValueError, match="effective_window"):
        pyramidkv_layer_budgets(16, D, N_P, window=32)


@pytest.mark.parametrize("budget", [33, 40, 64, 100, 128, 256, 512, 1000])
@pytest.mark.parametrize("n", [33, 50, 90, 200, 4000])
def test_pyramidkv_sweep(budget: int, n: int) -> None:
    for num_layers in (2, 5, 28, 32):
        orig = pyramidkv_layer_budgets(budget, num_layers, n)
        exact = pyramidkv_layer_budgets(budget, num_layers, n, rounding="exact")
        for k in (orig, exact):
            assert int(k.max()) <= n and int(k.min()) >= min(32, n)
            assert bool((k[:-1] >= k[1:]).all())  # non-increasing over layers
        if n < budget:
            assert orig.tolist() == exact.tolist() == [n] * num_layers
        else:
            assert int(orig.sum()) >= num_layers * budget  # floored step: mean >= B
            assert int(exact.sum()) == num_layers * budget
    # per-sample prompt lengths, vectorised
    ks = pyramidkv_layer_budgets(budget, D, torch.tensor([n, 4000]))
    assert torch.equal(ks[0], pyramidkv_layer_budgets(budget, D, n))
    assert torch.equal(ks[1], pyramidkv_layer_budgets(budget, D, 4000))


# ----------------------------------------------------------------------------------------------------------------------
# budgets.md section 4: AdaKV
# ----------------------------------------------------------------------------------------------------------------------


def test_adakv_counts_given() -> None:
    # 32 heads, B = 64, w = 32 (Bb = 32, F = 6); build scores whose global top-1024 gives n_h = 100/40/20/8
    n_h = torch.tensor([100] * 4 + [40] * 8 + [20] * 12 + [8] * 8)
    assert int(n_h.sum()) == 32 * 32
    n_cand = 128
    scores = (torch.arange(n_cand).expand(32, n_cand) < n_h[:, None]).float()[None] * 2.0 - 1.0
    kept = adakv_head_budgets(scores, 64, floor_fraction=0.2, window=32)
    assert kept.shape == (1, 32)
    assert _groups(kept[0].tolist()) == [118, 70, 54, 44]
    assert _groups((kept[0] - 32).tolist()) == [86, 38, 22, 12]
    assert int((kept - 32).sum()) == 1008 and int(kept.sum()) == 2032


def test_adakv_from_scores() -> None:
    scores = torch.tensor(
        [
            [0.600, 0.250, 0.050, 0.040, 0.030, 0.015, 0.010, 0.005],
            [0.140, 0.135, 0.130, 0.125, 0.120, 0.115, 0.110, 0.105],
            [0.300, 0.200, 0.150, 0.100, 0.090, 0.080, 0.050, 0.030],
            [0.127, 0.123, 0.119, 0.113, 0.108, 0.102, 0.097, 0.093],
        ]
    )[None]
    kept = adakv_head_budgets(scores, 10, floor_fraction=0.2, window=5)  # Bb = 5, F = 1
    c = kept - 5
    assert c.tolist() == [[3, 7, 4, 6]] and int(c.sum()) == 20
    idx, valid = topk_keep_indices(scores, c)
    kept_sets = [idx[0, h][valid[0, h]].tolist() for h in range(4)]
    assert kept_sets == [[0, 1, 2], list(range(7)), [0, 1, 2, 3], list(range(6))]


@pytest.mark.parametrize("seed", range(3))
def test_adakv_sweep(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for heads, n_cand, budget, window in [(4, 8, 10, 5), (32, 200, 64, 32), (4, 1000, 256, 32), (7, 50, 9, 4)]:
        scores = torch.rand(3, heads, n_cand, generator=g) ** 4
        kept = adakv_head_budgets(scores, budget, floor_fraction=0.2, window=window)
        c = kept - window
        bb = budget - window
        floor_units = math.floor(0.2 * bb + 1e-6)
        assert bool((c >= floor_units).all()) and bool((c <= n_cand).all())
        closed = 0.8 * heads * bb + heads * floor_units
        assert bool(((c.sum(-1).double() - closed).abs() <= heads / 2).all())
    # Bb larger than the candidates: keep everything
    assert adakv_head_budgets(torch.rand(1, 4, 8), 20, window=5).tolist() == [[13] * 4]


# ----------------------------------------------------------------------------------------------------------------------
# budgets.md section 5: SqueezeAttention
# ----------------------------------------------------------------------------------------------------------------------


def test_squeeze_profile_a() -> None:
    sim = 1.0 - _profile()  # 0.45, 0.94 / 0.96 / 0.95, 0.55
    k = squeeze_layer_budgets(sim, B, prompt_len=N_P)
    assert k.tolist() == [640] + [25] * 30 + [640]
    assert int(k.sum()) == 2030
    assert [effective_window(int(b), 32) for b in (640, 25)] == [32, 12]


def test_squeeze_profile_b() -> None:
    sim = torch.tensor([0.50] + [0.85] * 7 + [0.95] * 23 + [0.60], dtype=torch.float64)
    k = squeeze_layer_budgets(sim, B, prompt_len=N_P)
    assert k.tolist() == [162] * 8 + [25] * 23 + [162]
    assert int(k.sum()) == 2033


def test_squeeze_deterministic_permutation_and_exact_mode() -> None:
    sim = 1.0 - _profile()
    perm = torch.randperm(D, generator=torch.Generator().manual_seed(1))
    assert torch.equal(squeeze_layer_budgets(sim[perm], B), squeeze_layer_budgets(sim, B)[perm])
    exact = squeeze_layer_budgets(sim, B, rounding="exact")
    assert int(exact.sum()) == D * B
    assert set(exact.tolist()) <= {25, 26, 640}  # 25.6 per group-3 layer, 640 per boundary layer
    # fewer than 3 distinct values: uniform B
    assert squeeze_layer_budgets(torch.tensor([0.9, 0.9, 0.5, 0.9]), 16).tolist() == [16] * 4
    # batched, float32 input
    both = squeeze_layer_budgets(torch.stack([sim, sim]).float(), B, prompt_len=torch.tensor([N_P, 300]))
    assert both[0].tolist() == [640] + [25] * 30 + [640]
    assert both[1].tolist() == [300] + [25] * 30 + [300]  # capped, not redistributed (original)


@pytest.mark.parametrize("seed", range(3))
def test_squeeze_sweep(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for num_layers in (3, 5, 28, 32):
        for budget in (16, 64, 512):
            for n in (10, 100, 4000):
                sim = torch.rand(num_layers, generator=g, dtype=torch.float64)
                orig = squeeze_layer_budgets(sim, budget, prompt_len=n)
                exact = squeeze_layer_budgets(sim, budget, prompt_len=n, rounding="exact")
                assert int(orig.sum()) <= num_layers * budget and int(orig.max()) <= n
                assert int(exact.sum()) == num_layers * min(budget, n) and int(exact.max()) <= n
                assert len(set(orig.tolist())) <= 2
                # brute-force exact 3-means on sorted values
                v = sorted(sim.tolist())
                best = min(
                    (sum(np.var(seg) * len(seg) for seg in (v[:i], v[i:j], v[j:])), i, j)
                    for i in range(1, num_layers - 1)
                    for j in range(i + 1, num_layers)
                )
                g3 = sim >= v[best[2]]
                expected = n if n <= budget else math.floor(0.4 * budget + 1e-6)
                assert bool((orig[g3] == expected).all())


# ----------------------------------------------------------------------------------------------------------------------
# Eq. 16 selection and Eq. 8 importance
# ----------------------------------------------------------------------------------------------------------------------


def _dense_topk(scores: np.ndarray, budgets: np.ndarray) -> list[list[list[int]]]:
    out = []
    for b in range(scores.shape[0]):
        rows = []
        for h in range(scores.shape[1]):
            order = np.lexsort((np.arange(scores.shape[2]), -scores[b, h]))  # by score desc, then position asc
            rows.append(sorted(order[: min(int(budgets[b, h]), scores.shape[2])].tolist()))
        out.append(rows)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_topk_keep_indices_matches_dense_reference(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    batch, heads, n = 3, 5, 40
    if seed % 2:
        scores = torch.randint(0, 4, (batch, heads, n), generator=g).float()  # many ties
    else:
        scores = torch.randn(batch, heads, n, generator=g)
        scores[0, 0, :5] = float("-inf")
    budgets = torch.randint(0, n + 10, (batch, heads), generator=g)
    budgets[0, 1] = 0
    idx, valid = topk_keep_indices(scores, budgets)
    assert idx.dtype == torch.int64 and valid.dtype == torch.bool
    assert idx.shape == valid.shape == (batch, heads, min(int(budgets.max()), n))
    ref = _dense_topk(scores.numpy(), budgets.numpy())
    got = [[idx[b, h][valid[b, h]].tolist() for h in range(heads)] for b in range(batch)]
    assert got == ref
    assert torch.equal(valid.sum(-1), budgets.clamp(max=n))
    assert bool((idx[~valid] == 0).all())


def test_topk_keep_indices_edge_cases() -> None:
    idx, valid = topk_keep_indices(torch.rand(2, 3, 5), torch.zeros(2, 3, dtype=torch.int64))
    assert idx.shape == (2, 3, 0) and valid.shape == (2, 3, 0)
    scores = torch.tensor([[[1.0, 1.0, 1.0, 1.0]]])
    idx, valid = topk_keep_indices(scores, torch.tensor(2))  # broadcast budget; ties -> lowest positions
    assert idx.tolist() == [[[0, 1]]] and bool(valid.all())


def test_layer_importance_eq8() -> None:
    g = torch.Generator().manual_seed(0)
    h_in = torch.randn(2, 6, 16, generator=g)
    assert torch.allclose(layer_importance(h_in, h_in), torch.zeros(2), atol=1e-6)
    assert torch.allclose(layer_importance(h_in, -h_in), torch.full((2,), 2.0), atol=1e-6)
    h_out = torch.randn(2, 6, 16, generator=g)
    cos = torch.nn.functional.cosine_similarity(h_in.double(), h_out.double(), dim=-1)
    assert torch.allclose(layer_importance(h_in.bfloat16(), h_out.bfloat16()), (1 - cos.mean(-1)).float(), atol=2e-2)
    assert torch.allclose(layer_importance(h_in, h_out), (1 - cos.mean(-1)).float(), atol=1e-5)
    mask = torch.tensor([True, True, False, False, True, False])
    assert torch.allclose(layer_importance(h_in, h_out, mask), (1 - cos[:, mask].mean(-1)).float(), atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# bad inputs
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: maskkv_layer_budgets(_profile(), 0), "budget must be a positive"),
        (lambda: maskkv_layer_budgets(_profile(), -3), "budget must be a positive"),
        (lambda: maskkv_layer_budgets(_profile(), 64.0), "budget must be an integer"),
        (lambda: maskkv_layer_budgets(_profile(), 64, beta=1.5), "beta must lie in"),
        (lambda: maskkv_layer_budgets(_profile(), 64, beta=-0.1), "beta must lie in"),
        (lambda: maskkv_layer_budgets(_profile(), 64, rounding="round"), "rounding must be one of"),
        (lambda: maskkv_layer_budgets(-_profile(), 64), "importance must be >= 0"),
        (lambda: maskkv_layer_budgets(_profile() * float("nan"), 64), "NaN"),
        (lambda: maskkv_layer_budgets(_profile(), 64, boundary_layers=(0, 32)), "out of range"),
        (lambda: maskkv_layer_budgets(_profile(), 64, prompt_len=-1), "prompt_len must be >= 0"),
        (lambda: maskkv_layer_budgets(_profile().expand(2, D), 64, prompt_len=torch.tensor([1, 2, 3])), "broadcast"),
        (lambda: maskkv_head_budgets(torch.ones(4), 10, alpha=1.1), "alpha must lie in"),
        (lambda: maskkv_head_budgets(torch.ones(4), 10, alpha=-0.5), "alpha must lie in"),
        (lambda: maskkv_head_budgets(torch.ones(2, 3, 4), torch.tensor([1, 2]), alpha=0.1), "broadcast"),
        (lambda: maskkv_head_budgets(torch.ones(4), torch.tensor([1.5]), alpha=0.1), "layer_budget must hold"),
        (lambda: maskkv_head_budgets(-torch.ones(4), 10), "prompt_preference must be >= 0"),
        (lambda: pyramidkv_layer_budgets(0, 32, 100), "budget must be a positive"),
        (lambda: pyramidkv_layer_budgets(64, 32, 100, rounding="floor"), "rounding must be one of"),
        (lambda: squeeze_layer_budgets(torch.rand(8), 64, least_fraction=1.2), "least_fraction must lie in"),
        (lambda: squeeze_layer_budgets(torch.rand(8), 64, groups=1), "groups must be >= 2"),
        (lambda: adakv_head_budgets(torch.rand(4, 8), 10), r"scores must be \[batch"),
        (lambda: adakv_head_budgets(torch.rand(1, 4, 8), 10, floor_fraction=2.0), "floor_fraction must lie in"),
        (lambda: adakv_head_budgets(torch.rand(1, 4, 8), 5, window=5), "layer_budget > window"),
        (lambda: topk_keep_indices(torch.rand(2, 3, 5), torch.ones(4, dtype=torch.int64)), "does not broadcast"),
        (lambda: topk_keep_indices(torch.rand(2, 3, 5), torch.ones(2, 3)), "integer tensor"),
        (lambda: topk_keep_indices(torch.rand(2, 3, 5), -torch.ones(2, 3, dtype=torch.int64)), ">= 0"),
        (lambda: topk_keep_indices(torch.full((1, 1, 3), float("nan")), torch.ones(1, 1, dtype=torch.int64)), "NaN"),
        (lambda: uniform_budgets(0, 32, 32), "budget must be a positive"),
        (lambda: layer_importance(torch.rand(3, 4), torch.rand(3, 5)), "same shape"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_uniform_budgets_shapes() -> None:
    assert uniform_budgets(64, 3, 2).tolist() == [[64, 64]] * 3
    k = uniform_budgets(64, 3, 2, torch.tensor([10, 100]))
    assert k.shape == (2, 3, 2) and k[0].unique().tolist() == [10] and k[1].unique().tolist() == [64]
