"""Per-layer cache storage and its memory accounting."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LayerCache:
    """One layer's cached tensors for one request.

    ``k``/``v`` hold ``[B, Hkv, S + G, hd]``: ``S`` prompt slots (all prompt tokens, or the kept
    ones after eviction) followed by the ``G`` response rows, keys after RoPE. Keeping both segments
    in one buffer lets attention read it without concatenating on every pass; response rows are
    refreshed in place.
    """

    k: torch.Tensor
    v: torch.Tensor
    prompt_slots: int
    prompt_valid: torch.Tensor | None  # [B, 1 or Hkv, S] bool: False = padding or empty slot
    resp_attn: torch.Tensor  # [B, G, d] attention output (after o_proj) of the response rows
    resp_mlp: torch.Tensor  # [B, G, d] MLP output of the response rows
    prompt_attn: torch.Tensor | None = None  # only without prompt-state exclusion
    prompt_mlp: torch.Tensor | None = None
    prompt_positions: torch.Tensor | None = None  # [B, Hkv, S] kept absolute positions after eviction
    attn_mask: torch.Tensor | None = field(default=None, repr=False)  # derived from prompt_valid

    @property
    def resp_k(self) -> torch.Tensor:
        return self.k[:, :, self.prompt_slots :]

    @property
    def resp_v(self) -> torch.Tensor:
        return self.v[:, :, self.prompt_slots :]

    def replace_prompt(self, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None) -> None:
        """Put new prompt K/V ``[B, Hkv, S', hd]`` in front of the (current) response K/V."""
        if k.shape[2] == self.prompt_slots:
            self.k[:, :, : self.prompt_slots].copy_(k)
            self.v[:, :, : self.prompt_slots].copy_(v)
        else:
            self.k = torch.cat([k, self.resp_k], dim=2)
            self.v = torch.cat([v, self.resp_v], dim=2)
            self.prompt_slots = k.shape[2]
        self.prompt_valid = valid

    def bytes_by_kind(self) -> dict[str, int]:
        def nbytes(t: torch.Tensor | None) -> int:
            return 0 if t is None else t.numel() * t.element_size()

        kv = nbytes(self.k) + nbytes(self.v)
        resp_kv = 2 * nbytes(self.resp_k)
        return {
            "prompt_kv": kv - resp_kv,
            "response_kv": resp_kv,
            "response_features": nbytes(self.resp_attn) + nbytes(self.resp_mlp),
            "prompt_features": nbytes(self.prompt_attn) + nbytes(self.prompt_mlp),
        }


@dataclass
class CacheStats:
    """Bytes held by the cache, by kind, after the latest pass, and the peak total over passes."""

    bytes: dict[str, int] = field(default_factory=dict)
    peak_bytes: int = 0
    kept_prompt_pairs: int = 0  # logical: real prompt K/V pairs held, summed over layers, heads, batch
    prompt_pairs: int = 0  # the same without eviction

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    def observe(self, layers: list[LayerCache], last_prompt_hidden: torch.Tensor | None) -> None:
        totals = {"prompt_kv": 0, "response_kv": 0, "response_features": 0, "prompt_features": 0}
        for layer in layers:
            for kind, n in layer.bytes_by_kind().items():
                totals[kind] += n
        if last_prompt_hidden is not None:  # Dream: the row that predicts the first response token
            totals["prompt_features"] += last_prompt_hidden.numel() * last_prompt_hidden.element_size()
        self.bytes = totals
        self.peak_bytes = max(self.peak_bytes, self.total_bytes)

    def observe_prompt_pairs(self, layers: list[LayerCache], prompt_length: int, prompt_valid: torch.Tensor | None) -> None:
        """Count kept (logical) prompt pairs against the unevicted count."""
        kept = total = 0
        for layer in layers:
            b, heads, slots = layer.k.shape[0], layer.k.shape[1], layer.prompt_slots
            kept += b * heads * slots if layer.prompt_valid is None else int(layer.prompt_valid.expand(b, heads, slots).sum())
            real = b * prompt_length if prompt_valid is None else int(prompt_valid.sum())
            total += heads * real
        self.kept_prompt_pairs, self.prompt_pairs = kept, total

    def as_dict(self) -> dict[str, int]:
        return {
            **self.bytes, "total": self.total_bytes, "peak": self.peak_bytes,
            "kept_prompt_pairs": self.kept_prompt_pairs, "prompt_pairs": self.prompt_pairs,
        }  # fmt: skip
