"""LLaDA adapter: ``config.json`` (model_type "llada") -> ModelConfig, and checkpoint key names.

Checkpoints: LLaDA-8B-Base/Instruct, LLaDA-1.5 (``models.md`` 2.2-2.3). The reference config class
silently fills missing fields with GPT-2-like defaults; we require every field that matters instead.
"""

from __future__ import annotations

from typing import Any

from .config import ModelConfig

MODEL_TYPE = "llada"
MASK_TOKEN = "<|mdm_mask|>"
EOT_TOKEN = "<|eot_id|>"

_REQUIRED = (
    "d_model", "n_heads", "n_layers", "rope_theta", "rms_norm_eps", "mask_token_id", "eos_token_id",
    "activation_type", "block_type", "weight_tying",
)  # fmt: skip


def _expect(raw: dict[str, Any], key: str, allowed: tuple[Any, ...], source: str) -> None:
    value = raw.get(key, allowed[0])
    if value not in allowed:
        raise ValueError(
            f"{source}: LLaDA field {key}={value!r} is not supported (expected one of {allowed}); "
            "maskkv implements the published LLaDA-8B architecture only."
        )


def config_from_dict(raw: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Parse a published LLaDA ``config.json`` (``models.md`` 2.2 field table)."""
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ValueError(f"{source}: LLaDA config is missing required field(s) {missing}")
    if raw.get("vocab_size") is None and raw.get("embedding_size") is None:
        raise ValueError(f"{source}: LLaDA config needs embedding_size or vocab_size")
    _expect(raw, "activation_type", ("silu",), source)
    _expect(raw, "block_type", ("llama",), source)
    _expect(raw, "block_group_size", (1,), source)
    _expect(raw, "layer_norm_type", ("rms",), source)
    _expect(raw, "alibi", (False,), source)
    _expect(raw, "rope", (True,), source)
    _expect(raw, "include_bias", (False,), source)
    _expect(raw, "include_qkv_bias", (False, True), source)  # the reference gives q/k/v a bias when true
    _expect(raw, "attention_layer_norm", (False,), source)
    _expect(raw, "input_emb_norm", (False,), source)
    _expect(raw, "scale_logits", (False,), source)
    _expect(raw, "bias_for_layer_norm", (False, None), source)

    n_heads = int(raw["n_heads"])
    d_model = int(raw["d_model"])
    if d_model % n_heads:
        raise ValueError(f"{source}: d_model={d_model} is not divisible by n_heads={n_heads}")
    n_kv = raw.get("n_kv_heads")
    mqa = raw.get("multi_query_attention")
    if n_kv is None:
        n_kv = 1 if mqa else n_heads
    elif mqa and int(n_kv) != 1:
        raise ValueError(f"{source}: multi_query_attention=true contradicts n_kv_heads={n_kv}")
    mlp = raw.get("mlp_hidden_size") or int(raw.get("mlp_ratio", 4)) * d_model
    vocab = int(raw.get("embedding_size") or raw["vocab_size"])
    return ModelConfig(
        family="llada",
        vocab_size=vocab,
        hidden_size=d_model,
        num_layers=int(raw["n_layers"]),
        num_heads=n_heads,
        num_kv_heads=int(n_kv),
        head_dim=d_model // n_heads,
        intermediate_size=int(mlp),
        rope_theta=float(raw["rope_theta"]),
        norm_eps=float(raw["rms_norm_eps"]),
        qkv_bias=bool(raw.get("include_qkv_bias", False)),
        tie_word_embeddings=bool(raw["weight_tying"]),
        rope_in_fp32=bool(raw.get("rope_full_precision", True)),
        logits_shift=False,
        pad_queries_masked=False,
        mask_token_id=int(raw["mask_token_id"]),
        eos_token_id=int(raw["eos_token_id"]),
        pad_token_id=int(raw.get("pad_token_id", raw["eos_token_id"])),
        eot_token_id=raw.get("eot_token_id"),
        bos_token_id=raw.get("bos_token_id"),
        max_position_embeddings=int(raw.get("max_sequence_length", 4096)),
    )


def checkpoint_keys(config: ModelConfig) -> dict[str, str]:
    """Published state-dict name -> maskkv parameter name (``models.md`` 2.3)."""
    keys = {
        "model.transformer.wte.weight": "embed_tokens.weight",
        "model.transformer.ln_f.weight": "final_norm.weight",
    }
    if not config.tie_word_embeddings:
        keys["model.transformer.ff_out.weight"] = "lm_head.weight"  # the LM head, not blocks.{i}.ff_out
    per_block = {
        "attn_norm": "attn_norm", "q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj",
        "attn_out": "o_proj", "ff_norm": "mlp_norm", "ff_proj": "gate_proj", "up_proj": "up_proj",
        "ff_out": "down_proj",
    }  # fmt: skip
    for i in range(config.num_layers):
        for theirs, ours in per_block.items():
            keys[f"model.transformer.blocks.{i}.{theirs}.weight"] = f"layers.{i}.{ours}.weight"
        if config.qkv_bias:  # include_qkv_bias: the reference's q/k/v Linear layers get a bias
            for proj in ("q_proj", "k_proj", "v_proj"):
                keys[f"model.transformer.blocks.{i}.{proj}.bias"] = f"layers.{i}.{proj}.bias"
    return keys
