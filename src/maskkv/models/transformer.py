"""The one bidirectional transformer serving LLaDA and Dream.

embed -> N x [RMSNorm -> q/k/v -> RoPE -> SDPA (non-causal, GQA) -> o_proj -> residual
              -> RMSNorm -> down(silu(gate) * up) -> residual] -> RMSNorm -> LM head.

Family differences live in :class:`~maskkv.models.config.ModelConfig` switches (biases, RoPE
precision, padding convention, logits shift); checkpoint names live in the family adapters.
Numerics follow ``models.md`` 2.4 (LLaDA) and 3.3 (Dream).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .rope import apply_rotary, inverse_frequencies, rotary_cos_sin

# Below this many rows, fp32 CPU logits against a row-major LM head are computed as ``W @ x^T``: MKL's
# kernel for the usual ``x @ W^T`` orientation is 2-4x slower for 1-11 rows against a 126k-row head
# (docs/performance.md). A column-major head (:meth:`LMHead.store_column_major`) needs no such trick.
SKINNY_LM_HEAD_ROWS = 11


def is_column_major(weight: torch.Tensor) -> bool:
    """True for a 2-D ``[V, d]`` tensor laid out as a contiguous ``[d, V]`` (its transpose is contiguous)."""
    return weight.dim() == 2 and weight.shape[0] > 1 and weight.shape[1] > 1 and weight.t().is_contiguous()


def lm_head_logits(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight^T`` for ``x [..., d]`` and ``weight [V, d]``, in the faster GEMM orientation.

    The decode steps of a cached sampler project only the block's masked rows (32 -> 1), so on CPU the
    LM head is a skinny GEMM. A column-major ``weight`` makes ``x @ weight^T`` a plain row-major GEMM,
    the fastest form for every row count here. For a row-major ``weight`` and 1-11 rows it is computed
    as ``weight @ x^T`` (with at least 2 columns: MKL's one-column path is a slow GEMV): the same dot
    products, within fp32 rounding (<1e-6 here), and 2-4x faster than ``F.linear``. Elsewhere (CUDA,
    bf16, many rows) it is ``F.linear``.
    """
    rows = x.shape[:-1].numel()
    if (
        x.device.type != "cpu"
        or x.dtype != torch.float32
        or not 0 < rows <= SKINNY_LM_HEAD_ROWS
        or not weight.is_contiguous()
    ):
        return F.linear(x, weight)
    flat = x.reshape(rows, x.shape[-1])
    if rows == 1:
        flat = torch.cat([flat, torch.zeros_like(flat)])
    logits = torch.mm(weight, flat.T).T[:rows].contiguous()
    return logits.view(*x.shape[:-1], weight.shape[0])


class LMHead(nn.Linear):
    """The output projection ``[..., d] -> [..., V]`` (no bias), computed by :func:`lm_head_logits`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lm_head_logits(x, self.weight)

    def store_column_major(self) -> None:
        """Keep the same ``[V, d]`` weight (shape and values) in column-major memory.

        On CPU in fp32 the skinny decode-step GEMM is then 15-20% faster on average over a 32-row
        block than the best row-major orientation (docs/performance.md). The weight becomes a
        transposed view, so ``weight.view(...)`` is not available; ``state_dict`` consumers that need
        contiguous tensors (safetensors) call ``.contiguous()``. A tied head is left alone: the input
        embedding's row lookups want rows contiguous.
        """
        weight = self.weight
        if is_column_major(weight):
            return
        self.weight = nn.Parameter(weight.detach().t().contiguous().t(), requires_grad=weight.requires_grad)


class RMSNorm(nn.Module):
    """RMSNorm with the reference casts: statistics in fp32, cast back, then ``weight * y``."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)


class DecoderBlock(nn.Module):
    """One pre-norm block. The pieces are separate methods so caches can run them on row subsets."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, hd = config.hidden_size, config.head_dim
        self.config = config
        self.attn_norm = RMSNorm(d, config.norm_eps)
        self.q_proj = nn.Linear(d, config.num_heads * hd, bias=config.qkv_bias)
        self.k_proj = nn.Linear(d, config.num_kv_heads * hd, bias=config.qkv_bias)
        self.v_proj = nn.Linear(d, config.num_kv_heads * hd, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.num_heads * hd, d, bias=False)
        self.mlp_norm = RMSNorm(d, config.norm_eps)
        self.gate_proj = nn.Linear(d, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(d, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, d, bias=False)

    def qkv(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normed projections of the residual stream ``x [B, T, d]``, rotated at their positions.

        Returns ``q [B, H, T, hd]`` and ``k, v [B, Hkv, T, hd]`` (q and k after RoPE).
        """
        return self.project_qkv(self.attn_norm(x), cos, sin)

    def project_qkv(
        self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like :meth:`qkv` for rows that are already normed (``h = attn_norm(x)``)."""
        cfg = self.config
        b, t, _ = h.shape
        q = self.q_proj(h).view(b, t, cfg.num_heads, cfg.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, t, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, t, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        q = apply_rotary(q, cos, sin, in_fp32=cfg.rope_in_fp32)
        k = apply_rotary(k, cos, sin, in_fp32=cfg.rope_in_fp32)
        return q, k, v

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """Non-causal attention, scale ``1/sqrt(hd)``, then ``o_proj``. Returns ``[B, Tq, d]``.

        ``key_bias``: additive float or boolean (True = attend) mask broadcastable to
        ``[B, H, Tq, Tk]``, or None. GQA: KV head j serves query heads ``j*r .. j*r + r - 1``.
        """
        b, _, tq, _ = q.shape
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_bias, enable_gqa=k.shape[1] != q.shape[1]
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, tq, -1))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        """SiLU-gated MLP on the normed residual stream: ``down(silu(gate(h)) * up(h))``."""
        h = self.mlp_norm(x)
        return self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


@dataclass
class ModelOutput:
    logits: torch.Tensor  # [B, T, V] (or [B, C, V] from logits_at)


class DiffusionTransformer(nn.Module):
    """A masked-diffusion LM (LLaDA or Dream) built from a :class:`ModelConfig`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderBlock(config) for _ in range(config.num_layers))
        self.final_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.lm_head = LMHead(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        # Not a buffer: never saved, and rebuilt when the model moves (see ``_apply``).
        self.inv_freq = inverse_frequencies(config.head_dim, config.effective_rope_theta)

    def _apply(self, fn, recurse: bool = True):  # keep inv_freq on the model's device, fp32
        super()._apply(fn, recurse)
        device = self.embed_tokens.weight.device
        if device.type != "meta":
            self.inv_freq = inverse_frequencies(
                self.config.head_dim, self.config.effective_rope_theta, device=device
            )
        return self

    # ----- masks and positions (models.md 2.4 step 2, 3.5) -----------------------------------

    def default_position_ids(self, attention_mask: torch.Tensor | None, length: int) -> torch.Tensor:
        """Positions the reference uses: LLaDA ``arange`` (pads count); Dream ``tok_idx``."""
        device = self.embed_tokens.weight.device
        if attention_mask is None or not self.config.pad_queries_masked or bool(attention_mask.all()):
            return torch.arange(length, device=device).unsqueeze(0)
        valid = attention_mask.to(torch.bool)
        return (valid.long().cumsum(-1) - 1).masked_fill(~valid, 1)

    def key_padding_bias(self, attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        """Padding mask over keys as the reference forms it, broadcastable to ``[B, 1, 1, Tk]``.

        An all-ones mask is no mask, like the references.
        """
        if attention_mask is None or bool(attention_mask.all()):
            return None
        return self.key_mask(attention_mask.to(torch.bool)[:, None, :], dtype)

    def key_mask(self, valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Attention mask over keys from ``valid [B, h, Tk]`` (True = attend), as ``[B, h, 1, Tk]``.

        LLaDA: additive bias, 0 for valid keys and the dtype's finite minimum otherwise (the newer
        reference file). Dream: boolean. ``h`` is 1 or the number of query heads.
        """
        valid = valid[:, :, None, :]
        if self.config.pad_queries_masked:
            return valid
        return torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill(
            ~valid, torch.finfo(dtype).min
        )

    def rotary(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 ``cos, sin`` of shape ``[B or 1, T, head_dim]`` for ``position_ids``."""
        return rotary_cos_sin(position_ids, self.inv_freq.to(position_ids.device))

    # ----- forward ---------------------------------------------------------------------------

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Residual stream after the last block (before the final norm), ``[B, T, d]``."""
        _, t = input_ids.shape
        if position_ids is None:
            position_ids = self.default_position_ids(attention_mask, t)
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary(position_ids)
        bias = self.key_padding_bias(attention_mask, x.dtype)
        pad_rows = None
        if bias is not None and self.config.pad_queries_masked:
            pad_rows = ~attention_mask.to(torch.bool)[:, :, None]  # Dream: pad queries output 0
        for layer in self.layers:
            q, k, v = layer.qkv(x, cos, sin)
            attn = layer.attend(q, k, v, bias)
            if pad_rows is not None:
                attn = attn.masked_fill(pad_rows, 0.0)
            x = x + attn
            x = x + layer.mlp(x)
        return x

    def use_fast_lm_head_layout(self) -> None:
        """Store an untied fp32 CPU LM head column-major (:meth:`LMHead.store_column_major`); else no-op.

        :func:`~maskkv.load_model` and the benchmark's random models call this; the logits are the
        same within fp32 rounding.
        """
        weight = self.lm_head.weight
        tied = weight is self.embed_tokens.weight
        if not tied and weight.device.type == "cpu" and weight.dtype == torch.float32:
            self.lm_head.store_column_major()

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head on the given rows ``[..., d]`` -> ``[..., V]``."""
        return self.lm_head(self.final_norm(hidden))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Raw logits ``[B, T, V]`` exactly as the reference model returns them (no shift)."""
        return ModelOutput(logits=self.project(self.hidden_states(input_ids, attention_mask, position_ids)))

    def logits_at(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        """Token distributions for canvas ``positions [C]`` -> ``[B, C, V]``.

        Only the needed rows reach the LM head. Dream's shift is applied here: the token at position
        ``j`` is predicted by row ``j - 1`` (row 0 for ``j = 0``, like the reference's duplicated
        first column).
        """
        hidden = self.hidden_states(input_ids, attention_mask)
        rows = (positions - 1).clamp(min=0) if self.config.logits_shift else positions
        return self.project(hidden[:, rows])
