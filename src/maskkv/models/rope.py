"""Rotary position embeddings, half-split ("NeoX/Llama") convention, both precision conventions.

``models.md`` 2.5 (LLaDA) and 3.4 (Dream). Angles are computed on the fly for the positions asked
for: ``angle[p, i] = float32(p) * inv_freq[i]`` with ``inv_freq[i] = 1 / theta ** (float32(2i) / d)``.
This is the same elementwise arithmetic as the reference tables, so values agree bit for bit while
arbitrary (cached, evicted) positions cost nothing extra.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class RopeTable:
    """RoPE factors laid out for projection rows ``[B, T, heads, hd]``: ``cos`` and a sign-folded ``sin``.

    ``sin`` holds ``concat(-sin[:d/2], sin[d/2:])``, so ``rotate_half(t) * sin_plain`` equals
    ``roll(t, d/2) * sin`` bit for bit (negation is exact): one ``roll`` replaces two slices, a negation
    and a concatenation. Both are ``[B or 1, T, 1, hd]``, fp32 for LLaDA's fp32 rotation, else in the
    dtype the rotation runs in (Dream casts ``cos/sin`` to the activations' dtype, ``models.md`` 3.4).
    """

    cos: torch.Tensor
    sin: torch.Tensor
    in_fp32: bool

    @classmethod
    def build(cls, cos: torch.Tensor, sin: torch.Tensor, *, in_fp32: bool, dtype: torch.dtype) -> RopeTable:
        """From :func:`rotary_cos_sin`'s ``[B or 1, T, hd]`` fp32 tables."""
        half = sin.shape[-1] // 2
        signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        if not in_fp32:
            cos, signed = cos.to(dtype), signed.to(dtype)
        return cls(cos.unsqueeze(2), signed.unsqueeze(2), in_fp32)

    def rows(self, start: int, stop: int) -> RopeTable:
        """The table of canvas rows ``[start, stop)``."""
        return RopeTable(self.cos[:, start:stop], self.sin[:, start:stop], self.in_fp32)

    def rotate_(self, t: torch.Tensor) -> torch.Tensor:
        """Rotate ``t [B, T, heads, hd]`` in place (a view is fine) and return it.

        The same arithmetic as :func:`apply_rotary`: ``t*cos + rotate_half(t)*sin``, in fp32 then one
        cast back (``in_fp32``), or in ``t``'s dtype.
        """
        source = t.float() if self.in_fp32 and t.dtype != torch.float32 else t
        rotated = source * self.cos
        rolled = torch.roll(source, t.shape[-1] // 2, -1) * self.sin
        if (t.requires_grad and torch.is_grad_enabled()) or torch.compiler.is_compiling():
            return t.copy_(rotated + rolled)  # training (autograd) or tracing (no strided out=): a copy
        return torch.add(rotated, rolled, out=t)


@dataclass(frozen=True)
class RotaryPositions:
    """The positions of a canvas; :meth:`table` builds the :class:`RopeTable` of a row range.

    Building a table is real work (a handful of elementwise ops over ``[rows, hd]``), so a pass builds
    the table of its rows once and every layer slices it (:meth:`RopeTable.rows`, a view); the tables
    live only as long as the pass holds them. The values do not depend on the range they are built for
    (:func:`rotary_cos_sin` is elementwise per position).
    """

    positions: torch.Tensor  # [B or 1, T] int64
    inv_freq: torch.Tensor
    in_fp32: bool
    dtype: torch.dtype

    @property
    def length(self) -> int:
        return self.positions.shape[1]

    def table(self, start: int = 0, stop: int | None = None) -> RopeTable:
        """The RoPE table of canvas rows ``[start, stop)`` (default: every row), built now."""
        stop = self.length if stop is None else stop
        cos, sin = rotary_cos_sin(self.positions[:, start:stop], self.inv_freq)
        return RopeTable.build(cos, sin, in_fp32=self.in_fp32, dtype=self.dtype)
