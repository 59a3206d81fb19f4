"""The same exactness guarantees on a CUDA GPU (skipped without one; CI has none).

On CUDA in fp32 (TF32 off) the model must match its CPU numerics (logits within 1e-4, tokens
identical), the cache and every press with eviction disabled must decode exactly like the
uncached run, and every press evicting must keep as many pairs and decode the same tokens as on the
CPU. In bf16 the ragged per-head cache goes through ``varlen_attn``: on the trained
bundled model it must decode the same tokens as the padded path.
"""

from __future__ import annotations

import pytest
import torch

import maskkv
from maskkv.cache import DLLMCache
from maskkv.demo import shipped_model_path
from maskkv.models import load_model
from maskkv.models.tiny import write_tiny_checkpoint
from maskkv.presses import PRESSES, make_press
from maskkv.train.evaluate import heldout_samples, make_heldout_builder, prompt_ids

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def no_tf32():
    """Full fp32 matmuls on the GPU, so the 1e-4 logit tolerance applies."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.fixture(scope="module", params=["llada", "dream"])
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"cuda-{request.param}")
    write_tiny_checkpoint(path, request.param, num_layers=3, hidden_size=64, num_heads=4, seed=31)
    return path


def _prompt(vocab_size: int, batch: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size - 64, (batch, length), generator=g)


def test_fp32_logits_and_tokens_match_the_cpu(checkpoint):
    cpu = load_model(checkpoint, dtype=torch.float32)
    gpu = load_model(checkpoint, device="cuda", dtype=torch.float32)
    prompt = _prompt(cpu.config.vocab_size, 2, 24, seed=1)
    x = torch.cat([prompt, torch.full((2, 16), cpu.config.mask_token_id)], dim=1)
    with torch.inference_mode():
        expected = cpu(x).logits
        got = gpu(x.cuda()).logits.cpu()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    kwargs = dict(gen_length=16, steps=16, block_length=8)
    on_cpu = maskkv.generate(cpu, prompt, **kwargs)
    on_gpu = maskkv.generate(gpu, prompt.cuda(), **kwargs)
    assert torch.equal(on_gpu.sequences.cpu(), on_cpu.sequences)


@pytest.mark.parametrize("name", sorted(PRESSES))
def test_eviction_disabled_decodes_like_the_uncached_run(checkpoint, name):
    model = load_model(checkpoint, device="cuda", dtype=torch.float32)
    prompt = _prompt(model.config.vocab_size, 1, 20, seed=2).cuda()
    kwargs = dict(gen_length=8, steps=8, block_length=4)
    plain = maskkv.generate(model, prompt, **kwargs)
    refreshed = maskkv.generate(
        model, prompt, cache=DLLMCache(prompt_interval=1, response_interval=1, transfer_ratio=0.0), **kwargs
    )
    cached = maskkv.generate(model, prompt, cache=DLLMCache(), **kwargs)
    pressed = maskkv.generate(model, prompt, press=make_press(name, budget=20), **kwargs)
    pressed_cached = maskkv.generate(model, prompt, cache=DLLMCache(), press=make_press(name, budget=20), **kwargs)
    assert torch.equal(refreshed.sequences, plain.sequences)
    assert torch.equal(pressed.sequences, plain.sequences)
    assert torch.equal(pressed_cached.sequences, cached.sequences)


@pytest.mark.parametrize("name", sorted(PRESSES))
def test_every_press_evicts_on_the_gpu_like_on_the_cpu(checkpoint, name):
    """fp32: the same scores up to rounding, so the same kept pairs and the same tokens as on the CPU."""
    cpu = load_model(checkpoint, dtype=torch.float32)
    gpu = load_model(checkpoint, device="cuda", dtype=torch.float32)
    prompt = _prompt(cpu.config.vocab_size, 2, 40, seed=3)
    kwargs = dict(gen_length=8, steps=8, block_length=4)
    for cache in (None, DLLMCache):
        on_cpu = maskkv.generate(cpu, prompt, cache=cache and cache(), press=make_press(name, budget=6), **kwargs)
        on_gpu = maskkv.generate(gpu, prompt.cuda(), cache=cache and cache(), press=make_press(name, budget=6),
                                 **kwargs)  # fmt: skip
        assert on_gpu.cache_bytes["kept_prompt_pairs"] == on_cpu.cache_bytes["kept_prompt_pairs"]
        assert torch.equal(on_gpu.sequences.cpu(), on_cpu.sequences)


@pytest.mark.parametrize("name", ["maskkv", "adakv"])
def test_bf16_varlen_path_decodes_like_the_padded_path(name, monkeypatch):
    """Head-adaptive budgets give ragged caches; varlen and padded attention must pick the same tokens."""
    from maskkv.cache import varlen as varlen_module

    path = shipped_model_path()
    model = load_model(path, device="cuda", dtype=torch.bfloat16)
    assert varlen_module.varlen_available(torch.empty(1, device="cuda", dtype=torch.bfloat16))
    tokenizer = maskkv.load_tokenizer(str(path))
    sample = heldout_samples(make_heldout_builder(tokenizer, filler="synthetic"), "multikey", 768, 1)[0]
    prompt = prompt_ids(tokenizer, sample.content).cuda()
    kwargs = dict(gen_length=8, steps=8, block_length=8, cache=DLLMCache())
    calls = []
    kernel = varlen_module.torch_varlen_kernel()

    def counting_kernel(*args, **kw):
        calls.append(1)
        return kernel(*args, **kw)

    monkeypatch.setattr(varlen_module, "torch_varlen_kernel", lambda: counting_kernel)
    through_varlen = maskkv.generate(model, prompt, press=make_press(name, budget=48), **kwargs)
    assert calls, "no ragged layer reached the varlen kernel"
    monkeypatch.setattr("maskkv.cache.engine.varlen_available", lambda q: False)
    padded = maskkv.generate(model, prompt, press=make_press(name, budget=48), **kwargs)
    assert torch.equal(through_varlen.sequences, padded.sequences)


# ----- issue 23: the decode step without host syncs, replayed from CUDA graphs ---------------------------


def _graphed_and_eager(model, prompt, make_cache, press=None, **kwargs):
    eager = maskkv.generate(model, prompt, cache=make_cache(False), press=press, **kwargs)
    denoiser = make_cache(True).bind(model, prompt.shape[1], press=press, block_length=kwargs["block_length"])
    graphed = maskkv.generate(denoiser, prompt, **kwargs)
    return eager, graphed, denoiser


@pytest.mark.parametrize("system", ["dllm-cache", "maskkv", "adakv", "fast-prefix", "fast-dual"])
def test_cuda_graph_replay_decodes_like_the_eager_steps(checkpoint, system):
    """Every steady pass replayed from a CUDA graph (one per kind): the same tokens as the eager passes."""
    model = load_model(checkpoint, device="cuda", dtype=torch.float32)
    prompt = _prompt(model.config.vocab_size, 1, 48, seed=4).cuda()
    kwargs = dict(gen_length=16, steps=16, block_length=8)
    if system.startswith("fast-"):
        from maskkv.cache.fast_dllm import FastDLLMCache

        mode = system.removeprefix("fast-")
        eager, graphed, denoiser = _graphed_and_eager(
            model, prompt, lambda g: FastDLLMCache(mode, cuda_graphs=g), **kwargs
        )
    else:
        press = None if system == "dllm-cache" else make_press(system, budget=12)
        eager, graphed, denoiser = _graphed_and_eager(
            model, prompt, lambda g: DLLMCache(cuda_graphs=g), press, **kwargs
        )
    assert denoiser.static_positions and denoiser.graphs.captures >= 1 and denoiser.graphs.replays >= 8
    assert torch.equal(graphed.sequences, eager.sequences)


def test_cuda_graph_replay_in_bf16_with_ragged_heads():
    """The bundled model in bf16, MaskKV's unequal head budgets (ragged storage, varlen kernel): same tokens."""
    path = shipped_model_path()
    model = load_model(path, device="cuda", dtype=torch.bfloat16)
    tokenizer = maskkv.load_tokenizer(str(path))
    sample = heldout_samples(make_heldout_builder(tokenizer, filler="synthetic"), "multikey", 768, 1)[0]
    prompt = prompt_ids(tokenizer, sample.content).cuda()
    kwargs = dict(gen_length=16, steps=16, block_length=16)
    eager, graphed, denoiser = _graphed_and_eager(
        model, prompt, lambda g: DLLMCache(cuda_graphs=g), make_press("maskkv", budget=48), **kwargs
    )
    assert denoiser.graphs.replays >= 8
    assert torch.equal(graphed.sequences, eager.sequences)


def test_no_host_sync_in_a_cuda_decode_step(checkpoint):
    """The dispatch-mode count on the GPU itself: no op of a steady step reads the device on the host."""
    from maskkv.bench.opcount import count_decode_steps

    model = load_model(checkpoint, device="cuda", dtype=torch.float32)
    prompt = _prompt(model.config.vocab_size, 1, 64, seed=6).cuda()
    denoiser = DLLMCache().bind(model, 64, press=make_press("maskkv", budget=16), block_length=16)
    _, counts = count_decode_steps(
        denoiser, lambda m: maskkv.generate(m, prompt, gen_length=16, steps=16, block_length=16)
    )
    assert counts.summary()["syncs_per_step_max"] == 0, counts.summary()["sync_ops"]


def test_cuda_graphs_follow_a_loop_that_asks_for_other_positions_each_pass(checkpoint):
    """Dream's origin remasking keeps the reference's device reads: each pass may ask for a different number
    of positions, and each shape gets its own graph (same tokens as eager, no shape error)."""
    model = load_model(checkpoint, device="cuda", dtype=torch.float32)
    if model.config.family != "dream":
        pytest.skip("origin remasking is Dream's")
    prompt = _prompt(model.config.vocab_size, 1, 48, seed=4).cuda()
    kwargs = dict(gen_length=16, steps=16, block_length=8, remasking="origin")
    torch.manual_seed(0)
    eager = maskkv.generate(model, prompt, cache=DLLMCache(), **kwargs)
    denoiser = DLLMCache(cuda_graphs=True).bind(model, prompt.shape[1], block_length=8)
    torch.manual_seed(0)
    graphed = maskkv.generate(denoiser, prompt, **kwargs)
    assert torch.equal(graphed.sequences, eager.sequences)
