"""Rotary position embeddings, half-split ("NeoX/Llama") convention, both precision conventions.

``models.md`` 2.5 (LLaDA) and 3.4 (Dream). Angles are computed on the fly for the positions asked
for: ``angle[p, i] = float32(p) * inv_freq[i]`` with ``inv_freq[i] = 1 / theta ** (float32(2i) / d)``.
This is the same elementwise arithmetic as the reference tables, so values agree bit for bit while
arbitrary (cached, evicted) positions cost nothing extra.
"""

from __future__ import annotations

import torch


def inverse_frequencies(head_dim: int, theta: float, device: torch.device | str | None = None) -> torch.Tensor:
    """``1 / theta ** (2i / head_dim)`` for ``i < head_dim / 2``, in fp32. Shape ``[head_dim // 2]``."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    return 1.0 / (theta**exponents)


def rotary_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``cos`` and ``sin`` for integer ``positions [..., T]``; each ``[..., T, head_dim]``."""
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq  # [..., T, d/2]
    angles = torch.cat((angles, angles), dim=-1)  # [..., T, d]
    return angles.cos(), angles.sin()


def rotate_half(t: torch.Tensor) -> torch.Tensor:
    """``concat(-t[d/2:], t[:d/2])`` along the last axis."""
    half = t.shape[-1] // 2
    return torch.cat((-t[..., half:], t[..., :half]), dim=-1)


def apply_rotary(
    t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, in_fp32: bool
) -> torch.Tensor:
    """Rotate ``t [B, heads, T, d]`` by ``cos/sin [B or 1, T, d]`` (fp32).

    ``in_fp32=True`` (LLaDA): cast ``t`` to fp32, rotate, cast back.
    ``in_fp32=False`` (Dream): cast ``cos/sin`` to ``t``'s dtype and rotate in that dtype.
    """
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
    if in_fp32:
        t32 = t.float()
        return (t32 * cos + rotate_half(t32) * sin).to(t.dtype)
    cos, sin = cos.to(t.dtype), sin.to(t.dtype)
    return t * cos + rotate_half(t) * sin
