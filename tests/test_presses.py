"""Presses: exactness at large budgets, Mask-Voting math, kept sets, memory, D6 options, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import maskkv
from maskkv.cache import DLLMCache
from maskkv.models import load_model
from maskkv.models.tiny import write_tiny_checkpoint
from maskkv.presses import PRESSES, LayerContext, MaskKVPress, PressPlan, SnapKVPress, make_press
from maskkv.presses.attention_stats import attention_column_sums
from maskkv.presses.budgets import topk_keep_indices
from maskkv.presses.profile import calibrate, save_profile
from maskkv.presses.snapkv_press import pool_scores

ALL_PRESSES = sorted(PRESSES)


@pytest.fixture(scope="module", params=["llada", "dream"])
def model(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"press-{request.param}")
    write_tiny_checkpoint(path, request.param, num_layers=3, hidden_size=64, num_heads=4, seed=17)
    return load_model(path)


def _prompt(model, batch: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size - 64, (batch, length), generator=g)


# ----- exactness ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_PRESSES)
@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "dllm-cache"])
def test_budget_at_least_prompt_is_identical_to_no_press(model, name, cached):
    prompt = _prompt(model, 1, 12, seed=1)
    cache = DLLMCache() if cached else None
    kwargs = dict(gen_length=8, steps=8, block_length=4, cache=cache)
    plain = maskkv.generate(model, prompt, **kwargs)
    pressed = maskkv.generate(model, prompt, press=make_press(name, budget=12), **kwargs)
    assert torch.equal(plain.sequences, pressed.sequences)


@pytest.mark.parametrize("name", ALL_PRESSES)
def test_every_press_evicts_and_decodes_with_both_paths(model, name):
    prompt = _prompt(model, 1, 40, seed=2)
    press = make_press(name, budget=6)
    for cache in (None, DLLMCache()):
        out = maskkv.generate(model, prompt, gen_length=8, steps=8, block_length=4, cache=cache, press=press)
        assert not bool((out.sequences == model.config.mask_token_id).any())
        kept, total = out.cache_bytes["kept_prompt_pairs"], out.cache_bytes["prompt_pairs"]
        assert total == model.config.num_layers * model.config.num_kv_heads * 40
        assert kept < total


def test_first_pass_logits_equal_with_and_without_press(model):
    prompt = _prompt(model, 1, 30, seed=3)
    x = torch.cat([prompt, torch.full((1, 8), model.config.mask_token_id)], dim=1)
    positions = torch.arange(30, 38)
    plain = DLLMCache().bind(model, 30).logits_at(x, None, positions)
    pressed = DLLMCache().bind(model, 30, press=MaskKVPress(budget=4)).logits_at(x, None, positions)
    torch.testing.assert_close(pressed, plain, atol=0, rtol=0)


# ----- Mask-Voting against a dense computation ---------------------------------------------


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2)])
def test_mask_votes_equal_dense_softmax(heads, kv_heads):
    g = torch.Generator().manual_seed(0)
    b, p, r, d = 2, 11, 5, 8
    q = torch.randn(b, heads, p + r, d, generator=g)
    k = torch.randn(b, kv_heads, p + r, d, generator=g)
    valid = torch.ones(b, p + r, dtype=torch.bool)
    valid[1, :3] = False  # left padding in row 1
    got = attention_column_sums(q[:, :, p:], k, key_valid=valid, max_elements=64)  # force chunking
    group = heads // kv_heads
    dense = torch.zeros(b, kv_heads, p + r)
    for bi in range(b):
        for h in range(heads):
            logits = q[bi, h, p:] @ k[bi, h // group].T / math.sqrt(d)
            logits[:, ~valid[bi]] = float("-inf")
            dense[bi, h // group] += torch.softmax(logits, dim=-1).sum(0)
    torch.testing.assert_close(got, dense, atol=1e-5, rtol=1e-5)
    # identities at pass 0: every row sums to 1, so S_mp + S_mm = n_r per query head
    torch.testing.assert_close(got.sum(-1), torch.full((b, kv_heads), float(r * group)))


def test_maskkv_scores_are_mask_votes_restricted_to_prompt(model):
    cfg = model.config
    g = torch.Generator().manual_seed(1)
    p, r = 9, 6
    q = torch.randn(1, cfg.num_heads, p + r, cfg.head_dim, generator=g)
    k = torch.randn(1, cfg.num_kv_heads, p + r, cfg.head_dim, generator=g)
    ctx = LayerContext(layer=0, config=cfg, queries=q, keys=k, prompt_length=p, key_valid=None,
                       voter_rows=torch.ones(1, r, dtype=torch.bool))
    scores = MaskKVPress(budget=4).score(ctx)
    expected = attention_column_sums(q[:, :, p:], k)[..., :p]
    torch.testing.assert_close(scores, expected)
    # position-aware voting: the last of 3 segments only counts the last 2 mask rows
    rows = torch.tensor([[False, False, False, False, True, True]])
    segment = MaskKVPress(budget=4, vote_segment=(2, 3)).score(ctx)
    torch.testing.assert_close(segment, attention_column_sums(q[:, :, p:], k, query_weights=rows.float())[..., :p])


def test_snapkv_pooling_edges():
    scores = torch.tensor([[[5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]]])
    pooled = pool_scores(scores, 7, "max")  # -inf padding: edges see only real neighbours
    assert pooled.tolist() == [[[5.0, 5.0, 5.0, 5.0, 0.0, 1.0, 1.0, 1.0, 1.0]]]  # window k=7: j-3..j+3
    avg = pool_scores(torch.ones(1, 1, 5), 3, "avg")  # zero padding counted: edges divided by 3
    torch.testing.assert_close(avg, torch.tensor([[[2 / 3, 1.0, 1.0, 1.0, 2 / 3]]]))


def test_snapkv_keeps_its_window_inside_the_budget(model):
    cfg = model.config
    g = torch.Generator().manual_seed(2)
    p, r = 80, 8
    q = torch.randn(1, cfg.num_heads, p + r, cfg.head_dim, generator=g)
    k = torch.randn(1, cfg.num_kv_heads, p + r, cfg.head_dim, generator=g)
    ctx = LayerContext(layer=0, config=cfg, queries=q, keys=k, prompt_length=p, key_valid=None,
                       voter_rows=torch.ones(1, r, dtype=torch.bool), window=10)
    scores = SnapKVPress(budget=20).score(ctx)
    assert torch.isinf(scores[..., -10:]).all() and torch.isfinite(scores[..., :-10]).all()
    window = attention_column_sums(q[:, :, p - 10 : p], k)[..., : p - 10]
    expected = F.max_pool1d(window.reshape(-1, 1, p - 10), 7, 1, 3).reshape(window.shape)
    torch.testing.assert_close(scores[..., :-10], expected)


# ----- kept sets ----------------------------------------------------------------------------


@pytest.mark.parametrize("press", [MaskKVPress(budget=5), SnapKVPress(budget=5), make_press("adakv", budget=20)],
                         ids=["maskkv", "snapkv", "adakv"])
def test_kept_prompt_kv_is_the_topk_of_the_scores_per_head(model, press):
    p, gen = 40, 8
    prompt = _prompt(model, 1, p, seed=4)
    x = torch.cat([prompt, torch.full((1, gen), model.config.mask_token_id)], dim=1)
    recorded: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    denoiser = DLLMCache().bind(model, p, press=press)
    original_select = None

    def spy(plan):
        nonlocal original_select
        original_select = plan._select

        def select(ctx, layer_budget):
            keep = original_select(ctx, layer_budget)
            scores = press.score(ctx).float()
            recorded[ctx.layer] = (scores, keep.valid.sum(-1))
            return keep

        plan._select = select
        return plan

    real_plan = press.plan
    object.__setattr__(press, "plan", lambda *a, **k: spy(real_plan(*a, **k)))
    try:
        denoiser.logits_at(x, None, torch.arange(p, p + gen))
    finally:
        object.__delattr__(press, "plan")
    full = DLLMCache().bind(model, p)
    full.logits_at(x, None, torch.arange(p, p + gen))
    assert sorted(recorded) == list(range(model.config.num_layers))
    for layer, (scores, budgets) in recorded.items():
        indices, valid = topk_keep_indices(scores, budgets)
        cache = denoiser.layers[layer]
        assert torch.equal(cache.prompt_positions.long()[valid], indices[valid])
        # brute force: each head's kept set is its `budget` highest scores (ties to the lower position)
        for h in range(scores.shape[1]):
            order = sorted(range(p), key=lambda j: (-scores[0, h, j].item(), j))[: int(budgets[0, h])]
            assert sorted(order) == indices[0, h][valid[0, h]].tolist()
        # the kept keys are the full keys at those positions (post-RoPE: true positions kept)
        full_k = full.layers[layer].k[:, :, :p]
        gathered = full_k.gather(2, indices[..., None].expand(-1, -1, -1, full_k.shape[-1]))
        kept_k, _, kept_valid = cache.prompt_kv()  # dense slots, or the flattened pairs padded (D10 b)
        if kept_valid is not None:
            assert torch.equal(kept_valid.expand_as(valid), valid)
        torch.testing.assert_close(kept_k[valid], gathered[valid])
        assert cache.resp_k.shape[2] == gen  # response K/V never evicted


def test_shuffling_kept_keys_changes_nothing(model):
    """Post-RoPE storage: the order of kept entries is irrelevant to bidirectional attention."""
    p, gen = 30, 8
    x = torch.cat([_prompt(model, 1, p, seed=5), torch.full((1, gen), model.config.mask_token_id)], dim=1)
    positions = torch.arange(p, p + gen)
    policy = DLLMCache(prompt_interval=50, response_interval=1, transfer_ratio=0.0)
    a = policy.bind(model, p, press=SnapKVPress(budget=12))
    a.logits_at(x, None, positions)
    before = a.logits_at(x, None, positions)
    with torch.inference_mode():
        for cache in a.layers:
            perm = torch.randperm(cache.prompt_slots, generator=torch.Generator().manual_seed(0))
            cache.k[:, :, : cache.prompt_slots] = cache.k[:, :, perm].clone()
            cache.v[:, :, : cache.prompt_slots] = cache.v[:, :, perm].clone()
    after = a.logits_at(x, None, positions)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_padded_batch_never_keeps_pad_positions(model):
    pad = model.config.pad_token_id
    prompt = torch.cat([_prompt(model, 1, 30, seed=6), torch.cat([torch.full((1, 12), pad), _prompt(model, 1, 18, 7)], 1)])
    mask = torch.ones_like(prompt)
    mask[1, :12] = 0
    for press in (MaskKVPress(budget=6), make_press("streaming", budget=6), make_press("adakv", budget=8)):
        denoiser = DLLMCache().bind(model, 30, press=press)
        x = torch.cat([prompt, torch.full((2, 8), model.config.mask_token_id)], dim=1)
        full_mask = torch.cat([mask, torch.ones(2, 8, dtype=mask.dtype)], dim=1)
        denoiser.logits_at(x, full_mask, torch.arange(30, 38))
        for cache in denoiser.layers:
            kept = cache.prompt_positions.long()
            slot_valid = cache.prompt_kv()[2]
            valid = torch.ones_like(kept, dtype=torch.bool) if slot_valid is None else slot_valid.expand_as(kept)
            assert bool((kept[1][valid[1]] >= 12).all()), type(press).__name__
    out = maskkv.generate(model, prompt, attention_mask=mask, gen_length=8, steps=8, block_length=4,
                          cache=DLLMCache(), press=MaskKVPress(budget=6))
    assert not bool((out.sequences == model.config.mask_token_id).any())


# ----- memory -------------------------------------------------------------------------------


def test_layer_by_layer_eviction_lowers_the_first_pass_peak(model, tmp_path):
    p, gen = 200, 8
    prompt = _prompt(model, 1, p, seed=8)
    profile = save_profile(tmp_path / "profile.json", model.config, calibrate(model, [prompt], gen, progress=False))
    x = torch.cat([prompt, torch.full((1, gen), model.config.mask_token_id)], dim=1)
    peaks = {}
    for name, press in (("none", None), ("online", MaskKVPress(budget=8)),
                        ("offline", MaskKVPress(budget=8, profile=str(profile)))):
        denoiser = DLLMCache().bind(model, p, press=press)
        denoiser.logits_at(x, None, torch.arange(p, p + gen))
        peaks[name] = denoiser.stats.peak_bytes
    assert peaks["offline"] < peaks["online"] <= peaks["none"]
    cfg = model.config
    one_layer_prompt_kv = 2 * cfg.num_kv_heads * p * cfg.head_dim * 4
    assert peaks["offline"] < 2 * one_layer_prompt_kv  # about one layer's full prompt K/V at a time


def test_last_layer_runs_only_the_rows_read_later(model, tmp_path):
    """The first pass skips the last layer's prompt queries unless prompt features, every row's
    projection or an online allocation (Eq. 8 over every row) needs them; the logits do not change."""
    p, gen = 40, 8
    prompt = _prompt(model, 1, p, seed=12)
    profile = save_profile(tmp_path / "profile.json", model.config, calibrate(model, [prompt], gen, progress=False))
    x = torch.cat([prompt, torch.full((1, gen), model.config.mask_token_id)], dim=1)
    positions = torch.arange(p, p + gen)
    reference = model.logits_at(x, None, positions)
    read = gen + int(model.config.logits_shift)  # Dream also reads row P-1
    cases = (
        (DLLMCache(), None, read),
        (DLLMCache(), MaskKVPress(budget=8, profile=str(profile)), read),
        (DLLMCache(), make_press("snapkv", 8), read),
        (DLLMCache(), MaskKVPress(budget=8), p + gen),  # online: Eq. 8 reads every row of every layer
        (DLLMCache(), make_press("squeeze", 8), p + gen),
        (DLLMCache(prompt_state_exclusion=False), None, p + gen),
        (DLLMCache(mask_only_projection=False), None, p + gen),
    )
    for policy, press, last_rows in cases:
        denoiser = policy.bind(model, p, press=press)
        logits = denoiser.logits_at(x, None, positions)
        assert denoiser.passes[0].rows_per_layer == [p + gen] * (model.config.num_layers - 1) + [last_rows]
        torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)


# ----- calibration and profiles -------------------------------------------------------------


def test_profile_round_trip_and_wrong_model(model, tmp_path):
    prompt = _prompt(model, 1, 20, seed=9)
    importance = calibrate(model, [prompt, prompt[:, :10]], 8, progress=False)
    assert len(importance) == model.config.num_layers and all(v >= 0 for v in importance)
    path = save_profile(tmp_path / "p.json", model.config, importance, samples=2)
    out = maskkv.generate(model, prompt, gen_length=8, steps=8, press=MaskKVPress(budget=4, profile=str(path)))
    assert out.sequences.shape == (1, 28)
    other = tmp_path / "other"
    write_tiny_checkpoint(other, model.config.family, num_layers=3, hidden_size=64, num_heads=4, seed=99)
    with pytest.raises(ValueError, match="another model"):
        maskkv.generate(load_model(other), prompt, gen_length=8, steps=8, press=MaskKVPress(budget=4, profile=str(path)))
    payload = json.loads(path.read_text())
    payload["model"]["num_layers"] = 7
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="num_layers"):
        maskkv.generate(model, prompt, gen_length=8, steps=8, press=MaskKVPress(budget=4, profile=str(path)))


# ----- D6: prompt refresh after eviction ----------------------------------------------------


@pytest.mark.parametrize("refresh", ["keep", "revote", "none"])
def test_prompt_refresh_options(model, refresh):
    p = 30
    prompt = _prompt(model, 1, p, seed=10)
    policy = DLLMCache(prompt_interval=3, response_interval=2)
    press = MaskKVPress(budget=5, prompt_refresh=refresh)
    denoiser = policy.bind(model, p, press=press)
    from maskkv.sampling.generate import generate as sample

    out_full = maskkv.generate(model, prompt, gen_length=8, steps=8, cache=policy, press=MaskKVPress(budget=p, prompt_refresh=refresh))
    plain = maskkv.generate(model, prompt, gen_length=8, steps=8, cache=policy)
    assert torch.equal(out_full.sequences, plain.sequences)  # budget >= prompt: every option equals no eviction
    sample(denoiser, prompt, gen_length=8, steps=8)
    refreshed = [r.step for r in denoiser.passes if r.prompt_refresh]
    assert refreshed == ([1] if refresh == "none" else [1, 4, 7])
    assert all(layer.prompt_slots <= p for layer in denoiser.layers)
    assert denoiser.stats.kept_prompt_pairs == model.config.num_layers * model.config.num_kv_heads * 5


# ----- bad input ----------------------------------------------------------------------------


def test_bad_press_input():
    with pytest.raises(ValueError, match="budget must be a positive int"):
        MaskKVPress(budget=0)
    with pytest.raises(ValueError, match="budget must be a positive int"):
        SnapKVPress(budget=-3)
    with pytest.raises(ValueError, match="unknown press 'nope'"):
        make_press("nope", budget=4)
    with pytest.raises(ValueError, match=r"MaskKVPress.alpha must be in \[0, 1\], got 1.5"):
        MaskKVPress(budget=4, alpha=1.5)
    with pytest.raises(ValueError, match=r"MaskKVPress.beta must be in \[0, 1\], got -0.1"):
        MaskKVPress(budget=4, beta=-0.1)
    for name in ("alpha", "beta", "squeeze_fraction", "adakv_floor"):
        for bad in (float("nan"), float("inf"), "0.5"):
            with pytest.raises(ValueError, match=rf"\.{name} must be in \[0, 1\], got"):
                make_press("maskkv", 4, **{name: bad})
    with pytest.raises(ValueError, match="SnapKVPress.window must be an integer >= 0, got -1"):
        SnapKVPress(budget=4, window=-1)
    with pytest.raises(ValueError, match="PyramidKVPress.pyramid_beta must be an integer >= 1, got 0"):
        make_press("pyramidkv", 4, pyramid_beta=0)
    with pytest.raises(ValueError, match="SnapKVPress has no option alhpa; its options are"):
        make_press("snapkv", 4, alhpa=0.1)
    with pytest.raises(ValueError, match="prompt_refresh"):
        MaskKVPress(budget=4, prompt_refresh="sometimes")
    with pytest.raises(FileNotFoundError, match="maskkv calibrate"):
        from maskkv.presses.profile import load_profile

        load_profile("/nonexistent/profile.json", None)


def test_repr_is_a_reproducible_constructor():
    press = MaskKVPress(budget=64, alpha=0.2)
    assert eval(repr(press), {"MaskKVPress": MaskKVPress}) == press


def test_protected_tokens_and_group_reduction(model):
    p, gen = 40, 8
    x = torch.cat([_prompt(model, 1, p, seed=11), torch.full((1, gen), model.config.mask_token_id)], dim=1)
    press = MaskKVPress(budget=6, protect_first=2, protect_last=3, group_reduce="max", layer_allocation="uniform",
                        head_allocation="uniform")
    denoiser = DLLMCache().bind(model, p, press=press)
    denoiser.logits_at(x, None, torch.arange(p, p + gen))
    for cache in denoiser.layers:
        kept = cache.prompt_positions.long()
        for required in (0, 1, p - 3, p - 2, p - 1):
            assert bool((kept == required).any(-1).all()), required
        assert cache.prompt_slots == 6


def test_online_variant_is_announced_once(model, caplog):
    import maskkv.presses.base as base

    base._ONLINE_NOTICE_GIVEN = False
    prompt = _prompt(model, 1, 30, seed=12)
    with caplog.at_level("WARNING", logger="maskkv.presses.base"):
        for _ in range(2):
            maskkv.generate(model, prompt, gen_length=4, steps=4, press=MaskKVPress(budget=4))
    notices = [r for r in caplog.records if "online variant" in r.getMessage()]
    assert len(notices) == 1


def test_press_with_threshold_decoding(model):
    prompt = _prompt(model, 1, 30, seed=13)
    options = {"remasking": "maskgit_plus"} if model.config.family == "dream" else {}
    for cache in (None, DLLMCache()):
        out = maskkv.generate(model, prompt, gen_length=8, steps=8, block_length=4, threshold=0.2, cache=cache,
                              press=MaskKVPress(budget=5), **options)
        assert not bool((out.sequences == model.config.mask_token_id).any())


def test_online_maskkv_drops_queries_of_waiting_layers_and_keeps_the_same_tokens(model, monkeypatch):
    p, gen = 120, 8
    prompt = _prompt(model, 2, p, seed=21)
    x = torch.cat([prompt, torch.full((2, gen), model.config.mask_token_id)], dim=1)

    def kept_positions() -> list[torch.Tensor]:
        deferred = []
        original = PressPlan.after_layer

        def spy(self, ctx):
            keep = original(self, ctx)
            if keep is None:
                deferred.append(ctx)
            return keep

        monkeypatch.setattr(PressPlan, "after_layer", spy)
        denoiser = DLLMCache().bind(model, p, press=MaskKVPress(budget=10))
        denoiser.logits_at(x, None, torch.arange(p, p + gen))
        monkeypatch.undo()
        return deferred, [denoiser.plan.keep[i].indices for i in range(model.config.num_layers)]

    deferred, early = kept_positions()
    assert len(deferred) == model.config.num_layers  # online: every layer waited for the budgets
    assert all(ctx.queries is None and ctx.scores is not None for ctx in deferred)
    monkeypatch.setattr(MaskKVPress, "uses_window", lambda self: True)  # forces scoring after the pass
    deferred, late = kept_positions()
    assert all(ctx.scores is None for ctx in deferred)
    for a, b in zip(early, late, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----- PyramidKV: one window for every layer (baselines.md 1.3, corrected) -----------------


def _reference_pyramidkv_keep(queries, keys, p, layer, num_layers, budget, window=32, beta=20, kernel=7):
    """The original PyramidKV written out straight (KVCache-Factory's schedule, SnapKV's scores): a set per head.

    One window w for the schedule and for every layer: layer l keeps its cap_l best-scored prefix tokens and the
    last w prompt tokens. Scores: the window rows' softmax over every key (no causal mask in a dLLM), summed over
    the rows, averaged over a KV head's query group, max-pooled (k = 7, stride 1, edges see real neighbours only).
    """
    bb = budget - window
    mn, mx = bb // beta, 2 * bb - bb // beta
    if mx >= p - window:
        mx = p - window
        mn = 2 * bb - mx
    cap = mx - layer * ((mx - mn) // (num_layers - 1))
    if p < 2 * bb:
        cap = bb
    heads, kv_heads, head_dim = queries.shape[1], keys.shape[1], queries.shape[-1]
    group = heads // kv_heads
    kept = []
    for kv in range(kv_heads):
        column = torch.zeros(p - window, dtype=torch.float64)
        for h in range(kv * group, (kv + 1) * group):
            logits = queries[0, h, p - window : p].double() @ keys[0, kv].double().T / math.sqrt(head_dim)
            column += torch.softmax(logits, dim=-1).sum(0)[: p - window] / group
        pooled = [max(column[max(0, j - kernel // 2) : j + kernel // 2 + 1].tolist()) for j in range(p - window)]
        best = sorted(range(p - window), key=lambda j: (-pooled[j], j))[:cap]
        kept.append(sorted(best) + list(range(p - window, p)))
    return kept


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_pyramidkv_keeps_the_schedules_window_in_every_layer(family, tmp_path, monkeypatch):
    """B = 64 on a 4-layer model: layers keep 63/43/23/3 prefix tokens + the same 32 window tokens (3 + 32 in the
    last one, not 18 + 17), and each layer's kept set per head is the straightforward re-implementation's."""
    write_tiny_checkpoint(tmp_path / "m", family, num_layers=4, hidden_size=64, num_heads=4, seed=23)
    model = load_model(tmp_path / "m")
    p, gen, budget = 128, 8, 64
    x = torch.cat([_prompt(model, 1, p, seed=21), torch.full((1, gen), model.config.mask_token_id)], dim=1)
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    real_select = PressPlan._select

    def spy(plan, ctx, layer_budget):
        seen[ctx.layer] = (ctx.queries.detach().clone(), ctx.keys.detach().clone())
        return real_select(plan, ctx, layer_budget)

    monkeypatch.setattr(PressPlan, "_select", spy)
    denoiser = DLLMCache().bind(model, p, press=make_press("pyramidkv", budget))
    denoiser.logits_at(x, None, torch.arange(p, p + gen))
    layers = model.config.num_layers
    assert sorted(seen) == list(range(layers))
    for layer in range(layers):
        cache = denoiser.layers[layer]
        positions = cache.prompt_positions.long()
        slot_valid = cache.prompt_kv()[2]
        valid = torch.ones_like(positions, dtype=torch.bool) if slot_valid is None else slot_valid.expand_as(positions)
        expected = _reference_pyramidkv_keep(*seen[layer], p, layer, layers, budget)
        for head in range(model.config.num_kv_heads):
            kept = sorted(positions[0, head][valid[0, head]].tolist())
            prefix = [j for j in kept if j < p - 32]
            assert (len(prefix), len(kept) - len(prefix)) == ([63, 43, 23, 3][layer], 32)  # cap_l + the same w
            assert kept == expected[head], (layer, head)


def test_only_pyramidkv_keeps_the_global_window():
    """SqueezeAttention and AdaKV keep the per-layer rule w_eff(B_l) = min(w, B_l // 2)."""
    pyramid, squeeze = make_press("pyramidkv", 64), make_press("squeeze", 64)
    assert [pyramid.observation_window(b) for b in (95, 35, 16)] == [32, 32, 32]
    assert [squeeze.observation_window(b) for b in (95, 35, 16)] == [32, 17, 8]
    assert make_press("pyramidkv", 16).observation_window(24) == 8  # w_eff of the global B = 16
    assert make_press("maskkv", 64).observation_window(64) == 0  # no window: Mask-Voting scores every token
