"""Ragged per-head prompt storage (MaskKV D10 b) and its varlen attention path.

Flattened storage must decode exactly like the padded layout (D10 a) it replaces, hold only the kept
pairs, and its packing for a varlen kernel must give the attention of the padded path. The varlen
kernel itself is CUDA-only: on CPU it is replaced by a reference kernel with the same signature.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import maskkv
from maskkv.cache import DLLMCache
from maskkv.cache import varlen as varlen_module
from maskkv.cache.state import RaggedPrompt
from maskkv.cache.varlen import packed_key_rows, ragged_attention
from maskkv.models import load_model
from maskkv.models.tiny import write_tiny_checkpoint
from maskkv.presses import MaskKVPress, make_press
from maskkv.sampling.generate import generate as sample


@pytest.fixture(scope="module", params=["llada", "dream"])
def model(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"ragged-{request.param}")
    write_tiny_checkpoint(path, request.param, num_layers=3, hidden_size=64, num_heads=4, seed=23)
    return load_model(path)


def _prompt(model, batch: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size - 64, (batch, length), generator=g)


def reference_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k):
    """``varlen_attn`` semantics (non-causal, scale 1/sqrt(hd)), one sequence at a time (test only)."""
    out = torch.empty_like(query)
    for s in range(cu_seq_q.numel() - 1):
        q0, q1, k0, k1 = int(cu_seq_q[s]), int(cu_seq_q[s + 1]), int(cu_seq_k[s]), int(cu_seq_k[s + 1])
        assert q1 - q0 <= max_q and k1 - k0 <= max_k
        q, k, v = (t.transpose(0, 1)[None] for t in (query[q0:q1], key[k0:k1], value[k0:k1]))
        out[q0:q1] = F.scaled_dot_product_attention(q, k, v)[0].transpose(0, 1)
    return out


def _ragged(batch: int, heads: int, width: int, hd: int, seed: int) -> tuple[RaggedPrompt, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, width + 1, (batch, heads), generator=g)
    counts.view(-1)[0] = width  # the widest sequence sets the padded width
    valid = torch.arange(width) < counts[..., None]
    k, v = torch.randn(batch, heads, width, hd, generator=g), torch.randn(batch, heads, width, hd, generator=g)
    return RaggedPrompt.from_padded(k, v, valid), k, v


def test_ragged_prompt_flattens_exactly_the_valid_slots():
    prompt, k, v = _ragged(2, 3, 7, 5, seed=0)
    assert prompt.k.shape == (int(prompt.counts.sum()), 5)
    assert prompt.offsets.tolist() == [0, *prompt.counts.flatten().cumsum(0).tolist()]
    k_pad, v_pad = prompt.padded()
    valid = prompt.valid[..., None]
    assert torch.equal(torch.where(valid, k_pad, 0), torch.where(valid, k, 0))
    assert torch.equal(torch.where(valid, v_pad, 0), torch.where(valid, v, 0))
    assert prompt.nbytes == 2 * prompt.k.numel() * 4


def test_packed_rows_put_each_sequence_prompt_then_response():
    prompt, _, _ = _ragged(2, 2, 4, 3, seed=1)
    g = 3
    rows, cu = packed_key_rows(prompt, g)
    n = prompt.k.shape[0]
    counts = prompt.counts.flatten().tolist()
    expected, offset = [], 0
    for s, count in enumerate(counts):
        expected += list(range(offset, offset + count)) + [n + s * g + t for t in range(g)]
        offset += count
    assert rows.tolist() == expected
    assert cu.dtype == torch.int32 and cu.tolist() == [0, *torch.tensor(counts).add(g).cumsum(0).tolist()]


@pytest.mark.parametrize("group", [1, 2])
def test_varlen_packing_equals_padded_attention(group):
    prompt, _, _ = _ragged(2, 2, 6, 8, seed=2)
    g, tq = 3, 5
    gen = torch.Generator().manual_seed(3)
    resp_k, resp_v = torch.randn(2, 2, g, 8, generator=gen), torch.randn(2, 2, g, 8, generator=gen)
    q = torch.randn(2, 2 * group, tq, 8, generator=gen)
    out = ragged_attention(q, prompt, resp_k, resp_v, kernel=reference_varlen)
    k_pad, v_pad = prompt.padded()
    keys, values = torch.cat([k_pad, resp_k], 2), torch.cat([v_pad, resp_v], 2)
    mask = torch.cat([prompt.valid, prompt.valid.new_ones(2, 2, g)], 2).repeat_interleave(group, 1)[:, :, None]
    expected = F.scaled_dot_product_attention(q, keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1),
                                              attn_mask=mask)  # fmt: skip
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


def _unequal_press(name: str):
    return MaskKVPress(budget=6) if name == "maskkv" else make_press(name, budget=6)


@pytest.mark.parametrize("press_name", ["maskkv", "adakv"])
@pytest.mark.parametrize(
    "policy, kept_attention",
    [
        (dict(), False),
        (dict(prompt_interval=3, response_interval=2, transfer_ratio=0.5), False),
        (dict(prompt_interval=2, response_interval=1), True),
    ],
    ids=["defaults", "refreshes", "kept-attention"],
)
def test_ragged_storage_decodes_exactly_like_padded_heads(model, press_name, policy, kept_attention):
    p, gen = 40, 8
    prompt = _prompt(model, 2, p, seed=4)
    mask = torch.ones_like(prompt)
    mask[1, :9] = 0  # a left-padded sample
    outputs, caches = [], []
    for ragged in (True, False):
        cache = DLLMCache(ragged_storage=ragged, **policy)
        denoiser = cache.bind(model, p, press=_unequal_press(press_name), kept_attention=kept_attention)
        out = sample(denoiser, prompt, attention_mask=mask, gen_length=gen, steps=gen, block_length=4)
        outputs.append(out.sequences)
        caches.append(denoiser)
    assert torch.equal(outputs[0], outputs[1])
    ragged, padded = caches
    canvas, positions = outputs[0], torch.arange(p, p + gen)
    full_mask = torch.cat([mask, torch.ones(2, gen, dtype=mask.dtype)], dim=1)
    # one more pass on the final canvas: the logits themselves are bit-identical, not just the argmax
    assert torch.equal(ragged.logits_at(canvas, full_mask, positions), padded.logits_at(canvas, full_mask, positions))
    assert any(layer.ragged is not None for layer in ragged.layers), "the press gave every head the same budget"
    assert all(layer.ragged is None for layer in padded.layers)
    assert ragged.stats.kept_prompt_pairs == padded.stats.kept_prompt_pairs
    hd, e = model.config.head_dim, 4
    assert ragged.stats.bytes["prompt_kv"] == ragged.stats.kept_prompt_pairs * hd * 2 * e  # no padding held
    assert padded.stats.bytes["prompt_kv"] > ragged.stats.bytes["prompt_kv"]


def test_varlen_path_in_the_engine_gives_the_same_tokens(model, monkeypatch):
    """The engine's CUDA branch, run on CPU with the reference kernel: same tokens as the padded path."""
    prompt = _prompt(model, 2, 40, seed=4)
    mask = torch.ones_like(prompt)
    mask[1, :9] = 0
    kwargs = dict(attention_mask=mask, gen_length=8, steps=8, block_length=4, cache=DLLMCache(response_interval=2),
                  press=MaskKVPress(budget=6))  # fmt: skip
    padded = maskkv.generate(model, prompt, **kwargs)
    calls = []

    def kernel(*args):
        calls.append(args[0].shape)
        return reference_varlen(*args)

    monkeypatch.setattr(varlen_module, "torch_varlen_kernel", lambda: kernel)
    monkeypatch.setattr("maskkv.cache.engine.varlen_available", lambda q: True)
    through_varlen = maskkv.generate(model, prompt, **kwargs)
    assert calls, "no ragged layer reached the varlen branch"
    assert torch.equal(through_varlen.sequences, padded.sequences)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.nn.attention.varlen)")
def test_cuda_varlen_kernel_matches_the_padded_path():
    prompt, _, _ = _ragged(2, 4, 64, 64, seed=6)
    prompt = RaggedPrompt(*(t.cuda() for t in (prompt.k, prompt.v, prompt.counts, prompt.offsets, prompt.slot_rows,
                                               prompt.valid)))  # fmt: skip
    prompt.k, prompt.v = prompt.k.bfloat16(), prompt.v.bfloat16()
    gen = torch.Generator(device="cuda").manual_seed(7)
    resp_k, resp_v = (torch.randn(2, 4, 16, 64, generator=gen, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    q = torch.randn(2, 8, 16, 64, generator=gen, device="cuda", dtype=torch.bfloat16)
    assert varlen_module.varlen_available(q)
    out = ragged_attention(q, prompt, resp_k, resp_v)
    expected = ragged_attention(q.float(), RaggedPrompt(prompt.k.float(), prompt.v.float(), *(
        prompt.counts, prompt.offsets, prompt.slot_rows, prompt.valid)), resp_k.float(), resp_v.float(),
        kernel=reference_varlen)  # fmt: skip
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)


def test_importing_the_engine_does_not_load_torch_dynamo():
    """``torch.nn.attention.varlen`` pulls in ``torch._dynamo`` (~1 s, ~70 MiB RSS): only on first CUDA use."""
    import subprocess
    import sys

    code = "import sys, maskkv.cache, maskkv.bench.runner; print('torch._dynamo' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
