"""The one bidirectional transformer serving LLaDA and Dream.

embed -> N x [RMSNorm -> q/k/v -> RoPE -> SDPA (non-causal, GQA) -> o_proj -> residual
              -> RMSNorm -> down(silu(gate) * up) -> residual] -> RMSNorm -> LM head.

Family differences live in :class:`~maskkv.models.config.ModelConfig` switches (biases, RoPE
precision, padding convention, logits shift); checkpoint names live in the family adapters.
Numerics follow ``models.md`` 2.4 (LLaDA) and 3.3 (Dream).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .rope import RopeTable, RotaryPositions, inverse_frequencies, rotary_cos_sin

# Below this many rows, fp32 CPU logits against a dense LM head are computed as ``W @ x^T``: MKL's
# kernel for the usual ``x @ W^T`` orientation is 2-4x slower for 1-11 rows against a 126k-row head
# (docs/performance.md). A packed head (:class:`PackedLMHead`) is faster still.
SKINNY_LM_HEAD_ROWS = 11
# Row-wise work of long passes (the cache's first pass and prompt refreshes) runs in chunks whose widest
# transient (the MLP's gate/up output) stays near this many bytes: small on a CPU, where memory is what a
# long prompt runs out of; larger on a GPU, where each chunk costs kernel launches (LLaDA-8B: 2,730 rows).
ROW_CHUNK_BYTES = 8 * 2**20
GPU_ROW_CHUNK_BYTES = 128 * 2**20
MIN_ROW_CHUNK = 256
QKV = ("q_proj", "k_proj", "v_proj")  # fused into one GEMM for inference (DecoderBlock.fused_weights)
GATE_UP = ("gate_proj", "up_proj")


def lm_head_logits(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight^T`` for ``x [..., d]`` and ``weight [V, d]``, in the faster GEMM orientation.

    The decode steps of a cached sampler project only the block's masked rows (32 -> 1), so on CPU the
    LM head is a skinny GEMM; for 1-11 rows it is computed as ``weight @ x^T`` (with at least 2 columns:
    MKL's one-column path is a slow GEMV): the same dot products, within fp32 rounding (<1e-6 here), and
    2-4x faster than ``F.linear``. Elsewhere (CUDA, bf16, many rows) it is ``F.linear``.
    """
    rows = x.shape[:-1].numel()
    if x.device.type != "cpu" or x.dtype != torch.float32 or not 0 < rows <= SKINNY_LM_HEAD_ROWS:
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


def can_pack_lm_head(weight: torch.Tensor) -> bool:
    """Whether ``weight`` can become a :class:`PackedLMHead`: fp32 on CPU with oneDNN available."""
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()


class PackedLMHead(nn.Module):
    """An untied LM head kept only in oneDNN's pre-packed (blocked) weight layout, for fp32 CPU inference.

    oneDNN's inner product on a pre-packed weight computes the skinny decode-step GEMM (``[rows <= 32, d]
    x [d, V]``) about twice as fast as MKL's sgemm on a dense weight in either orientation
    (docs/performance.md); the logits equal ``F.linear``'s within fp32 rounding (relative 1e-6). The
    dense weight is not kept, so the model's memory does not grow: :attr:`weight` rebuilds it (a copy),
    and ``state_dict`` / ``load_state_dict`` use the dense ``weight`` under the usual key, so state
    dicts and checkpoints are unchanged. No autograd. CPU and fp32 only: moving a
    :class:`DiffusionTransformer` to another device or dtype unpacks its head first (or call
    :meth:`DiffusionTransformer.unpack_lm_head`).
    """

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        if not can_pack_lm_head(weight) or weight.dim() != 2:
            raise ValueError(
                f"PackedLMHead needs a 2-D fp32 CPU weight and a torch build with oneDNN; got {tuple(weight.shape)} "
                f"{weight.dtype} on {weight.device}"
            )
        self.out_features, self.in_features = weight.shape
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
        self.register_state_dict_post_hook(_dense_head_weight)
        self.register_load_state_dict_pre_hook(_repack_head_weight)

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``[V, d]`` weight, rebuilt from the packed one (a copy: not for hot paths)."""
        return self.packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32:
            raise ValueError(
                f"the packed LM head computes fp32 CPU logits, got {x.dtype} on {x.device}; "
                "call model.unpack_lm_head() before moving the model to another device or dtype"
            )
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN packed"

    def __deepcopy__(self, memo: dict) -> PackedLMHead:  # oneDNN's opaque tensors cannot be deep-copied
        return PackedLMHead(self.weight)


def _dense_head_weight(module: PackedLMHead, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    state_dict[prefix + "weight"] = module.weight


def _repack_head_weight(module: PackedLMHead, state_dict: dict, prefix: str, *args: object) -> None:
    weight = state_dict.pop(prefix + "weight", None)
    if weight is not None:
        module.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().float().cpu(), None)


class RMSNorm(nn.Module):
    """RMSNorm with the reference casts: statistics in fp32, cast back, then ``weight * y``."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):  # training: the formula
            x32 = x.float()
            y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
            return self.weight * y.to(x.dtype)
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            # One fused op; on fp32 it computes exactly ``weight * (x * rsqrt(mean(x^2) + eps))``
            # (bit-identical on CPU: tests/test_decode_step.py::test_fused_rmsnorm_is_the_reference_in_fp32).
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        y = F.rms_norm(x.float(), self.weight.shape, None, self.eps)  # fp32 statistics, then the reference's casts
        return self.weight * y.to(x.dtype)


class DecoderBlock(nn.Module):
    """One pre-norm block. The pieces are separate methods so caches can run them on row subsets.

    The q/k/v projections (and gate/up) stay separate ``nn.Linear`` modules, so parameter names, state
    dicts, checkpoints and training are unchanged; for inference their weights are views of one fused
    matrix (:meth:`fused_weights`), so each is a single GEMM (bit-identical on CPU, docs/performance.md).
    """

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
        self._fusions: dict[tuple[str, ...], tuple[tuple[int, ...], torch.Tensor, torch.Tensor | None]] = {}

    def _apply(self, fn, recurse: bool = True):  # moving / casting gives every parameter its own memory again
        self._fusions.clear()
        return super()._apply(fn, recurse)

    def fused_weights(self, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One ``[sum of rows, d]`` weight (and bias) stacking the Linear layers ``names``, in order.

        The first call (and any after a layer's parameter was replaced or moved) concatenates them once
        and makes each layer's ``weight.data`` a row view of the result, so the fused matrix and the
        layers' parameters are the same memory: no copy is kept, in-place updates of either are seen
        by both, and the Parameter objects (optimisers, state dicts) stay the same.
        """
        cached = self._fusions.get(names)
        if cached is not None and torch.compiler.is_compiling():  # traced after an eager call fused them
            return cached[1], cached[2]
        linears = [getattr(self, name) for name in names]
        tensors = [t for linear in linears for t in (linear.weight, linear.bias) if t is not None]
        if cached is not None and cached[0] == tuple(t.data_ptr() for t in tensors):
            return cached[1], cached[2]
        with torch.inference_mode(False), torch.no_grad():  # ordinary tensors: training may use them
            weight = torch.cat([linear.weight for linear in linears])
            has_bias = all(linear.bias is not None for linear in linears)
            bias = torch.cat([linear.bias for linear in linears]) if has_bias else None
            start = 0
            for linear in linears:
                stop = start + linear.weight.shape[0]
                linear.weight.data = weight[start:stop]
                if bias is not None:
                    linear.bias.data = bias[start:stop]
                start = stop
        tensors = [t for linear in linears for t in (linear.weight, linear.bias) if t is not None]
        self._fusions[names] = (tuple(t.data_ptr() for t in tensors), weight, bias)
        return weight, bias

    def _fused_linear(self, h: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        """``cat([linear(h) for each name], -1)``: one GEMM for inference, separate ones when training."""
        linears = [getattr(self, name) for name in names]
        if torch.is_grad_enabled() and any(linear.weight.requires_grad for linear in linears):
            return torch.cat([linear(h) for linear in linears], dim=-1)
        weight, bias = self.fused_weights(names)
        return F.linear(h, weight, bias)

    def qkv(self, x: torch.Tensor, rope: RopeTable) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normed projections of the residual stream ``x [B, T, d]``, rotated at their positions.

        Returns ``q [B, H, T, hd]`` and ``k, v [B, Hkv, T, hd]`` (q and k after RoPE; views of one
        projection output).
        """
        return self.split_heads(self.project_rows(self.attn_norm(x), rope))

    def project_rows(self, h: torch.Tensor, rope: RopeTable) -> torch.Tensor:
        """One q/k/v GEMM of normed rows ``h [B, T, d]`` -> ``[B, T, H + 2 Hkv, hd]``, q and k heads rotated."""
        cfg = self.config
        b, t, _ = h.shape
        rows = self._fused_linear(h, QKV).view(b, t, cfg.num_heads + 2 * cfg.num_kv_heads, cfg.head_dim)
        rope.rotate_(rows.narrow(2, 0, cfg.num_heads + cfg.num_kv_heads))
        return rows

    def split_heads(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``q [B, H, T, hd]``, ``k, v [B, Hkv, T, hd]`` as views of :meth:`project_rows`' output."""
        heads = rows.transpose(1, 2)
        h, h_kv = self.config.num_heads, self.config.num_kv_heads
        return heads.narrow(1, 0, h), heads.narrow(1, h, h_kv), heads.narrow(1, h + h_kv, h_kv)

    def qkv_in_chunks(
        self, x: torch.Tensor, rope: RopeTable, chunk: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`qkv` computed ``chunk`` rows at a time into contiguous ``q``, ``k``, ``v`` (the same values).

        ``rope``: the table of ``x``'s rows, built once per pass and shared by the layers (each chunk takes
        a view). The per-chunk projections are the only transient memory; ``k``/``v`` come out in the
        cache's ``[B, Hkv, T, hd]`` layout and ``q`` can be released on its own.
        """
        cfg = self.config
        b, t, _ = x.shape
        q = x.new_empty(b, cfg.num_heads, t, cfg.head_dim)
        k = x.new_empty(b, cfg.num_kv_heads, t, cfg.head_dim)
        v = torch.empty_like(k)
        for start, stop in row_chunks(t, chunk):
            q_c, k_c, v_c = self.qkv(x[:, start:stop], rope.rows(start, stop))
            q[:, :, start:stop] = q_c
            k[:, :, start:stop] = k_c
            v[:, :, start:stop] = v_c
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
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_bias, enable_gqa=k.shape[1] != q.shape[1]
        )
        return self.project_heads(out)

    def project_heads(self, out: torch.Tensor) -> torch.Tensor:
        """``o_proj`` of per-head attention outputs ``[B, H, Tq, hd]`` -> ``[B, Tq, d]``."""
        b, _, tq, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, tq, -1))

    def mlp_in_chunks(
        self, x: torch.Tensor, chunk: int, keep_from: int | None = None, *, in_place: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x + mlp(x)`` ``chunk`` rows at a time, and the MLP's rows ``keep_from:`` (:func:`residual_in_chunks`)."""
        rows = lambda start, stop: self.mlp(x[:, start:stop])  # noqa: E731
        return residual_in_chunks(x, rows, chunk, keep_from, in_place=in_place)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        """SiLU-gated MLP on the normed residual stream: ``down(silu(gate(h)) * up(h))``."""
        gate, up = self._fused_linear(self.mlp_norm(x), GATE_UP).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


def row_chunks(rows: int, chunk: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of at most ``chunk`` rows covering ``rows``, none of a single row.

    A one-row GEMM takes another kernel path (GEMV) whose sums can differ in the last bit, so a one-row
    tail joins the chunk before it; every other chunking gives bit-identical rows (docs/performance.md).
    """
    chunk = max(chunk, 2)
    bounds = list(range(0, rows, chunk)) + [rows]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]
    return list(zip(bounds[:-1], bounds[1:]))


def residual_in_chunks(
    x: torch.Tensor, branch: Callable[[int, int], torch.Tensor], chunk: int, keep_from: int | None = None,
    *, in_place: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``x + branch(rows)`` for row chunks of ``x [B, T, d]`` (``branch(start, stop) -> [B, stop - start, d]``).

    Returns the new stream and, with ``keep_from``, a copy of the branch's output rows ``keep_from:``
    (e.g. the response rows' attention or MLP output that a cache stores). Only one chunk's branch
    activations exist at a time. ``in_place``: add into ``x`` itself (the branch of a chunk must read
    only its own rows of ``x``, which it does before they are written).
    """
    b, t, d = x.shape
    out = x if in_place else torch.empty_like(x)
    kept = None if keep_from is None else x.new_empty(b, t - keep_from, d)
    for start, stop in row_chunks(t, chunk):
        y = branch(start, stop)
        torch.add(x[:, start:stop], y, out=out[:, start:stop])
        if kept is not None and stop > keep_from:
            low = max(start, keep_from)
            kept[:, low - keep_from : stop - keep_from] = y[:, low - start :]
    return out, kept


@dataclass
class ModelOutput:
    logits: torch.Tensor  # [B, T, V] (or [B, C, V] from logits_at)


class DiffusionTransformer(nn.Module):
    """A masked-diffusion LM (LLaDA or Dream) built from a :class:`ModelConfig`."""

    def __init__(self, config: ModelConfig, *, lm_head: PackedLMHead | None = None) -> None:
        """``lm_head``: an already built (packed) untied head to use instead of allocating a dense one."""
        super().__init__()
        if lm_head is not None and (config.tie_word_embeddings or lm_head.out_features != config.vocab_size):
            raise ValueError(
                f"lm_head {lm_head.extra_repr()!r} does not fit the config (vocab_size {config.vocab_size}, "
                f"tie_word_embeddings {config.tie_word_embeddings}); a given head must be untied and [vocab, d]"
            )
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderBlock(config) for _ in range(config.num_layers))
        self.final_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.lm_head = lm_head if lm_head is not None else LMHead(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        # Not a buffer: never saved, and rebuilt when the model moves (see ``_apply``).
        self.inv_freq = inverse_frequencies(config.head_dim, config.effective_rope_theta)

    def _apply(self, fn, recurse: bool = True):  # keep inv_freq on the model's device, fp32
        if isinstance(self.lm_head, PackedLMHead):  # .to(cuda / bf16 / ...): the packed layout is fp32 CPU only
            probe = fn(torch.empty(0))
            if probe.device.type != "cpu" or probe.dtype != torch.float32:
                self.unpack_lm_head()
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

    def rope_positions(self, position_ids: torch.Tensor) -> RotaryPositions:
        """``position_ids`` as :class:`RotaryPositions` (a pass builds the table of its rows once)."""
        inv_freq = self.inv_freq.to(position_ids.device)
        dtype = self.embed_tokens.weight.dtype
        return RotaryPositions(position_ids, inv_freq, self.config.rope_in_fp32, dtype)

    def rope_table(self, position_ids: torch.Tensor) -> RopeTable:
        """The :class:`RopeTable` of ``position_ids`` that :meth:`DecoderBlock.qkv` takes."""
        cos, sin = self.rotary(position_ids)
        dtype = self.embed_tokens.weight.dtype
        return RopeTable.build(cos, sin, in_fp32=self.config.rope_in_fp32, dtype=dtype)

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
        rope = self.rope_table(position_ids)
        bias = self.key_padding_bias(attention_mask, x.dtype)
        pad_rows = None
        if bias is not None and self.config.pad_queries_masked:
            pad_rows = ~attention_mask.to(torch.bool)[:, :, None]  # Dream: pad queries output 0
        for layer in self.layers:
            q, k, v = layer.qkv(x, rope)
            attn = layer.attend(q, k, v, bias)
            if pad_rows is not None:
                attn = attn.masked_fill(pad_rows, 0.0)
            x = x + attn
            x = x + layer.mlp(x)
        return x

    def row_chunk(self) -> int:
        """Rows per chunk of row-wise work in long passes: about :data:`ROW_CHUNK_BYTES` of MLP activations
        (:data:`GPU_ROW_CHUNK_BYTES` off the CPU), at least :data:`MIN_ROW_CHUNK` rows."""
        weight = self.embed_tokens.weight
        budget = ROW_CHUNK_BYTES if weight.device.type == "cpu" else GPU_ROW_CHUNK_BYTES
        return max(MIN_ROW_CHUNK, budget // (2 * self.config.intermediate_size * weight.element_size()))

    def unpack_lm_head(self) -> None:
        """Give a :class:`PackedLMHead` back its dense weight (an :class:`LMHead`), e.g. before ``.to("cuda")``."""
        if isinstance(self.lm_head, PackedLMHead):
            head = LMHead(self.lm_head.in_features, self.lm_head.out_features, bias=False, device="meta")
            head.weight = nn.Parameter(self.lm_head.weight, requires_grad=False)
            self.lm_head = head

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
