"""Model numerics: loading real-layout checkpoints and matching the reference forward passes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from reference_forward import dream_reference_logits, llada_reference_logits, read_state_dict

import maskkv
from maskkv.models import CheckpointError, load_model
from maskkv.models.rope import apply_rotary, inverse_frequencies, rotary_cos_sin
from maskkv.models.tiny import write_tiny_checkpoint
from maskkv.models.transformer import RMSNorm

REFERENCE = {"llada": llada_reference_logits, "dream": dream_reference_logits}


@pytest.fixture(scope="module", params=["llada", "dream"])
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    write_tiny_checkpoint(path, request.param, num_layers=2, hidden_size=64, num_heads=4, seed=1)
    return request.param, path


def _ids(vocab: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab - 64, shape, generator=g)  # stay clear of special ids


def test_logits_match_reference(checkpoint):
    family, path = checkpoint
    model = load_model(path)
    ids = _ids(model.config.vocab_size, (2, 23), seed=0)
    ours = model(ids).logits
    theirs = REFERENCE[family](path, ids)
    assert ours.shape == (2, 23, model.config.vocab_size)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_llada_qkv_bias_loads_and_matches_reference(tmp_path):
    """LLaDA's ``include_qkv_bias`` (the reference gives q/k/v a bias) is a supported configuration."""
    path = write_tiny_checkpoint(tmp_path / "bias", "llada", num_layers=2, hidden_size=64, num_heads=4, seed=2,
                                 qkv_bias=True)
    assert json.loads((path / "config.json").read_text())["include_qkv_bias"] is True
    model = load_model(path)
    assert model.config.qkv_bias and model.layers[1].k_proj.bias is not None
    file_bias = read_state_dict(path)["model.transformer.blocks.1.k_proj.bias"]
    torch.testing.assert_close(model.layers[1].k_proj.bias, file_bias, atol=0, rtol=0)
    ids = _ids(model.config.vocab_size, (2, 19), seed=4)
    torch.testing.assert_close(model(ids).logits, llada_reference_logits(path, ids), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="Dream checkpoints always have"):
        write_tiny_checkpoint(tmp_path / "dream", "dream", qkv_bias=True)


def test_left_padded_batch_matches_reference_and_rows_alone(checkpoint):
    family, path = checkpoint
    model = load_model(path)
    pad = model.config.pad_token_id
    a = _ids(model.config.vocab_size, (1, 17), seed=3)
    b = _ids(model.config.vocab_size, (1, 11), seed=4)
    batch = torch.cat([a, torch.cat([torch.full((1, 6), pad), b], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :6] = 0
    ours = model(batch, attention_mask=mask).logits
    torch.testing.assert_close(ours, REFERENCE[family](path, batch, mask), atol=1e-4, rtol=1e-4)
    # each real row equals that row run alone (LLaDA: pads shift positions, equal up to rounding)
    torch.testing.assert_close(ours[0], model(a).logits[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours[1, 6:], model(b).logits[0], atol=1e-4, rtol=1e-4)
    if family == "dream":  # Dream masks pad queries: their attention output is exactly zero, never NaN
        assert torch.isfinite(ours).all()


def test_sharded_checkpoint_loads_identically(tmp_path):
    single, sharded = tmp_path / "one", tmp_path / "three"
    write_tiny_checkpoint(single, "llada", seed=5)
    write_tiny_checkpoint(sharded, "llada", seed=5, shards=3)
    assert (sharded / "model.safetensors.index.json").is_file()
    ids = _ids(256, (1, 9), seed=1)
    torch.testing.assert_close(load_model(single)(ids).logits, load_model(sharded)(ids).logits, atol=0, rtol=0)


def test_weights_load_without_random_init_and_in_requested_dtype(checkpoint):
    _, path = checkpoint
    model = load_model(path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in model.parameters())
    assert model.inv_freq.dtype == torch.float32


def test_logits_at_applies_dream_shift_and_projects_only_requested_rows(checkpoint):
    family, path = checkpoint
    model = load_model(path)
    ids = _ids(model.config.vocab_size, (2, 12), seed=7)
    full = model(ids).logits
    positions = torch.tensor([3, 4, 9])
    got = model.logits_at(ids, None, positions)
    rows = positions - 1 if family == "dream" else positions
    torch.testing.assert_close(got, full[:, rows], atol=1e-5, rtol=1e-5)
    calls = []
    handle = model.lm_head.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    model.logits_at(ids, None, positions)
    handle.remove()
    assert calls == [torch.Size([2, 3, model.config.hidden_size])]


# ----- numerics pinned by hand ------------------------------------------------------------


def test_rope_against_hand_computed_values():
    inv = inverse_frequencies(4, 10000.0)
    torch.testing.assert_close(inv, torch.tensor([1.0, 0.01]))
    cos, sin = rotary_cos_sin(torch.tensor([[3]]), inv)
    t = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4)
    # half split: pairs (t0, t2) rotate by angle 3*1, (t1, t3) by 3*0.01
    a0, a1 = 3.0, 0.03
    expected = torch.tensor(
        [
            1 * math.cos(a0) - 3 * math.sin(a0),
            2 * math.cos(a1) - 4 * math.sin(a1),
            3 * math.cos(a0) + 1 * math.sin(a0),
            4 * math.cos(a1) + 2 * math.sin(a1),
        ]
    )
    for in_fp32 in (True, False):
        torch.testing.assert_close(apply_rotary(t, cos, sin, in_fp32=in_fp32).flatten(), expected)


def test_rope_precision_conventions_differ_in_bf16():
    inv = inverse_frequencies(8, 500000.0)
    cos, sin = rotary_cos_sin(torch.arange(1000, 1003)[None], inv)
    t = torch.randn(1, 2, 3, 8, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    llada = apply_rotary(t, cos, sin, in_fp32=True)
    exact = (t.float() * cos[:, None] + torch.cat((-t.float()[..., 4:], t.float()[..., :4]), -1) * sin[:, None])
    assert torch.equal(llada, exact.to(torch.bfloat16))  # fp32 rotation, one cast at the end
    dream = apply_rotary(t, cos, sin, in_fp32=False)
    assert dream.dtype == torch.bfloat16


def test_rmsnorm_casts_statistics_to_fp32_and_back():
    norm = RMSNorm(4, eps=1e-5).to(torch.bfloat16)
    norm.weight.data = torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=torch.bfloat16)
    x = torch.tensor([[300.0, -2.0, 5.0, 1.0]], dtype=torch.bfloat16)
    x32 = x.float()
    y = (x32 / torch.sqrt((x32**2).mean() + 1e-5)).to(torch.bfloat16)
    assert torch.equal(norm(x), norm.weight * y)
    assert norm(x).dtype == torch.bfloat16


def test_gqa_equals_mha_with_repeated_kv_heads(tmp_path):
    """A Dream model with 2 KV heads equals the same model with its KV heads repeated (MHA)."""
    write_tiny_checkpoint(tmp_path / "gqa", "dream", num_heads=4, num_kv_heads=2, seed=2)
    gqa = load_model(tmp_path / "gqa")
    write_tiny_checkpoint(tmp_path / "mha", "dream", num_heads=4, num_kv_heads=4, seed=2)
    mha = load_model(tmp_path / "mha")
    shared = {k: v for k, v in gqa.state_dict().items() if "k_proj" not in k and "v_proj" not in k}
    mha.load_state_dict(shared, strict=False, assign=True)
    for lg, lm in zip(gqa.layers, mha.layers):
        for name in ("k_proj", "v_proj"):
            w = getattr(lg, name).weight.view(2, -1, 64)
            bias = getattr(lg, name).bias.view(2, -1)
            getattr(lm, name).weight = torch.nn.Parameter(w.repeat_interleave(2, 0).reshape(-1, 64))
            getattr(lm, name).bias = torch.nn.Parameter(bias.repeat_interleave(2, 0).reshape(-1))
    ids = _ids(gqa.config.vocab_size, (1, 10), seed=0)
    torch.testing.assert_close(gqa(ids).logits, mha(ids).logits, atol=1e-5, rtol=1e-5)


def test_rope_scaling_factor_multiplies_theta(tmp_path):
    write_tiny_checkpoint(tmp_path, "llada")
    model = load_model(tmp_path, rope_scaling_factor=4.0)
    assert model.config.effective_rope_theta == 4 * 500000.0
    torch.testing.assert_close(model.inv_freq, inverse_frequencies(model.config.head_dim, 2e6))


# ----- bad input ---------------------------------------------------------------------------


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(empty)

    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt, "llada")
    cfg = json.loads((ckpt / "config.json").read_text())

    bad_type = dict(cfg, model_type="gpt2")
    (ckpt / "config.json").write_text(json.dumps(bad_type))
    with pytest.raises(CheckpointError, match="unknown model_type 'gpt2'"):
        load_model(ckpt)

    (ckpt / "config.json").write_text(json.dumps(dict(cfg, d_model=cfg["d_model"] * 2)))
    with pytest.raises(CheckpointError, match=r"tensor model\.transformer\..* has shape"):
        load_model(ckpt)

    (ckpt / "config.json").write_text(json.dumps(dict(cfg, n_layers=cfg["n_layers"] + 1)))
    with pytest.raises(CheckpointError, match="missing tensor"):
        load_model(ckpt)

    no_theta = {k: v for k, v in cfg.items() if k != "rope_theta"}
    (ckpt / "config.json").write_text(json.dumps(no_theta))
    with pytest.raises(ValueError, match="rope_theta"):
        load_model(ckpt)

    (ckpt / "config.json").write_text(json.dumps(cfg))
    (ckpt / "model.safetensors").rename(ckpt / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_model(ckpt)


@pytest.mark.parametrize("shards", [1, 2])
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_safetensors_names_the_file_and_what_to_do(tmp_path, shards, damage):
    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", "llada", shards=shards, tokenizer=False)
    weights = sorted(ckpt.glob("*.safetensors"))[-1]
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00not safetensors" * 8,
                         "empty": b""}[damage])
    with pytest.raises(CheckpointError) as caught:
        load_model(ckpt)
    message = str(caught.value)
    assert f"{weights} is not a valid safetensors file" in message
    assert "download or copy it again" in message


def test_malformed_json_files_are_named(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", "llada", shards=2, tokenizer=False)
    (ckpt / "model.safetensors.index.json").write_text('{"weight_map": ')
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json is not valid JSON"):
        load_model(ckpt)
    (ckpt / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"config\.json must hold a JSON object, got list"):
        load_model(ckpt)
    with pytest.raises(ValueError, match="rope_scaling_factor must be > 0 and finite, got nan"):
        load_model(ckpt, rope_scaling_factor=float("nan"))


def test_public_api_exports():
    assert maskkv.load_model is load_model
    assert callable(maskkv.load_tokenizer)
    assert callable(maskkv.generate)


@pytest.mark.parametrize("rows", [1, 2, 5, 11, 12, 40])
def test_lm_head_logits_equals_linear_for_every_row_count(rows):
    from maskkv.models.transformer import lm_head_logits

    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(1000, 32, generator=gen)
    x = torch.randn(1, rows, 32, generator=gen)
    got = lm_head_logits(x, weight)
    assert got.shape == (1, rows, 1000) and got.is_contiguous()
    torch.testing.assert_close(got, torch.nn.functional.linear(x, weight), rtol=0, atol=1e-5)
    assert lm_head_logits(x[:, :0], weight).shape == (1, 0, 1000)


@pytest.mark.parametrize("rows", [1, 2, 5, 12, 40])
def test_packed_lm_head_gives_the_same_logits(rows):
    from maskkv.models.transformer import PackedLMHead

    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(1000, 32, generator=gen)
    head = PackedLMHead(weight)
    x = torch.randn(2, rows, 32, generator=gen)
    got = head(x)
    assert got.shape == (2, rows, 1000)
    torch.testing.assert_close(got, torch.nn.functional.linear(x, weight), rtol=0, atol=1e-5)
    assert torch.equal(head.weight, weight) and not list(head.parameters())
    import copy

    torch.testing.assert_close(copy.deepcopy(head)(x), got, rtol=0, atol=0)
    with pytest.raises(ValueError, match="unpack_lm_head"):
        head(x.double())


def test_load_model_packs_an_untied_cpu_lm_head_and_keeps_the_state_dict(tmp_path):
    from importlib import resources

    from safetensors.torch import load_file

    from maskkv.models.transformer import LMHead, PackedLMHead

    write_tiny_checkpoint(tmp_path, "llada", num_layers=1, hidden_size=32, num_heads=2, seed=3)
    model = load_model(tmp_path)
    stored = load_file(tmp_path / "model.safetensors")["model.transformer.ff_out.weight"]
    assert isinstance(model.lm_head, PackedLMHead) and torch.equal(model.lm_head.weight, stored)
    state = model.state_dict()
    assert torch.equal(state["lm_head.weight"], stored)
    ids = torch.randint(0, 200, (1, 9))
    logits = model(ids).logits

    other = load_model(tmp_path)
    other.load_state_dict({**state, "lm_head.weight": 2 * stored})  # repacked from the dense weight
    torch.testing.assert_close(other(ids).logits, 2 * logits, rtol=1e-5, atol=1e-5)
    model.unpack_lm_head()
    assert isinstance(model.lm_head, LMHead) and torch.equal(model.lm_head.weight, stored)
    torch.testing.assert_close(model(ids).logits, logits, rtol=0, atol=1e-5)

    assert isinstance(load_model(tmp_path, dtype=torch.bfloat16).lm_head, LMHead)  # fp32 CPU only
    moved = load_model(tmp_path).to(torch.float64)  # leaving fp32 CPU unpacks the head first
    assert isinstance(moved.lm_head, LMHead) and moved.lm_head.weight.dtype == torch.float64
    torch.testing.assert_close(moved(ids).logits.float(), logits, rtol=1e-4, atol=1e-4)
    assert isinstance(load_model(tmp_path).to("cpu").lm_head, PackedLMHead)
    tied = load_model(Path(str(resources.files("maskkv") / "assets" / "tiny-llada")))  # weight_tying: true
    assert isinstance(tied.lm_head, LMHead) and tied.lm_head.weight is tied.embed_tokens.weight
