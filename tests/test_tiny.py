"""Tiny checkpoint writer: published layout, key names/shapes, sharding, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from maskkv.models.tiny import tiny_tokenizer_info, write_tiny_checkpoint

# Shapes for the defaults: 2 layers, hidden 64, 4 heads (head_dim 16), MLP 128, vocab rows 512.
V, H, MLP = 512, 64, 128


def _llada_expected(kv_heads: int = 4) -> dict[str, tuple[int, ...]]:
    """Hand-written from models.md 2.3."""
    nkv = kv_heads * 16
    out = {
        "model.transformer.wte.weight": (V, H),
        "model.transformer.ln_f.weight": (H,),
        "model.transformer.ff_out.weight": (V, H),
    }
    for i in range(2):
        p = f"model.transformer.blocks.{i}."
        out.update(
            {
                p + "attn_norm.weight": (H,),
                p + "q_proj.weight": (H, H),
                p + "k_proj.weight": (nkv, H),
                p + "v_proj.weight": (nkv, H),
                p + "attn_out.weight": (H, H),
                p + "ff_norm.weight": (H,),
                p + "ff_proj.weight": (MLP, H),
                p + "up_proj.weight": (MLP, H),
                p + "ff_out.weight": (H, MLP),
            }
        )
    return out


def _dream_expected(kv_heads: int = 2) -> dict[str, tuple[int, ...]]:
    """Hand-written from models.md 3.2."""
    nkv = kv_heads * 16
    out = {
        "model.embed_tokens.weight": (V, H),
        "model.norm.weight": (H,),
        "lm_head.weight": (V, H),
    }
    for i in range(2):
        p = f"model.layers.{i}."
        out.update(
            {
                p + "input_layernorm.weight": (H,),
                p + "self_attn.q_proj.weight": (H, H),
                p + "self_attn.q_proj.bias": (H,),
                p + "self_attn.k_proj.weight": (nkv, H),
                p + "self_attn.k_proj.bias": (nkv,),
                p + "self_attn.v_proj.weight": (nkv, H),
                p + "self_attn.v_proj.bias": (nkv,),
                p + "self_attn.o_proj.weight": (H, H),
                p + "post_attention_layernorm.weight": (H,),
                p + "mlp.gate_proj.weight": (MLP, H),
                p + "mlp.up_proj.weight": (MLP, H),
                p + "mlp.down_proj.weight": (H, MLP),
            }
        )
    return out


def _load_all(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    )
    out: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(str(folder / name), framework="pt", device="cpu") as handle:
            for key in handle.keys():
                out[key] = handle.get_tensor(key)
    return out


LLADA_PUBLISHED = {  # models.md 2.2, non-shape fields
    "activation_type": "silu",
    "alibi": False,
    "alibi_bias_max": 8.0,
    "architectures": ["LLaDAModelLM"],
    "attention_dropout": 0.0,
    "attention_layer_norm": False,
    "attention_layer_norm_with_affine": True,
    "auto_map": {
        "AutoConfig": "configuration_llada.LLaDAConfig",
        "AutoModel": "modeling_llada.LLaDAModelLM",
        "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
    },
    "bias_for_layer_norm": False,
    "block_group_size": 1,
    "block_type": "llama",
    "embedding_dropout": 0.0,
    "flash_attention": False,
    "include_bias": False,
    "include_qkv_bias": False,
    "init_cutoff_factor": None,
    "init_device": "meta",
    "init_fn": "mitchell",
    "init_std": 0.02,
    "input_emb_norm": False,
    "layer_norm_type": "rms",
    "layer_norm_with_affine": True,
    "mlp_ratio": 4,
    "model_type": "llada",
    "multi_query_attention": None,
    "precision": "amp_bf16",
    "residual_dropout": 0.0,
    "rms_norm_eps": 1e-05,
    "rope": True,
    "rope_full_precision": True,
    "rope_theta": 500000.0,
    "scale_logits": False,
    "use_cache": False,
    "weight_tying": False,
}
LLADA_SHAPE_AND_IDS = {
    "d_model",
    "n_heads",
    "n_kv_heads",
    "n_layers",
    "mlp_hidden_size",
    "vocab_size",
    "embedding_size",
    "max_sequence_length",
    "eos_token_id",
    "pad_token_id",
    "mask_token_id",
}
DREAM_PUBLISHED = {  # models.md 3.1, non-shape fields
    "architectures": ["DreamModel"],
    "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "model_type": "Dream",
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "transformers_version": "4.46.2",
    "use_cache": False,
    "use_sliding_window": False,
}
DREAM_SHAPE_AND_IDS = {
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "num_hidden_layers",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "max_window_layers",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "mask_token_id",
    "torch_dtype",
}


def test_llada_keys_shapes_and_config(tmp_path: Path) -> None:
    folder = write_tiny_checkpoint(tmp_path / "llada", "llada")
    tensors = _load_all(folder)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == _llada_expected()
    assert all(v.dtype == torch.float32 for v in tensors.values())
    cfg = json.loads((folder / "config.json").read_text())
    assert set(cfg) == set(LLADA_PUBLISHED) | LLADA_SHAPE_AND_IDS | {"transformers_version"}
    assert {k: cfg[k] for k in LLADA_PUBLISHED} == LLADA_PUBLISHED
    assert (cfg["d_model"], cfg["n_heads"], cfg["n_kv_heads"], cfg["n_layers"], cfg["mlp_hidden_size"]) == (
        H,
        4,
        4,
        2,
        MLP,
    )
    assert cfg["vocab_size"] == cfg["embedding_size"] == V
    info = tiny_tokenizer_info("llada")
    assert info.num_tokens < V and V % 64 == 0  # padding rows with no token, like 126464
    assert cfg["mask_token_id"] == info.special_ids["<|mdm_mask|>"]
    assert cfg["eos_token_id"] == cfg["pad_token_id"] == info.special_ids["<|endoftext|>"]
    assert cfg["max_sequence_length"] == 4096


def test_dream_keys_shapes_and_config(tmp_path: Path) -> None:
    folder = write_tiny_checkpoint(tmp_path / "dream", "dream", dtype=torch.bfloat16, max_position_embeddings=2048)
    tensors = _load_all(folder)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == _dream_expected()
    assert all(v.dtype == torch.bfloat16 for v in tensors.values())
    cfg = json.loads((folder / "config.json").read_text())
    assert set(cfg) == set(DREAM_PUBLISHED) | DREAM_SHAPE_AND_IDS
    assert {k: cfg[k] for k in DREAM_PUBLISHED} == DREAM_PUBLISHED
    assert cfg["num_key_value_heads"] == 2  # GQA by default
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"], cfg["intermediate_size"]) == (
        H,
        4,
        2,
        MLP,
    )
    assert cfg["vocab_size"] == V and cfg["max_position_embeddings"] == 2048 and cfg["torch_dtype"] == "bfloat16"
    ids = tiny_tokenizer_info("dream").special_ids
    assert cfg["mask_token_id"] == ids["<|mask|>"]
    assert cfg["eos_token_id"] == cfg["pad_token_id"] == cfg["bos_token_id"] == ids["<|endoftext|>"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "merges.txt",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.json",
    ]


def test_kv_heads_override_and_random_values(tmp_path: Path) -> None:
    folder = write_tiny_checkpoint(tmp_path / "d", "dream", num_kv_heads=1)
    tensors = _load_all(folder)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == _dream_expected(kv_heads=1)
    norm = tensors["model.layers.0.input_layernorm.weight"]
    assert not torch.allclose(norm, torch.ones_like(norm)) and abs(norm.mean().item() - 1.0) < 0.1
    bias = tensors["model.layers.1.self_attn.k_proj.bias"]
    assert bias.abs().max() > 0 and bias.abs().max() < 0.2
    w = tensors["model.layers.0.mlp.gate_proj.weight"]
    assert 0.01 < w.std().item() < 0.03
    folder = write_tiny_checkpoint(tmp_path / "l", "llada", num_kv_heads=2, num_layers=1)
    tensors = _load_all(folder)
    assert tensors["model.transformer.blocks.0.k_proj.weight"].shape == (32, H)
    assert not any(".blocks.1." in k for k in tensors)
    assert json.loads((folder / "config.json").read_text())["n_kv_heads"] == 2


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_sharded_index(tmp_path: Path, family: str) -> None:
    single = write_tiny_checkpoint(tmp_path / "one", family, seed=3)
    sharded = write_tiny_checkpoint(tmp_path / "three", family, seed=3, shards=3)
    names = [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]
    assert not (sharded / "model.safetensors").exists()
    assert all((sharded / n).is_file() for n in names)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert set(index) == {"metadata", "weight_map"}
    assert set(index["weight_map"].values()) == set(names)
    for name in names:
        with safe_open(str(sharded / name), framework="pt", device="cpu") as handle:
            keys = set(handle.keys())
            assert keys and keys == {k for k, v in index["weight_map"].items() if v == name}
            assert handle.metadata() == {"format": "pt"}
    a, b = _load_all(single), _load_all(sharded)
    assert set(a) == set(b) == set(index["weight_map"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in b.values())


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    for family in ("llada", "dream"):
        first = write_tiny_checkpoint(tmp_path / f"{family}-a", family, seed=7, shards=2)
        tiny_tokenizer_info.cache_clear()  # retrain the BPE: training must be deterministic too
        second = write_tiny_checkpoint(tmp_path / f"{family}-b", family, seed=7, shards=2)
        files = sorted(p.name for p in first.iterdir())
        assert files == sorted(p.name for p in second.iterdir())
        for name in files:
            assert (first / name).read_bytes() == (second / name).read_bytes(), name
    other = write_tiny_checkpoint(tmp_path / "other", "dream", seed=8, shards=2)
    assert (other / "model-00001-of-00002.safetensors").read_bytes() != (
        tmp_path / "dream-a" / "model-00001-of-00002.safetensors"
    ).read_bytes()


def test_no_tokenizer_files(tmp_path: Path) -> None:
    folder = write_tiny_checkpoint(tmp_path / "x", "llada", tokenizer=False)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"family": "gpt2"}, "family"),
        ({"family": "llada", "num_heads": 5}, "divisible"),
        ({"family": "dream", "num_kv_heads": 3}, "num_kv_heads"),
        ({"family": "llada", "shards": 1000}, "shards"),
        ({"family": "llada", "dtype": torch.int8}, "dtype"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_tiny_checkpoint(tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad").exists()


def test_refuses_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not an empty folder"):
        write_tiny_checkpoint(tmp_path, "llada")
