"""dLLM-Cache engine: exactness, what is skipped, mask-only projection, memory accounting."""

from __future__ import annotations

import pytest
import torch

import maskkv
from maskkv.cache import DLLMCache
from maskkv.presses import MaskKVPress
from maskkv.models import load_model
from maskkv.models.tiny import write_tiny_checkpoint


@pytest.fixture(scope="module", params=["llada", "dream"])
def model(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"cache-{request.param}")
    write_tiny_checkpoint(path, request.param, num_layers=3, hidden_size=64, num_heads=4, seed=11)
    return load_model(path)


def _prompt(model, batch: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size - 64, (batch, length), generator=g)


def _canvas(model, prompt: torch.Tensor, gen: int, seed: int, filled: float = 0.3) -> torch.Tensor:
    """A canvas with a random share of the response already decoded."""
    g = torch.Generator().manual_seed(seed)
    resp = torch.full((prompt.shape[0], gen), model.config.mask_token_id)
    decoded = torch.rand(resp.shape, generator=g) < filled
    resp[decoded] = torch.randint(0, model.config.vocab_size - 64, (int(decoded.sum()),), generator=g)
    return torch.cat([prompt, resp], dim=1)


class Recorder:
    """Wraps a denoiser and keeps (canvas, mask, positions, logits) of every call."""

    def __init__(self, inner):
        self.inner, self.config, self.calls = inner, inner.config, []

    def logits_at(self, x, mask, positions):
        out = self.inner.logits_at(x, mask, positions)
        self.calls.append((x.clone(), None if mask is None else mask.clone(), positions.clone(), out))
        return out


# ----- exactness --------------------------------------------------------------------------

SHAPES = [  # (prompt, gen, steps, block)
    (9, 8, 8, None),
    (13, 12, 6, 4),
    (7, 16, 16, 8),
]


@pytest.mark.parametrize("prompt_len,gen,steps,block", SHAPES)
def test_refresh_every_pass_equals_uncached(model, prompt_len, gen, steps, block):
    prompt = _prompt(model, 2, prompt_len, seed=prompt_len)
    kwargs = dict(gen_length=gen, steps=steps, block_length=block)
    plain = maskkv.generate(model, prompt, **kwargs)
    cache = DLLMCache(prompt_interval=1, response_interval=1, transfer_ratio=0.0)
    cached = maskkv.generate(model, prompt, cache=cache, **kwargs)
    assert torch.equal(plain.sequences, cached.sequences)
    assert cached.nfe == plain.nfe


@pytest.mark.parametrize("options", [dict(threshold=0.5), dict(cfg_scale=1.0)], ids=["threshold", "cfg"])
def test_refresh_every_pass_equals_uncached_with_threshold_and_cfg(model, options):
    if "cfg_scale" in options and model.config.family == "dream":
        pytest.skip("cfg is a LLaDA option")
    if "threshold" in options and model.config.family == "dream":
        options = dict(options, remasking="maskgit_plus")
    prompt = _prompt(model, 1, 10, seed=21)
    kwargs = dict(gen_length=8, steps=8, block_length=4, **options)
    plain = maskkv.generate(model, prompt, **kwargs)
    cached = maskkv.generate(model, prompt, cache=DLLMCache(1, 1, 0.0), **kwargs)
    assert torch.equal(plain.sequences, cached.sequences)
    assert plain.nfe == cached.nfe


def test_default_cache_runs_with_threshold_cfg_and_padding(model):
    """The approximate default schedule works with every sampler option (tokens may differ)."""
    pad = model.config.pad_token_id
    prompt = torch.cat([_prompt(model, 1, 9, seed=1), torch.cat([torch.full((1, 3), pad), _prompt(model, 1, 6, 2)], 1)])
    mask = torch.ones_like(prompt)
    mask[1, :3] = 0
    options = dict(threshold=0.3) if model.config.family == "dream" else dict(threshold=0.3, cfg_scale=0.5)
    if model.config.family == "dream":
        options["remasking"] = "maskgit_plus"
    out = maskkv.generate(model, prompt, attention_mask=mask, gen_length=8, steps=8, block_length=4,
                          cache=DLLMCache(), **options)
    assert not bool((out.sequences == model.config.mask_token_id).any())


def test_refresh_every_pass_logits_match_at_every_step(model):
    prompt = _prompt(model, 1, 11, seed=3)
    cache = DLLMCache(prompt_interval=1, response_interval=1, transfer_ratio=0.0)
    denoiser = Recorder(cache.bind(model, prompt.shape[1]))
    from maskkv.sampling.generate import generate as sample

    sample(denoiser, prompt, gen_length=8, steps=8, block_length=4)
    assert len(denoiser.calls) == 8
    for x, mask, positions, logits in denoiser.calls:
        torch.testing.assert_close(logits, model.logits_at(x, mask, positions), atol=1e-4, rtol=1e-4)


def test_left_padded_batch_with_cache_equals_uncached(model):
    pad = model.config.pad_token_id
    a, b = _prompt(model, 1, 12, seed=1), _prompt(model, 1, 7, seed=2)
    prompt = torch.cat([a, torch.cat([torch.full((1, 5), pad), b], dim=1)])
    mask = torch.ones_like(prompt)
    mask[1, :5] = 0
    kwargs = dict(attention_mask=mask, gen_length=8, steps=8, block_length=4)
    plain = maskkv.generate(model, prompt, **kwargs)
    cached = maskkv.generate(model, prompt, cache=DLLMCache(1, 1, 0.0), **kwargs)
    assert torch.equal(plain.sequences, cached.sequences)


@pytest.mark.parametrize(
    "policy",
    [
        DLLMCache(prompt_interval=50, response_interval=1, transfer_ratio=0.0),  # response refresh (B)
        DLLMCache(prompt_interval=1, response_interval=50, transfer_ratio=0.0),  # prompt refresh (C)
        DLLMCache(prompt_interval=1, response_interval=50, transfer_ratio=0.5),  # C with V-verify
        DLLMCache(prompt_interval=50, response_interval=50, transfer_ratio=0.5),  # cached + V-verify (D)
        DLLMCache(prompt_interval=50, response_interval=50, transfer_ratio=0.0),  # cached (D)
        DLLMCache(prompt_interval=50, response_interval=1, prompt_state_exclusion=False),
    ],
    ids=["B", "C", "C-transfer", "D-transfer", "D", "B-no-exclusion"],
)
def test_every_branch_is_exact_on_an_unchanged_canvas(model, policy):
    """On the canvas the cache was filled from, reusing any cached feature changes nothing."""
    prompt = _prompt(model, 2, 10, seed=5)
    x = _canvas(model, prompt, 8, seed=6)
    positions = torch.nonzero(x[0] == model.config.mask_token_id).flatten()
    denoiser = policy.bind(model, prompt.shape[1])
    first = denoiser.logits_at(x, None, positions)
    second = denoiser.logits_at(x, None, positions)
    torch.testing.assert_close(first, model.logits_at(x, None, positions), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second, first, atol=1e-5, rtol=1e-5)


# ----- what is skipped and stored ---------------------------------------------------------


def test_default_schedule_skips_prompt_rows_and_stores_no_prompt_features(model):
    prompt_len, gen = 10, 16
    prompt = _prompt(model, 1, prompt_len, seed=7)
    policy = DLLMCache()  # 50 / 5 / 0.25
    denoiser = policy.bind(model, prompt_len)
    from maskkv.sampling.generate import generate as sample

    sample(denoiser, prompt, gen_length=gen, steps=gen, block_length=8)
    layers = model.config.num_layers
    transfer = int(gen * 0.25)
    assert len(denoiser.passes) == gen
    for record in denoiser.passes:
        if record.step == 1:
            # the last layer runs only the rows a later pass reads (Dream: also row P-1, its logits shift)
            last_rows = gen + (1 if model.config.logits_shift else 0)
            assert record.rows_per_layer == [prompt_len + gen] * (layers - 1) + [last_rows]
        elif record.response_refresh:  # s = 6, 11, 16: response rows only
            assert record.rows_per_layer == [gen] * layers
        else:  # layer 0 refreshes its response rows; the others V-verify `transfer` rows
            assert record.rows_per_layer == [gen] + [transfer] * (layers - 1)
        assert not record.prompt_refresh or record.step == 1
    assert all(layer.prompt_attn is None and layer.prompt_mlp is None for layer in denoiser.layers)
    assert denoiser.stats.bytes["prompt_features"] == (
        model.config.hidden_size * 4 if model.config.logits_shift else 0
    )


def test_prompt_refresh_recomputes_prompt_rows_on_schedule(model):
    prompt = _prompt(model, 1, 6, seed=8)
    denoiser = DLLMCache(prompt_interval=3, response_interval=2, transfer_ratio=0.0).bind(model, 6)
    from maskkv.sampling.generate import generate as sample

    sample(denoiser, prompt, gen_length=8, steps=8)
    refreshed = [r.step for r in denoiser.passes if r.prompt_refresh]
    assert refreshed == [1, 4, 7]
    rows = {r.step: r.rows_per_layer for r in denoiser.passes}
    layers, shift = model.config.num_layers, int(model.config.logits_shift)
    # prompt refresh, no response refresh; the last layer runs only the rows read later (Dream: row P-1)
    assert rows[4] == [6 + 8] + [6] * (layers - 2) + [shift]
    assert rows[7] == [6 + 8] * (layers - 1) + [8 + shift]  # both: a full pass


def test_mask_only_projection_never_projects_prompt_rows(model):
    prompt_len, gen = 12, 8
    prompt = _prompt(model, 1, prompt_len, seed=9)
    seen: list[int] = []
    handle = model.lm_head.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    try:
        denoiser = DLLMCache().bind(model, prompt_len)
        from maskkv.sampling.generate import generate as sample

        sample(denoiser, prompt, gen_length=gen, steps=gen, block_length=4)
    finally:
        handle.remove()
    # LLaDA at T=0 asks for the masked positions of the current block: at most 4 rows per pass
    assert seen and max(seen) <= 4 and sum(seen) == sum(r.projected_rows for r in denoiser.passes)
    with pytest.raises(ValueError, match="prompt positions"):
        denoiser.logits_at(_canvas(model, prompt, gen, 0), None, torch.tensor([1, prompt_len + 1]))


def test_projection_ablation_projects_every_row_but_gives_the_same_tokens(model):
    prompt = _prompt(model, 1, 9, seed=10)
    kwargs = dict(gen_length=8, steps=8, block_length=8)
    masked = maskkv.generate(model, prompt, cache=DLLMCache(), **kwargs)
    everything = maskkv.generate(model, prompt, cache=DLLMCache(mask_only_projection=False), **kwargs)
    assert torch.equal(masked.sequences, everything.sequences)


def test_exclusion_ablation_gives_same_tokens_and_more_memory(model):
    prompt = _prompt(model, 1, 9, seed=12)
    kwargs = dict(gen_length=8, steps=8, block_length=4)
    on = maskkv.generate(model, prompt, cache=DLLMCache(), **kwargs)
    off = maskkv.generate(model, prompt, cache=DLLMCache(prompt_state_exclusion=False), **kwargs)
    assert torch.equal(on.sequences, off.sequences)
    d, layers = model.config.hidden_size, model.config.num_layers
    assert off.cache_bytes["prompt_features"] - on.cache_bytes["prompt_features"] == (
        layers * 9 * 2 * d * 4
    )


def test_cache_bytes_match_the_analytic_formula(model):
    cfg = model.config
    batch, prompt_len, gen = 2, 14, 8
    prompt = _prompt(model, batch, prompt_len, seed=13)
    out = maskkv.generate(model, prompt, gen_length=gen, steps=gen, cache=DLLMCache())
    b = 4  # fp32
    d_kv = cfg.num_kv_heads * cfg.head_dim
    expected = {
        "prompt_kv": cfg.num_layers * batch * prompt_len * 2 * d_kv * b,
        "response_kv": cfg.num_layers * batch * gen * 2 * d_kv * b,
        "response_features": cfg.num_layers * batch * gen * 2 * cfg.hidden_size * b,
        "prompt_features": batch * cfg.hidden_size * b if cfg.logits_shift else 0,
    }
    for kind, value in expected.items():
        assert out.cache_bytes[kind] == value, kind
    assert out.cache_bytes["total"] == sum(expected.values())
    assert out.cache_bytes["peak"] >= out.cache_bytes["total"]


def test_bad_policy_values():
    with pytest.raises(ValueError, match="prompt_interval=0"):
        DLLMCache(prompt_interval=0)
    with pytest.raises(ValueError, match="transfer_ratio"):
        DLLMCache(transfer_ratio=1.5)
    for bad in (float("nan"), float("inf"), "0.25"):
        with pytest.raises(ValueError, match=r"DLLMCache.transfer_ratio must be in \[0, 1\], got"):
            DLLMCache(transfer_ratio=bad)


@pytest.mark.parametrize(
    "tp,tr,ratio",
    [(50, 5, 0.25), (3, 2, 0.5), (2, 3, 0.0), (4, 4, 0.25), (-1, 3, 0.25), (5, -1, 0.0)],
)
def test_llada_cache_matches_the_dllm_cache_reference_step_by_step(tmp_path_factory, tp, tr, ratio):
    """Our explicit-state engine against a literal transcription of dLLM-Cache's hooks (LLaDA)."""
    from reference_dllm_cache import ReferenceDLLMCache

    from maskkv.sampling.generate import generate as sample

    path = tmp_path_factory.mktemp("parity")
    write_tiny_checkpoint(path, "llada", num_layers=3, hidden_size=64, num_heads=4, seed=23)
    model = load_model(path)
    prompt = _prompt(model, 1, 14, seed=tp * 7 + tr)
    policy = DLLMCache(prompt_interval=tp, response_interval=tr, transfer_ratio=ratio)
    ours = Recorder(policy.bind(model, 14))
    sample(ours, prompt, gen_length=16, steps=16, block_length=8)
    reference = ReferenceDLLMCache(model, 14, tp, tr, ratio)
    for x, _, positions, logits in ours.calls:
        expected = reference.logits(x)[:, positions]
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_sampling_with_temperature_through_the_cache(model):
    """At T > 0 a cache draws noise only for the rows it predicts; seeded runs reproduce."""
    prompt = _prompt(model, 1, 10, seed=31)
    options = {} if model.config.family == "llada" else {"remasking": "entropy"}
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append(maskkv.generate(model, prompt, gen_length=8, steps=8, temperature=0.7, cache=DLLMCache(),
                                    press=MaskKVPress(budget=4), **options).sequences)
    assert torch.equal(runs[0], runs[1])
    assert not bool((runs[0] == model.config.mask_token_id).any())
