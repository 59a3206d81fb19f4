"""Fast-dLLM prefix/dual cache: exact where nothing it freezes can change, what each pass computes, bytes."""

from __future__ import annotations

import pytest
import torch

import maskkv
from maskkv.cache import FastDLLMCache
from maskkv.models import load_model
from maskkv.models.tiny import write_tiny_checkpoint
from maskkv.presses import make_press

MODES = ["prefix", "dual"]


def _model(tmp_path_factory, family: str, layers: int):
    path = tmp_path_factory.mktemp(f"fast-{family}-{layers}")
    write_tiny_checkpoint(path, family, num_layers=layers, hidden_size=64, num_heads=4, seed=5)
    return load_model(path)


@pytest.fixture(scope="module", params=["llada", "dream"])
def model(request, tmp_path_factory):
    return _model(tmp_path_factory, request.param, 3)


@pytest.fixture(scope="module", params=["llada", "dream"])
def one_layer_model(request, tmp_path_factory):
    return _model(tmp_path_factory, request.param, 1)


def _prompt(model, batch: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size - 64, (batch, length), generator=g)


def _padded_batch(model) -> tuple[torch.Tensor, torch.Tensor]:
    pad = model.config.pad_token_id
    a, b = _prompt(model, 1, 11, seed=1), _prompt(model, 1, 7, seed=2)
    prompt = torch.cat([a, torch.cat([torch.full((1, 4), pad), b], dim=1)])
    mask = torch.ones_like(prompt)
    mask[1, :4] = 0
    return prompt, mask


@pytest.mark.parametrize("mode", MODES)
def test_one_pass_per_block_equals_uncached(model, mode):
    """Every pass is then a block's full forward: nothing is reused, the tokens are the uncached ones."""
    prompt, mask = _padded_batch(model)
    kwargs = dict(attention_mask=mask, gen_length=12, steps=3, block_length=4)
    plain = maskkv.generate(model, prompt, **kwargs)
    cached = maskkv.generate(model, prompt, cache=FastDLLMCache(mode), **kwargs)
    assert torch.equal(plain.sequences, cached.sequences) and plain.nfe == cached.nfe == 3


@pytest.mark.parametrize("mode", MODES)
def test_one_layer_model_is_exact_at_every_step(one_layer_model, mode):
    """With one layer the frozen K/V depend only on tokens that cannot change within the block."""
    model = one_layer_model
    prompt, mask = _padded_batch(model)
    kwargs = dict(attention_mask=mask, gen_length=16, steps=16, block_length=8)
    plain = maskkv.generate(model, prompt, **kwargs)
    cached = maskkv.generate(model, prompt, cache=FastDLLMCache(mode), **kwargs)
    assert torch.equal(plain.sequences, cached.sequences)


@pytest.mark.parametrize("mode", MODES)
def test_block_pass_on_an_unchanged_canvas_matches_the_uncached_logits(model, mode):
    prompt, mask = _padded_batch(model)
    gen, block = 12, 4
    g = torch.Generator().manual_seed(7)
    response = torch.full((2, gen), model.config.mask_token_id)
    response[:, :block] = torch.randint(0, model.config.vocab_size - 64, (2, block), generator=g)  # block 0 done
    x = torch.cat([prompt, response], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(response)], dim=1)
    p = prompt.shape[1]
    positions = torch.arange(p + block, p + 2 * block)  # block 1
    denoiser = FastDLLMCache(mode).bind(model, p, block_length=block)
    first = denoiser.logits_at(x, full_mask, positions)
    second = denoiser.logits_at(x, full_mask, positions[1:])
    expected = model.logits_at(x, full_mask, positions)
    assert [r.full for r in denoiser.passes] == [True, False]
    torch.testing.assert_close(first, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second, expected[:, 1:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_passes_and_cache_bytes(tmp_path_factory, mode):
    model = _model(tmp_path_factory, "llada", 2)
    cfg = model.config
    p, gen, block = 10, 16, 8
    denoiser = FastDLLMCache(mode).bind(model, p, block_length=block)
    from maskkv.sampling.generate import generate as sample

    sample(denoiser, _prompt(model, 1, p, seed=3), gen_length=gen, steps=8, block_length=block)
    records = [(r.full, r.block, r.query_rows) for r in denoiser.passes]
    rest = [gen, gen - block] if mode == "prefix" else [block, block]  # prefix: the block and all later rows
    assert records == [
        (True, 0, p + gen), *[(False, 0, rest[0])] * 3, (True, 1, p + gen), *[(False, 1, rest[1])] * 3
    ]
    per_position = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * 4  # K and V, fp32
    frozen_response = block if mode == "prefix" else gen  # prefix: block 0 only; dual: everything
    stats = denoiser.stats.as_dict()
    assert stats["prompt_kv"] == p * per_position
    assert stats["response_kv"] == frozen_response * per_position
    assert stats["total"] == stats["peak"] == (p + frozen_response) * per_position
    assert stats["prompt_pairs"] == stats["kept_prompt_pairs"] == cfg.num_layers * cfg.num_kv_heads * p


def test_errors_say_what_to_do(model):
    with pytest.raises(ValueError, match="mode"):
        FastDLLMCache("suffix")
    with pytest.raises(ValueError, match="does not evict"):
        FastDLLMCache().bind(model, 8, press=make_press("snapkv", 4), block_length=4)
    with pytest.raises(ValueError, match="block_length"):
        FastDLLMCache().bind(model, 8)
    denoiser = FastDLLMCache().bind(model, 8, block_length=4)
    x = torch.cat([_prompt(model, 1, 8, seed=1), torch.full((1, 8), model.config.mask_token_id)], dim=1)
    with pytest.raises(ValueError, match="span more than the block"):
        denoiser.logits_at(x, None, torch.tensor([9, 13]))
    with pytest.raises(ValueError, match="prompt position"):
        denoiser.logits_at(x, None, torch.tensor([3]))
