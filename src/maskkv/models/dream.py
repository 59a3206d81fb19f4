"""Dream adapter: ``config.json`` (model_type "Dream") -> ModelConfig, and checkpoint key names.

Checkpoints: Dream-v0-Base/Instruct-7B (Qwen2.5 topology, ``models.md`` 3.1-3.2).
"""

from __future__ import annotations

from typing import Any

from .config import ModelConfig

MODEL_TYPE = "Dream"
MASK_TOKEN = "<|mask|>"
EOT_TOKEN = "<|im_end|>"

_REQUIRED = (
    "hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size",
    "rope_theta",
)  # fmt: skip


def config_from_dict(raw: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Parse a published Dream ``config.json``. Missing ``rope_theta`` is an error (class default 1e4 is wrong)."""
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ValueError(f"{source}: Dream config is missing required field(s) {missing}")
    if raw.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{source}: Dream hidden_act={raw['hidden_act']!r} is not supported (expected 'silu')")
    if raw.get("rope_scaling") not in (None, {}):
        raise ValueError(
            f"{source}: rope_scaling={raw['rope_scaling']!r} is not supported; use "
            "load_model(..., rope_scaling_factor=F) for NTK scaling instead"
        )
    hidden, heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
    if hidden % heads:
        raise ValueError(f"{source}: hidden_size={hidden} is not divisible by num_attention_heads={heads}")
    eos = int(raw.get("eos_token_id", 151643))
    return ModelConfig(
        family="dream",
        vocab_size=int(raw["vocab_size"]),
        hidden_size=hidden,
        num_layers=int(raw["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(raw.get("num_key_value_heads", heads)),
        head_dim=hidden // heads,
        intermediate_size=int(raw["intermediate_size"]),
        rope_theta=float(raw["rope_theta"]),
        norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        qkv_bias=True,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        rope_in_fp32=False,
        logits_shift=True,
        pad_queries_masked=True,
        mask_token_id=int(raw.get("mask_token_id", 151666)),
        eos_token_id=eos,
        pad_token_id=int(raw.get("pad_token_id", 151643)),
        eot_token_id=raw.get("eot_token_id"),
        bos_token_id=raw.get("bos_token_id"),
        max_position_embeddings=int(raw.get("max_position_embeddings", 131072)),
    )


def checkpoint_keys(config: ModelConfig) -> dict[str, str]:
    """Published state-dict name -> maskkv parameter name (``models.md`` 3.2)."""
    keys = {"model.embed_tokens.weight": "embed_tokens.weight", "model.norm.weight": "final_norm.weight"}
    if not config.tie_word_embeddings:
        keys["lm_head.weight"] = "lm_head.weight"
    per_layer = {
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "mlp_norm.weight",
        "mlp.gate_proj.weight": "gate_proj.weight",
        "mlp.up_proj.weight": "up_proj.weight",
        "mlp.down_proj.weight": "down_proj.weight",
        "self_attn.o_proj.weight": "o_proj.weight",
    }
    for proj in ("q_proj", "k_proj", "v_proj"):
        for kind in ("weight", "bias"):
            per_layer[f"self_attn.{proj}.{kind}"] = f"{proj}.{kind}"
    for i in range(config.num_layers):
        for theirs, ours in per_layer.items():
            keys[f"model.layers.{i}.{theirs}"] = f"layers.{i}.{ours}"
    return keys
