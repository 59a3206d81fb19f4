"""Per-layer cache storage and its memory accounting."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RaggedPrompt:
    """One layer's kept prompt K/V when its (sample, KV head) sequences keep different counts.

    MaskKV D10 (b): the kept pairs are stored flattened, ``k``/``v`` ``[N, hd]`` with N the total kept
    count, sequence ``(b, h)`` at rows ``offsets[b*Hkv + h] : offsets[b*Hkv + h + 1]`` in kept (ascending
    position) order, so a layer holds exactly its kept pairs instead of ``Hkv x`` its largest head
    budget. Attention reads them through :meth:`padded` (a transient ``[B, Hkv, width, hd]`` copy and a
    key mask; CPU and the reference path) or, on CUDA, packs them per sequence for a varlen kernel.
    """

    k: torch.Tensor
    v: torch.Tensor
    counts: torch.Tensor  # [B, Hkv] int64 kept pairs per sequence
    offsets: torch.Tensor  # [B*Hkv + 1] int64 cumulative counts
    slot_rows: torch.Tensor  # [B, Hkv, width] int64: row of k for slot j of (b, h); 0 in empty slots
    valid: torch.Tensor  # [B, Hkv, width] bool: slot j < counts[b, h]
    packing: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)  # varlen, by G

    @classmethod
    def from_padded(cls, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor) -> RaggedPrompt:
        """Flatten ``k, v [B, Hkv, W, hd]`` whose ``valid [B, Hkv, W]`` slots form a prefix of each row."""
        counts = valid.sum(-1)
        offsets = torch.cat([counts.new_zeros(1), counts.flatten().cumsum(0)])
        slot = torch.arange(valid.shape[-1], device=valid.device)
        rows = offsets[:-1].view(counts.shape)[..., None] + slot
        slot_rows = torch.where(valid, rows, torch.zeros_like(rows))
        return cls(k[valid].contiguous(), v[valid].contiguous(), counts, offsets, slot_rows, valid)

    @property
    def width(self) -> int:
        return self.valid.shape[-1]

    def padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``k, v [B, Hkv, width, hd]`` with each sequence's kept pairs first (empty slots: row 0, masked)."""
        shape = (*self.slot_rows.shape, self.k.shape[-1])
        rows = self.slot_rows.flatten()
        return self.k.index_select(0, rows).view(shape), self.v.index_select(0, rows).view(shape)

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


@dataclass
class LayerCache:
    """One layer's cached tensors for one request.

    ``k``/``v`` hold ``[B, Hkv, S + G, hd]``: ``S`` prompt slots (all prompt tokens, or the kept
    ones after eviction) followed by the ``G`` response rows, keys after RoPE. Keeping both segments
    in one buffer lets attention read it without concatenating on every pass; response rows are
    refreshed in place. When eviction leaves the heads with different counts and the policy stores
    them ragged (``DLLMCache.ragged_storage``), the kept prompt pairs live in ``ragged`` instead,
    ``S`` is 0 and ``k``/``v`` hold the response rows only.
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
    ragged: RaggedPrompt | None = None  # the kept prompt K/V, flattened (then prompt_slots == 0)

    _views: tuple = field(default=(), repr=False, compare=False)  # (k, v, slots, response views) memo

    def _response_views(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The response rows of ``k``/``v`` as views, made once per buffer (no op in a decode step):
        ``[B, Hkv, G, hd]`` and, transposed, ``[B, G, Hkv, hd]`` (the layout of a q/k/v projection)."""
        memo = self._views
        if not memo or memo[0] is not self.k or memo[1] is not self.v or memo[2] != self.prompt_slots:
            s = self.prompt_slots
            g = self.k.shape[2] - s
            resp_k, resp_v = self.k.narrow(2, s, g), self.v.narrow(2, s, g)
            memo = (self.k, self.v, s, resp_k, resp_v, resp_k.transpose(1, 2), resp_v.transpose(1, 2))
            self._views = memo
        return memo[3:]

    @property
    def resp_k(self) -> torch.Tensor:
        """The response rows' keys ``[B, Hkv, G, hd]`` (a view of ``k``)."""
        return self._response_views()[0]

    @property
    def resp_v(self) -> torch.Tensor:
        """The response rows' values ``[B, Hkv, G, hd]`` (a view of ``v``)."""
        return self._response_views()[1]

    @property
    def resp_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:attr:`resp_k` and :attr:`resp_v` as ``[B, G, Hkv, hd]`` (views: writes go to ``k`` and ``v``)."""
        return self._response_views()[2:]

    def replace_prompt(self, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None) -> None:
        """Put new prompt K/V ``[B, Hkv, S', hd]`` in front of the (current) response K/V."""
        if k.shape[2] == self.prompt_slots:
            self.k[:, :, : self.prompt_slots].copy_(k)
            self.v[:, :, : self.prompt_slots].copy_(v)
        else:
            resp_k, resp_v = self.resp_k, self.resp_v
            self.k = torch.cat([k, resp_k], dim=2)
            self.v = torch.cat([v, resp_v], dim=2)
            self.prompt_slots = k.shape[2]
            self._views = ()  # the memo held the old K/V alive
        self.prompt_valid = valid
        self.ragged = None

    def store_ragged(self, prompt: RaggedPrompt) -> None:
        """Hold ``prompt`` as the kept prompt K/V; ``k``/``v`` keep only the response rows."""
        self.k, self.v = self.resp_k.clone(), self.resp_v.clone()
        self._views = ()  # the memo held the full K/V alive
        self.prompt_slots = 0
        self.prompt_valid = None
        self.ragged = prompt

    def prompt_kv(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The prompt K/V as ``[B, Hkv, W, hd]`` slots and their validity (``[B, 1 or Hkv, W]`` or None).

        A view of the stored slots, or for ragged storage a padded copy (empty slots invalid).
        """
        if self.ragged is None:
            s = self.prompt_slots
            return self.k[:, :, :s], self.v[:, :, :s], self.prompt_valid
        k, v = self.ragged.padded()
        return k, v, self.ragged.valid

    def kept_pairs(self) -> int:
        """Real prompt K/V pairs held (over batch and heads)."""
        if self.ragged is not None:
            return int(self.ragged.counts.sum())
        b, heads, slots = self.k.shape[0], self.k.shape[1], self.prompt_slots
        return b * heads * slots if self.prompt_valid is None else int(self.prompt_valid.expand(b, heads, slots).sum())

    def bytes_by_kind(self) -> dict[str, int]:
        def nbytes(t: torch.Tensor | None) -> int:
            return 0 if t is None else t.numel() * t.element_size()

        kv = nbytes(self.k) + nbytes(self.v)
        resp_kv = 2 * nbytes(self.resp_k)
        return {
            "prompt_kv": kv - resp_kv + (0 if self.ragged is None else self.ragged.nbytes),
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
            kept += layer.kept_pairs()
            b, heads = layer.k.shape[:2]
            real = b * prompt_length if prompt_valid is None else int(prompt_valid.sum())
            total += heads * real
        self.kept_prompt_pairs, self.prompt_pairs = kept, total

    def as_dict(self) -> dict[str, int]:
        return {
            **self.bytes, "total": self.total_bytes, "peak": self.peak_bytes,
            "kept_prompt_pairs": self.kept_prompt_pairs, "prompt_pairs": self.prompt_pairs,
        }  # fmt: skip
