"""Attention over a ragged prompt cache with a variable-length kernel (MaskKV D10 b, CUDA).

Each (sample, KV head) pair is one sequence of the kernel: its kept prompt pairs followed by its
``G`` response rows as keys, and the response queries of the query heads it serves (GQA group)
as queries, all with one head. So no head attends to padding and no padded copy is built; the
packed keys are one gather of the flattened prompt pairs and the response rows per layer and pass.
The kernel is ``torch.nn.attention.varlen.varlen_attn`` (Flash Attention, CUDA, fp16/bf16);
elsewhere :class:`~maskkv.cache.engine.CachedDenoiser` uses the padded path of
:meth:`~maskkv.cache.state.RaggedPrompt.padded`.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from .state import RaggedPrompt

VarlenKernel = Callable[..., torch.Tensor]

VARLEN_DTYPES = (torch.float16, torch.bfloat16)


@functools.cache
def torch_varlen_kernel() -> VarlenKernel | None:
    """``torch.nn.attention.varlen.varlen_attn``, or None in a torch without it.

    Imported on first use: the module pulls in ``torch._dynamo`` (about a second and 70 MiB here),
    which CPU runs never need.
    """
    try:  # torch >= 2.10
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # pragma: no cover - older torch
        return None
    return varlen_attn


def varlen_available(q: torch.Tensor) -> bool:
    """Whether :func:`ragged_attention` can run on ``q``'s device and dtype with torch's kernel."""
    return q.is_cuda and q.dtype in VARLEN_DTYPES and torch_varlen_kernel() is not None


def packed_key_rows(prompt: RaggedPrompt, response_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``cat([prompt.k, resp_k.reshape(-1, hd)])`` in packed order, and ``cu_seqlens_k`` (int32).

    Sequence ``s = b * Hkv + h`` holds ``prompt.counts[b, h]`` prompt rows, then its ``G`` response rows.
    Computed once per kept set and ``G`` (kept in ``prompt.packing``) and without a host sync, so a
    decode step only gathers.
    """
    g = response_rows
    if g in prompt.packing:
        return prompt.packing[g]
    counts = prompt.counts.flatten()
    lengths = counts + g
    starts = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
    n = prompt.k.shape[0]
    total = n + counts.numel() * g
    sequence = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), lengths, output_size=total)
    local = torch.arange(total, device=counts.device) - starts[sequence]
    rows = torch.where(
        local < counts[sequence],
        prompt.offsets[sequence] + local,
        n + sequence * g + (local - counts[sequence]),
    )
    prompt.packing[g] = rows, starts.to(torch.int32)
    return prompt.packing[g]


def ragged_attention(
    q: torch.Tensor,
    prompt: RaggedPrompt,
    resp_k: torch.Tensor,
    resp_v: torch.Tensor,
    kernel: VarlenKernel | None = None,
) -> torch.Tensor:
    """Non-causal attention of ``q [B, H, Tq, hd]`` over each head's kept prompt pairs plus the response.

    ``resp_k``/``resp_v``: ``[B, Hkv, G, hd]``. ``kernel`` has the signature of ``varlen_attn``
    (default: torch's). Returns ``[B, H, Tq, hd]``, like ``scaled_dot_product_attention``.
    """
    kernel = kernel or torch_varlen_kernel()
    if kernel is None:
        raise RuntimeError("torch.nn.attention.varlen is not available in this torch; use the padded path")
    b, h, tq, hd = q.shape
    h_kv, g = resp_k.shape[1], resp_k.shape[2]
    group = h // h_kv
    rows, cu_k = packed_key_rows(prompt, g)
    keys = torch.cat([prompt.k, resp_k.reshape(-1, hd)]).index_select(0, rows)[:, None]
    values = torch.cat([prompt.v, resp_v.reshape(-1, hd)]).index_select(0, rows)[:, None]
    queries = q.reshape(b * h_kv * group * tq, 1, hd)  # sequence (b, j): query heads j*group .. j*group + group - 1
    per_sequence = group * tq
    cu_q = torch.arange(b * h_kv + 1, device=q.device, dtype=torch.int32) * per_sequence
    out = kernel(queries, keys, values, cu_q, cu_k, per_sequence, prompt.width + g)
    return out.view(b, h, tq, hd)
