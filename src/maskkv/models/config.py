"""The family-neutral model configuration.

Every family adapter (``llada.py``, ``dream.py``) turns its published ``config.json`` into one
:class:`ModelConfig`; the transformer, samplers, caches and presses read only this object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Family = Literal["llada", "dream"]


@dataclass(frozen=True)
class ModelConfig:
    """Shapes, numerics and special ids of one diffusion LLM.

    Numerics switches (``models.md`` sections 2.4-3.6):
    - ``rope_in_fp32``: LLaDA rotates q/k in fp32 and casts back; Dream casts cos/sin to the
      activation dtype and rotates in that dtype (identical in fp32).
    - ``logits_shift``: Dream's row ``i`` predicts token ``i + 1``; LLaDA's row ``i`` predicts token ``i``.
    - ``pad_queries_masked``: Dream masks pad query rows (their attention output is exactly 0) and
      starts real tokens at position 0 (``tok_idx``); LLaDA masks pad keys only and counts pads as
      positions.
    """

    family: Family
    vocab_size: int  # rows of the embedding and the LM head
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rope_theta: float
    norm_eps: float
    qkv_bias: bool
    tie_word_embeddings: bool
    rope_in_fp32: bool
    logits_shift: bool
    pad_queries_masked: bool
    mask_token_id: int
    eos_token_id: int
    pad_token_id: int
    eot_token_id: int | None = None
    bos_token_id: int | None = None
    max_position_embeddings: int = 4096
    rope_scaling_factor: float = 1.0
    name: str = field(default="", compare=False)  # checkpoint folder or hub id, for provenance
    fingerprint: str = field(default="", compare=False)  # hash of a few weights, set by the loader

    @property
    def num_query_groups(self) -> int:
        """Query heads served by each KV head (1 for MHA)."""
        return self.num_heads // self.num_kv_heads

    @property
    def effective_rope_theta(self) -> float:
        """``rope_theta`` after LongLLaDA NTK scaling (``models.md`` section 6)."""
        return self.rope_theta * self.rope_scaling_factor

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.rope_scaling_factor <= 0:
            raise ValueError(f"rope_scaling_factor must be > 0, got {self.rope_scaling_factor}")
