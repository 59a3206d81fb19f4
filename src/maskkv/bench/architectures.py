"""Named random-weight architectures for benchmarking, and the seeded model they build.

Speed and memory do not depend on trained weights, so the benchmark builds a model straight from a
:class:`~maskkv.models.config.ModelConfig` with a seeded ``normal(0, 0.02)`` init (norm weights 1)
directly on the target device and dtype: no checkpoint, no download, no full-precision copy.

- ``llada-8b``: the real LLaDA-8B-Instruct shapes (``models.md`` 2.2): 32 layers, d 4096, 32 heads
  (MHA, head_dim 128), MLP 12288, vocabulary 126,464. For GPUs (16 GB of weights in bf16).
- ``llada-mini`` (the CPU default): LLaDA's real vocabulary, special ids and numerics with a small
  trunk (4 layers, d 256, 4 heads of 64, MLP 1024). The embedding and LM head (2 x 32.4 M
  parameters) dominate its 69 M parameters, as the logits dominate the real model's memory at
  long context.
- ``llada-tiny``: the same vocabulary with a 2-layer, d 64 trunk, for ``--quick`` and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.config import ModelConfig
from ..models.transformer import DiffusionTransformer, PackedLMHead, can_pack_lm_head

# LLaDA-8B-Instruct constants shared by every LLaDA-shaped architecture (models.md 2.2, 4.1).
_LLADA_VOCAB = 126_464
_LLADA_IDS = {"mask_token_id": 126_336, "eos_token_id": 126_081, "pad_token_id": 126_081,
              "eot_token_id": 126_348, "bos_token_id": 126_080}  # fmt: skip


@dataclass(frozen=True)
class Architecture:
    """A named LLaDA-family shape: trunk sizes on top of LLaDA's vocabulary and numerics."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    description: str

    def config(self) -> ModelConfig:
        """The :class:`ModelConfig` of this architecture (LLaDA family, MHA)."""
        return ModelConfig(
            family="llada", vocab_size=_LLADA_VOCAB, hidden_size=self.hidden_size, num_layers=self.num_layers,
            num_heads=self.num_heads, num_kv_heads=self.num_heads, head_dim=self.hidden_size // self.num_heads,
            intermediate_size=self.intermediate_size, rope_theta=500_000.0, norm_eps=1e-5, qkv_bias=False,
            tie_word_embeddings=False, rope_in_fp32=True, logits_shift=False, pad_queries_masked=False,
            max_position_embeddings=4096, name=f"random:{self.name}", **_LLADA_IDS,
        )  # fmt: skip


ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        Architecture("llada-8b", 32, 4096, 32, 12288, "LLaDA-8B shapes (8.0 B parameters), for GPUs"),
        Architecture("llada-mini", 4, 256, 4, 1024, "LLaDA vocabulary, 4 x d256 trunk (69 M parameters), CPU default"),
        Architecture("llada-tiny", 2, 64, 2, 256, "LLaDA vocabulary, 2 x d64 trunk (16 M parameters), --quick"),
    )
}


def architecture_config(name: str) -> ModelConfig:
    """The config of architecture ``name``; unknown names list the valid ones."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name].config()


def parameter_count(config: ModelConfig) -> int:
    """Parameters of a :class:`DiffusionTransformer` with ``config`` (no allocation)."""
    d, hd, layers = config.hidden_size, config.head_dim, config.num_layers
    attn = d * config.num_heads * hd * 2 + d * config.num_kv_heads * hd * 2
    if config.qkv_bias:
        attn += (config.num_heads + 2 * config.num_kv_heads) * hd
    block = attn + 3 * d * config.intermediate_size + 2 * d
    embed = config.vocab_size * d
    return layers * block + embed * (1 if config.tie_word_embeddings else 2) + d


def build_random_model(
    config: ModelConfig, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> DiffusionTransformer:
    """A :class:`DiffusionTransformer` with seeded random weights, allocated once on ``device`` in ``dtype``.

    Matrices (and embeddings) are drawn from ``normal(0, 0.02)``, norm weights are 1, from a generator
    seeded with ``seed`` on ``device``: an untied fp32 CPU LM head first (it becomes a
    :class:`~maskkv.models.transformer.PackedLMHead` before the other weights exist, so its dense and
    packed copies never add to the model's peak memory), then the rest in ``named_parameters`` order.
    """
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        head = None
        if not config.tie_word_embeddings and can_pack_lm_head(torch.empty(0, dtype=dtype, device=device)):
            dense = torch.empty(config.vocab_size, config.hidden_size, dtype=dtype, device=device)
            head = PackedLMHead(dense.normal_(0.0, 0.02, generator=generator))
            del dense
        if device.type == "cpu" and dtype == torch.float32:
            model = DiffusionTransformer(config, lm_head=head)  # no meta device here: it costs ~70 MiB of imports
        else:
            with torch.device("meta"):
                model = DiffusionTransformer(config)
            model = model.to(dtype=dtype).to_empty(device=device)  # allocated once, in its final dtype
        for _, param in model.named_parameters():
            if param.dim() == 1:
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
    return model.eval()
