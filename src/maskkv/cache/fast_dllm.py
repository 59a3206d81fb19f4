"""Fast-dLLM's block-wise approximate KV cache: prefix and dual cache (``sampling.md`` 3.2-3.3).

Fast-dLLM (Wu et al., arXiv 2505.22618) freezes K/V for the length of one block of the
semi-autoregressive sampler:

- **prefix**: the block's first pass is a full forward that stores each layer's K/V of the positions
  before the block; every other pass of the block recomputes the block **and all later positions**
  over that frozen prefix.
- **dual**: the first pass stores every position's K/V; the other passes recompute only the block's
  rows, write their fresh K/V into the cache in place, and attend over the frozen prefix and suffix.

Deviations from the Fast-dLLM code, none of which changes what is frozen when:

- Keys are stored after RoPE at their true positions (Fast-dLLM stores them before RoPE and rotates
  the concatenation on every call); the products are the same up to fp rounding.
- Logits are projected only for the rows the sampler reads (mask-only projection).
- With a logit shift (Dream), the row before the block predicts its first token; it is recomputed as
  a query on every pass (its own K/V stay the frozen ones), so the block's first token is never
  predicted from a stale hidden state.

The block boundaries are the sampler's (``generate(block_length=...)``); with one pass per block
every pass is a full forward, and the output equals the uncached sampler's token for token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..models.rope import RopeTable, RotaryPositions
from .graphs import StepGraphs, graphs_usable
from .state import CacheStats

if TYPE_CHECKING:
    from ..models.transformer import DiffusionTransformer
    from ..presses.base import Press

MODES = ("prefix", "dual")


@dataclass(frozen=True)
class FastDLLMCache:
    """Fast-dLLM's prefix (``mode="prefix"``) or dual (``mode="dual"``) cache, refreshed per block."""

    mode: str = "prefix"
    # on CUDA, capture each block's passes in a CUDA graph (maskkv.cache.graphs); the tokens are the same,
    # so it stays out of the repr that run records keep
    cuda_graphs: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"FastDLLMCache.mode={self.mode!r} is unknown; use one of {MODES}")

    def bind(
        self, model: DiffusionTransformer, prompt_length: int, press: Press | None = None, *,
        block_length: int | None = None,
    ) -> FastDLLMDenoiser:  # fmt: skip
        """A fresh per-request denoiser for prompts of ``prompt_length`` tokens and the sampler's blocks."""
        if press is not None:
            raise ValueError(
                f"FastDLLMCache does not evict (press {type(press).__name__} given); "
                "use DLLMCache() for eviction with a press"
            )
        if block_length is None or block_length <= 0:
            raise ValueError(f"FastDLLMCache needs the sampler's block_length (a positive int), got {block_length!r}")
        return FastDLLMDenoiser(model, self, prompt_length, block_length)


@dataclass
class FastPassRecord:
    """What one pass computed: a full forward (a block's first pass) or the rows ``[start, end)``."""

    step: int
    full: bool
    query_rows: int
    block: int


@dataclass
class _BlockState:
    """The current block's K/V, per layer ``[B, Hkv, L, hd]`` after RoPE, for every canvas position.

    Frozen: positions before ``start`` (prefix), or every position outside the rows a pass recomputes
    (dual). Each block pass writes its recomputed rows' fresh K/V in place, so no pass concatenates.
    """

    index: int
    start: int  # first canvas position of the block
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    rows: tuple | None = None  # ((query start, end), RoPE table, K views, V views) of the block's passes


class FastDLLMDenoiser:
    """Per-request Fast-dLLM cache (see the module docstring). Built by :meth:`FastDLLMCache.bind`."""

    full_logits = False  # predicts the rows of the current block only
    press = None

    def __init__(self, model: DiffusionTransformer, policy: FastDLLMCache, prompt_length: int, block_length: int) -> None:
        if prompt_length <= 0:
            raise ValueError(f"prompt_length must be positive, got {prompt_length}")
        self.model = model
        self.config = model.config
        self.policy = policy
        self.prompt_length = prompt_length
        self.block_length = block_length
        self.step = 0
        self.stats = CacheStats()
        self.passes: list[FastPassRecord] = []
        self._block: _BlockState | None = None
        self._rope: RotaryPositions | None = None
        self._announced: tuple[int, int] | None = None  # the sampler's block (begin_block): [start, end)
        self._bias: torch.Tensor | None = None  # key padding bias over the whole canvas
        self._pad_rows: torch.Tensor | None = None  # Dream: [B, L, 1] True at prompt padding rows
        self._real_prompt_tokens = 0  # over the batch, without left padding
        self.graphs: StepGraphs | None = StepGraphs() if policy.cuda_graphs else None  # used on CUDA only

    def begin_block(self, start: int, end: int) -> None:
        """The sampler starts the block ``[start, end)``: the next pass is its full forward, and the
        positions of its passes lie inside it (not read back from the device)."""
        if start < self.prompt_length or (start - self.prompt_length) % self.block_length:
            raise ValueError(
                f"block [{start}, {end}) does not start on a block boundary after the {self.prompt_length}-token "
                f"prompt (block_length {self.block_length})"
            )
        self._announced = (start, end)

    def reset(self) -> None:
        """Forget the request (the block's frozen K/V, the passes): the next pass is a first pass again."""
        self.__init__(self.model, self.policy, self.prompt_length, self.block_length)

    def end_blocks(self) -> None:
        """The sampler is done: positions of later calls are checked again."""
        self._announced = None

    @torch.inference_mode()
    def logits_at(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, positions: torch.Tensor
    ) -> torch.Tensor:
        """One pass, then logits for ``positions [C]`` (all inside one block) -> ``[B, C, V]``."""
        self.step += 1
        p, length = self.prompt_length, input_ids.shape[1]
        if positions.numel() == 0:
            raise ValueError("no positions requested")
        if self._announced is not None:  # the sampler's block: no position is read on the host
            start = self._announced[0]
            index = (start - p) // self.block_length
            end = min(start + self.block_length, length)
        else:
            first, last = int(positions.min()), int(positions.max())
            if first < p:
                raise ValueError(f"logits requested for prompt position {first}; the cache predicts the blocks only")
            index = (first - p) // self.block_length
            start = p + index * self.block_length
            end = min(start + self.block_length, length)
            if last >= end:
                raise ValueError(
                    f"positions {first}..{last} span more than the block [{start}, {end}) of length {self.block_length}"
                )
        if self._rope is None:
            self._start(input_ids, attention_mask)
        shift = 1 if self.config.logits_shift else 0
        if self._block is None or self._block.index != index:
            if self.graphs is not None:
                self.graphs.clear()  # the previous block's graphs read K/V that are released now
            hidden = self._full_pass(input_ids, index, start)
            self.passes.append(FastPassRecord(self.step, True, length, index))
            self._observe()
            return self.model.project(hidden[:, positions - shift if shift else positions])
        query_end = length if self.policy.mode == "prefix" else end
        self.passes.append(FastPassRecord(self.step, False, query_end - start + shift, index))
        self._observe()
        if self.graphs is not None and graphs_usable(input_ids):  # one graph per block (its rows are fixed)
            return self.graphs.run(
                (index, query_end), (input_ids, positions), lambda ids, pos: self.decode_pass(ids, pos, query_end)
            )
        return self.decode_pass(input_ids, positions, query_end)

    @property
    def static_positions(self) -> bool:
        """The sampler should ask for every position of its block (fixed shapes for CUDA graphs)."""
        return self.graphs is not None and graphs_usable(self.model.embed_tokens.weight)

    def decode_pass(self, input_ids: torch.Tensor, positions: torch.Tensor, query_end: int) -> torch.Tensor:
        """A block pass (not the block's first): rows from the block's start (less the shift row) to
        ``query_end`` over the frozen K/V, then the logits of ``positions``; what a CUDA graph captures."""
        shift = 1 if self.config.logits_shift else 0
        query_start = self._block.start - shift
        hidden = self._block_pass(input_ids, query_start, query_end)
        rows = positions - shift if shift else positions
        return self.model.project(hidden[:, rows - query_start])

    # ----- passes --------------------------------------------------------------------------

    def _start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        model, length = self.model, input_ids.shape[1]
        self._rope = model.rope_positions(model.default_position_ids(attention_mask, length))
        self._bias = model.key_padding_bias(attention_mask, model.embed_tokens.weight.dtype)
        p = self.prompt_length
        self._real_prompt_tokens = input_ids.shape[0] * p if attention_mask is None else int(attention_mask[:, :p].sum())
        if self._bias is not None and self.config.pad_queries_masked:
            self._pad_rows = ~attention_mask.to(torch.bool)[:, :, None]

    def _full_pass(self, input_ids: torch.Tensor, index: int, start: int) -> torch.Tensor:
        """Every row, exactly the uncached forward; keeps the K/V this block's passes will reuse."""
        block = _BlockState(index, start)
        x = self.model.embed_tokens(input_ids)
        chunk = self.model.row_chunk()
        rope = self._rope.table()  # every row's RoPE table, once for all layers (released with the pass)
        for layer in self.model.layers:
            q, k, v = layer.qkv_in_chunks(x, rope, chunk)
            attn = layer.attend(q, k, v, self._bias)
            del q
            if self._pad_rows is not None:
                attn = attn.masked_fill(self._pad_rows, 0.0)
            x = layer.mlp_in_chunks(x + attn, chunk, in_place=True)[0]
            del attn
            block.keys.append(k)
            block.values.append(v)
        self._block = block
        return x

    def _block_pass(self, input_ids: torch.Tensor, query_start: int, query_end: int) -> torch.Tensor:
        """Rows ``[query_start, query_end)`` over the frozen K/V; returns their final stream."""
        block = self._block
        fresh = block.start - query_start  # leading query-only rows (the shift row) keep their frozen K/V
        x = self.model.embed_tokens(input_ids[:, query_start:query_end])
        rope, k_views, v_views = self._block_rows(query_start, query_end)
        layers = zip(self.model.layers, block.keys, block.values, k_views, v_views)
        for layer, k_frozen, v_frozen, k_rows, v_rows in layers:
            q, k, v = layer.qkv(x, rope)
            k_rows.copy_(k if fresh == 0 else k[:, :, fresh:])  # recomputed rows: fresh K/V in place
            v_rows.copy_(v if fresh == 0 else v[:, :, fresh:])
            x = x + layer.attend(q, k_frozen, v_frozen, self._bias)
            x = x + layer.mlp(x)
        return x

    def _block_rows(self, query_start: int, query_end: int) -> tuple[RopeTable, list[torch.Tensor], list[torch.Tensor]]:
        """The RoPE table of the query rows and, per layer, the rows ``[block start, query_end)`` of the
        frozen K and V: made once per block, so a block pass dispatches no bookkeeping ops."""
        block = self._block
        if block.rows is None or block.rows[0] != (query_start, query_end):
            size = query_end - block.start
            keys = [k.narrow(2, block.start, size) for k in block.keys]
            values = [v.narrow(2, block.start, size) for v in block.values]
            block.rows = ((query_start, query_end), self._rope.table(query_start, query_end), keys, values)
        return block.rows[1], block.rows[2], block.rows[3]

    def _observe(self) -> None:
        """Cache bytes of the frozen K/V: prompt positions (``prompt_kv``) and generated ones (``response_kv``).

        Prefix: the positions before the block (the rest of the buffer is recomputed every pass, like
        activations); dual: every position.
        """
        p, block = self.prompt_length, self._block
        prompt = response = 0
        for k, v in zip(block.keys, block.values):
            frozen = block.start if self.policy.mode == "prefix" else k.shape[2]
            per_position = (k.numel() + v.numel()) // k.shape[2] * k.element_size()
            prompt += per_position * min(frozen, p)
            response += per_position * max(frozen - p, 0)
        self.stats.bytes = {"prompt_kv": prompt, "response_kv": response, "response_features": 0, "prompt_features": 0}
        self.stats.peak_bytes = max(self.stats.peak_bytes, self.stats.total_bytes)
        heads = self.config.num_kv_heads * len(self._block.keys)
        self.stats.kept_prompt_pairs = self.stats.prompt_pairs = heads * self._real_prompt_tokens
