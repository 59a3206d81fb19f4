"""The cached forward pass: runs the model's blocks on the rows a pass must recompute.

One :class:`CachedDenoiser` serves one request (one ``generate`` call). It exposes the same
``logits_at(input_ids, attention_mask, positions)`` as the model, so the samplers do not know
whether a cache is active. Per pass ``s`` (1-based, global over blocks, ``dllm_cache.md`` 2):

- **full** (``s = 1`` or both refreshes): every row, exactly the uncached computation; stores each
  layer's K/V (post-RoPE, true positions) and the response rows' attention/MLP outputs.
- **prompt refresh**: the prompt stream is recomputed from its embeddings (keys: fresh prompt K/V
  plus the cached response K/V); the response rows follow the response policy below.
- **response refresh**: response rows only, over the cached prompt K/V (branch B).
- **cached**: response rows reuse their cached features; with a transfer ratio, V-verify picks the
  rows whose values moved most and recomputes only those (branch D, ``dllm_cache.md`` 5).

Keys are stored after RoPE, so any subset of the prompt K/V (eviction) keeps its true positions,
and queries are always rotated at their absolute positions (MaskKV D11).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from ..models.rope import RopeTable, RotaryPositions
from ..models.transformer import residual_in_chunks
from ..presses.base import KeepSet, LayerContext
from .graphs import StepGraphs, graphs_usable
from .state import CacheStats, LayerCache, RaggedPrompt
from .varlen import ragged_attention, varlen_available

if TYPE_CHECKING:
    from ..models.transformer import DecoderBlock, DiffusionTransformer
    from ..presses.base import Press, PressPlan
    from .dllm_cache import DLLMCache


@dataclass
class PassRecord:
    """What one forward pass computed: the query rows that entered each layer."""

    step: int
    prompt_refresh: bool
    response_refresh: bool
    rows_per_layer: list[int] = field(default_factory=list)
    projected_rows: int = 0


class CachedDenoiser:
    """Per-request cached forward (see the module docstring). Built by :meth:`DLLMCache.bind`."""

    full_logits = False  # predicts response positions only (samplers draw noise per requested row)

    def __init__(
        self,
        model: DiffusionTransformer,
        policy: DLLMCache,
        prompt_length: int,
        press: Press | None = None,
        *,
        kept_attention: bool = False,
    ) -> None:
        """``kept_attention``: after eviction, prompt refresh passes attend only to the kept prompt
        keys (evicted entries are absent everywhere: the uncached path with a press). By default a
        refresh attends to the full fresh prompt and then keeps the chosen positions (MaskKV D6 a)."""
        if prompt_length <= 0:
            raise ValueError(f"prompt_length must be positive, got {prompt_length}")
        self.model = model
        self.config = model.config
        self.policy = policy
        self.prompt_length = prompt_length
        self.press = press
        self.kept_attention = kept_attention
        self.plan: PressPlan | None = None
        self.step = 0
        self.layers: list[LayerCache] = []
        self.stats = CacheStats()
        self.passes: list[PassRecord] = []
        # per-request constants, set on the first pass
        self._rope: RotaryPositions | None = None  # every canvas row (a pass makes its table once)
        self._resp_rope: RopeTable | None = None  # the response rows
        self._block: tuple[int, int] | None = None  # the sampler's current block (begin_block): positions trusted
        self.graphs: StepGraphs | None = StepGraphs() if policy.cuda_graphs else None  # used on CUDA only
        self._kind_records: dict[tuple[str, tuple[int, ...]], PassRecord] = {}
        self._full_bias: torch.Tensor | None = None
        self._prompt_pad_rows: torch.Tensor | None = None  # Dream: [B, P, 1] True at pad rows
        self._prompt_valid: torch.Tensor | None = None  # [B, P] bool, None when unpadded
        self._last_prompt_hidden: torch.Tensor | None = None  # Dream: final stream of row P-1
        self._resp_stream: torch.Tensor | None = None
        self._prompt_stream: torch.Tensor | None = None

    # ----- the sampler's interface ---------------------------------------------------------

    def begin_block(self, start: int, end: int) -> None:
        """The sampler starts the block of canvas positions ``[start, end)``; its positions lie inside it.

        Positions are then not checked on the device (that check reads a device value on the host).
        """
        if start < self.prompt_length:
            raise ValueError(f"block [{start}, {end}) starts inside the {self.prompt_length}-token prompt")
        self._block = (start, end)

    def reset(self) -> None:
        """Forget the request (caches, kept sets, passes): the next pass is a first pass again."""
        self.__init__(self.model, self.policy, self.prompt_length, self.press, kept_attention=self.kept_attention)

    def end_blocks(self) -> None:
        """The sampler is done: positions of later calls are checked again."""
        self._block = None

    @torch.inference_mode()
    def logits_at(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, positions: torch.Tensor
    ) -> torch.Tensor:
        """One cached forward pass, then logits for canvas ``positions [C]`` -> ``[B, C, V]``."""
        self.step += 1
        p = self.prompt_length
        if input_ids.shape[1] <= p:
            raise ValueError(f"canvas of length {input_ids.shape[1]} has no response rows after the {p}-token prompt")
        first = not self.layers
        if first:
            self._start(input_ids, attention_mask)
        refresh_prompt = first or (self.policy.refresh_prompt(self.step) and not self._prompt_frozen)
        refresh_response = first or self.policy.refresh_response(self.step)
        record = PassRecord(self.step, refresh_prompt, refresh_response)
        self.passes.append(record)
        if not refresh_prompt:
            logits = self._steady_pass(input_ids, positions, refresh_response, record)
            self.stats.observe(self.layers, self._last_prompt_hidden)
            return logits
        if self.graphs is not None:
            self.graphs.clear()  # a prompt refresh may replace the cache tensors the graphs read
        if refresh_response:
            self._full_pass(input_ids, record)
        else:
            self._partial_pass(input_ids, refresh_prompt, refresh_response, record)
        self.stats.observe(self.layers, self._last_prompt_hidden)
        # the kept prompt sets change only here; counting them syncs a GPU
        self.stats.observe_prompt_pairs(self.layers, self.prompt_length, self._prompt_valid)
        return self._project(positions, record)

    @property
    def static_positions(self) -> bool:
        """The sampler should ask for every position of its block (fixed shapes for CUDA graphs)."""
        return self.graphs is not None and graphs_usable(self.model.embed_tokens.weight)

    def _steady_pass(
        self, input_ids: torch.Tensor, positions: torch.Tensor, refresh_response: bool, record: PassRecord
    ) -> torch.Tensor:
        """A pass without prompt refresh, replayed from a CUDA graph of its kind when graphs are on."""
        if self.graphs is None or not graphs_usable(input_ids):
            return self.decode_pass(input_ids, positions, refresh_response, record)
        # one graph per kind and shape (a loop with device reads may ask for other positions each pass)
        key = ("response" if refresh_response else "transfer", tuple(positions.shape))
        if key in self._kind_records:  # replayed: the rows are those of the captured pass
            template = self._kind_records[key]
            record.rows_per_layer, record.projected_rows = list(template.rows_per_layer), template.projected_rows
        logits = self.graphs.run(
            key, (input_ids, positions), lambda ids, pos: self.decode_pass(ids, pos, refresh_response, record)
        )
        del record.rows_per_layer[len(self.layers) :]  # a capture ran the pass a second time (not executed)
        self._kind_records[key] = record
        return logits

    def decode_pass(
        self, input_ids: torch.Tensor, positions: torch.Tensor, refresh_response: bool,
        record: PassRecord | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """One steady-state pass (after the first; no prompt refresh): the response rows over the cached
        K/V, then the logits of ``positions``. Fixed shapes and no host read: what a CUDA graph captures."""
        record = record if record is not None else PassRecord(self.step, False, refresh_response)
        self._partial_pass(input_ids, False, refresh_response, record)
        return self._project(positions, record)

    @property
    def _prompt_frozen(self) -> bool:
        """MaskKV D6 ``none``: after eviction the prompt is never refreshed."""
        return self.plan is not None and bool(self.plan.keep) and self.plan.press.prompt_refresh == "none"

    # ----- passes --------------------------------------------------------------------------

    def _start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        model, p = self.model, self.prompt_length
        length = input_ids.shape[1]
        position_ids = model.default_position_ids(attention_mask, length)
        self._rope = model.rope_positions(position_ids)
        self._resp_rope = self._rope.table(p, length)
        dtype = model.embed_tokens.weight.dtype
        self._full_bias = model.key_padding_bias(attention_mask, dtype)
        if self._full_bias is not None:
            valid = attention_mask.to(torch.bool)
            if not bool(valid[:, p:].all()):
                raise ValueError("attention_mask marks response positions as padding; pad prompts on the left")
            self._prompt_valid = valid[:, :p]
            if self.config.pad_queries_masked:
                self._prompt_pad_rows = ~valid[:, :p, None]
        if self.press is not None:
            plan = self.press.plan(self.config, p, self._prompt_valid, input_ids.shape[0])
            self.plan = plan if plan.active else None  # budget >= every prompt: nothing to evict (D8)

    def _full_pass(self, input_ids: torch.Tensor, record: PassRecord) -> None:
        """Every row through every layer, exactly as the uncached model; (re)fills every cache.

        With a press, the first pass scores and evicts each layer right after its attention (as soon
        as its budget is known: offline allocations) or after the pass (online allocations); later
        full passes re-apply (or re-vote) the kept positions. The last layer computes only the rows
        that a later pass reads (:meth:`_unread_rows`); its prompt K/V are computed in full.
        """
        model, p, policy = self.model, self.prompt_length, self.policy
        chunk = model.row_chunk()
        x = model.embed_tokens(input_ids)
        keep_prompt_features = not policy.prompt_state_exclusion
        scoring = self.plan is not None and not self.plan.keep
        voters = input_ids[:, p:] == self.config.mask_token_id
        rope = self._rope.table()  # every row's RoPE table, once for all layers (released with the pass)
        new_layers: list[LayerCache] = []
        row0 = 0  # canvas row of x's first row: > 0 once the last layer drops the rows nobody reads
        for index, layer in enumerate(model.layers):
            q, k, v = layer.qkv_in_chunks(x, rope, chunk)
            keep = None if self.plan is None or scoring else self.plan.keep[index]
            if keep is not None and self.plan.press.prompt_refresh == "revote":
                keep = self.plan.revote(self._context(index, q, k, voters))
            bias = self._full_bias if keep is None or not self.kept_attention else self._kept_only_mask(keep, k.dtype)
            row0 = self._unread_rows(index, scoring)
            keep_from = 0 if keep_prompt_features else p - row0  # the attention/MLP rows the cache stores
            # The residual adds write into the stream itself (the same sums), unless an online allocation
            # still reads the layer's input stream (Eq. 8).
            in_place = not (scoring and self.plan.needs_hidden_states)
            x_in = x
            attention = self._attention_rows(layer, q, k, v, bias, row0)
            x, attn = residual_in_chunks(x[:, row0:], attention, chunk, keep_from, in_place=in_place)
            if scoring:
                hidden = {} if row0 else {"hidden_in": x_in, "hidden_mid": x}
                keep = self.plan.after_layer(self._context(index, q, k, voters, **hidden))
            del q, x_in, attention  # this layer's queries and input stream are not needed any more
            g0 = p - row0 - keep_from  # first response row in the kept rows
            cache = LayerCache(
                k=k, v=v, prompt_slots=p,
                prompt_valid=None if self._prompt_valid is None else self._prompt_valid[:, None, :],
                resp_attn=attn[:, g0:] if g0 == 0 else attn[:, g0:].clone(),
                resp_mlp=torch.empty_like(attn[:, g0:]),  # filled below
                prompt_attn=attn[:, :p].clone() if keep_prompt_features else None,
            )  # fmt: skip
            del k, v, attn
            self.stats.observe([*new_layers, cache], None)  # peak includes this layer's full K/V
            if keep is not None:
                self._evict(cache, keep)  # the full prompt K/V are released here, before the MLP
            else:
                cache.attn_mask = self._mask_for(cache)
            x, mlp = layer.mlp_in_chunks(x, chunk, keep_from, in_place=True)
            cache.resp_mlp = mlp[:, g0:] if g0 == 0 else mlp[:, g0:].clone()
            cache.prompt_mlp = mlp[:, :p].clone() if keep_prompt_features else None
            del mlp
            new_layers.append(cache)
            record.rows_per_layer.append(x.shape[1])
        self.layers = new_layers
        if scoring:  # online allocation: every layer's statistics were needed first
            for index, keep in self.plan.finish().items():
                self._evict(self.layers[index], keep)
        self._resp_stream = x[:, p - row0 :].clone()
        self._prompt_stream = x[:, :p] if not policy.mask_only_projection else None
        if self.config.logits_shift:
            self._last_prompt_hidden = x[:, p - 1 - row0 : p - row0].clone()

    def _attention_rows(
        self, layer: DecoderBlock, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
        row0: int,
    ) -> Callable[[int, int], torch.Tensor]:
        """``branch(start, stop)``: attention output of query rows ``row0 + start .. row0 + stop`` (Dream's
        padded prompt rows zeroed), for :func:`residual_in_chunks`."""
        p, pad_rows = self.prompt_length, self._prompt_pad_rows

        def branch(start: int, stop: int) -> torch.Tensor:
            attn = layer.attend(q[:, :, row0 + start : row0 + stop], k, v, bias)
            if pad_rows is not None and row0 + start < p:
                padded = min(row0 + stop, p) - row0 - start
                attn[:, :padded] = attn[:, :padded].masked_fill(pad_rows[:, row0 + start : row0 + start + padded], 0.0)
            return attn

        return branch

    def _unread_rows(self, index: int, scoring: bool = False) -> int:
        """How many leading canvas rows need no output at layer ``index`` (their K/V are computed anyway).

        At the last layer the prompt rows' outputs feed only their own logits, which the cache never
        projects: all P of them for LLaDA, all but row P-1 for Dream (its logits shift). Every row is
        needed at the other layers, and at the last one too when the policy keeps prompt features or
        projects every row, or an online allocation still needs every row's hidden states (Eq. 8).
        """
        policy = self.policy
        if index != self.config.num_layers - 1:
            return 0
        if not policy.prompt_state_exclusion or not policy.mask_only_projection:
            return 0
        if scoring and self.plan.needs_hidden_states:
            return 0
        return self.prompt_length - 1 if self.config.logits_shift else self.prompt_length

    def _context(
        self, index: int, q: torch.Tensor, k: torch.Tensor, voters: torch.Tensor, **hidden: torch.Tensor
    ) -> LayerContext:
        key_valid = None
        if self._prompt_valid is not None:
            key_valid = torch.cat([self._prompt_valid, voters.new_ones(voters.shape)], dim=1)
        return LayerContext(
            layer=index, config=self.config, queries=q, keys=k, prompt_length=self.prompt_length,
            key_valid=key_valid, voter_rows=voters, **hidden,
        )  # fmt: skip

    def _evict(self, cache: LayerCache, keep: KeepSet) -> None:
        """Keep only ``keep``'s prompt positions per KV head; the full prompt K/V are released.

        Heads with equal counts share one dense buffer; unequal counts are stored flattened
        (:class:`RaggedPrompt`, MaskKV D10 b) unless the policy asks for padding (D10 a).
        """
        index = keep.indices[..., None].expand(-1, -1, -1, cache.k.shape[-1])
        k_kept = cache.k[:, :, : cache.prompt_slots].gather(2, index)
        v_kept = cache.v[:, :, : cache.prompt_slots].gather(2, index)
        valid = None if bool(keep.valid.all()) else keep.valid
        if valid is not None and self.policy.ragged_storage:
            cache.store_ragged(RaggedPrompt.from_padded(k_kept, v_kept, valid))
        else:
            cache.replace_prompt(k_kept, v_kept, valid)
        cache.prompt_positions = keep.indices.to(torch.int32)
        cache.attn_mask = self._mask_for(cache)

    def _attend(self, layer: DecoderBlock, q: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """``layer.attend`` over the cached keys: dense, ragged via varlen (CUDA), or ragged padded."""
        if cache.ragged is None:
            return layer.attend(q, cache.k, cache.v, cache.attn_mask)
        if varlen_available(q):
            return layer.project_heads(ragged_attention(q, cache.ragged, cache.k, cache.v))
        k_prompt, v_prompt = cache.ragged.padded()
        keys, values = torch.cat([k_prompt, cache.k], dim=2), torch.cat([v_prompt, cache.v], dim=2)
        return layer.attend(q, keys, values, cache.attn_mask)

    def _kept_only_mask(self, keep: KeepSet, dtype: torch.dtype) -> torch.Tensor:
        """Mask over a full ``[prompt | response]`` key set that hides evicted prompt keys per head."""
        p = self.prompt_length
        b, h_kv = keep.indices.shape[:2]
        g = self._rope.length - p
        prompt = torch.zeros(b, h_kv, p, dtype=torch.bool, device=keep.indices.device)
        prompt.scatter_(2, keep.indices, keep.valid)
        valid = torch.cat([prompt, prompt.new_ones(b, h_kv, g)], dim=2)
        return self.model.key_mask(valid.repeat_interleave(self.config.num_query_groups, dim=1), dtype)

    def _partial_pass(
        self, input_ids: torch.Tensor, refresh_prompt: bool, refresh_response: bool, record: PassRecord
    ) -> None:
        """Response rows (all, V-verified, or none per layer) and, on a prompt refresh, the prompt rows."""
        model, p, policy = self.model, self.prompt_length, self.policy
        x_resp = model.embed_tokens(input_ids[:, p:])
        prompt_carried = refresh_prompt or not policy.prompt_state_exclusion
        x_prompt = model.embed_tokens(input_ids[:, :p]) if prompt_carried else None
        transfer = int(x_resp.shape[1] * policy.transfer_ratio)
        voters = input_ids[:, p:] == self.config.mask_token_id if refresh_prompt else None
        prompt_rope = self._rope.table(0, p) if refresh_prompt else None  # once for all layers
        for index, (layer, cache) in enumerate(zip(model.layers, self.layers)):
            if refresh_response or (index == 0 and policy.layer0_response_refresh):
                mode = "all"
            else:
                mode = "transfer" if transfer > 0 else "none"
            if refresh_prompt:
                x_prompt, x_resp, rows = self._layer_with_prompt(
                    index, layer, cache, x_prompt, x_resp, mode, transfer, voters, prompt_rope
                )
            else:
                x_resp, rows = self._response_layer(layer, cache, x_resp, mode, transfer)
                if x_prompt is not None:  # dLLM-Cache carries the prompt stream from cached features
                    x_prompt = x_prompt + cache.prompt_attn
                    x_prompt = x_prompt + cache.prompt_mlp
            record.rows_per_layer.append(rows)
        self._resp_stream = x_resp
        self._prompt_stream = x_prompt if not policy.mask_only_projection else None
        if self.config.logits_shift and x_prompt is not None:
            self._last_prompt_hidden = x_prompt[:, -1:].clone()  # row P-1 (the last layer may drop the rows before)

    def _response_queries(
        self, layer: DecoderBlock, cache: LayerCache, x_resp: torch.Tensor, mode: str, transfer: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Refresh the response K/V for ``mode``; return ``(queries, chosen rows)``.

        ``all``: every response row (rows None). ``transfer``: V-verify (``dllm_cache.md`` 5) picks
        the ``transfer`` rows with the lowest cosine similarity between fresh and cached V.
        ``none``: no response query.

        One fused q/k/v GEMM runs on every response row in both modes (a row's result does not depend
        on the other rows, so V-verify's chosen rows get the same q/k/v as when projected alone); the
        chosen rows are then gathered. Every shape is fixed by the block: no host synchronisation.
        """
        if mode == "none":
            return None, None
        cfg = self.config
        h, h_kv = cfg.num_heads, cfg.num_kv_heads
        rows_qkv = layer.project_rows(layer.attn_norm(x_resp), self._resp_rope)  # [B, G, H + 2 Hkv, hd]
        if mode == "all":
            heads = rows_qkv.transpose(1, 2)
            cache.resp_k.copy_(heads.narrow(1, h, h_kv))
            cache.resp_v.copy_(heads.narrow(1, h + h_kv, h_kv))
            return heads.narrow(1, 0, h), None
        b, g = x_resp.shape[:2]
        v_new = rows_qkv.narrow(2, h + h_kv, h_kv)  # [B, G, Hkv, hd]
        k_rows, v_rows = cache.resp_rows  # [B, G, Hkv, hd] views of the cached response K/V
        similarity = F.cosine_similarity(v_new.reshape(b, g, -1), v_rows.reshape(b, g, -1), dim=-1)
        rows = similarity.topk(transfer, dim=1, largest=False).indices  # [B, R]
        index = rows.view(b, transfer, 1, 1).expand(-1, -1, *rows_qkv.shape[2:])  # [B, R, H + 2 Hkv, hd]
        picked = rows_qkv.gather(1, index)
        k_rows.scatter_(1, index.narrow(2, 0, h_kv), picked.narrow(2, h, h_kv))
        if self.policy.refresh_all_values:
            v_rows.copy_(v_new)
        else:
            v_rows.scatter_(1, index.narrow(2, 0, h_kv), picked.narrow(2, h + h_kv, h_kv))
        return picked.narrow(2, 0, h).transpose(1, 2), rows

    def _finish_response(
        self, layer: DecoderBlock, cache: LayerCache, x_resp: torch.Tensor, attn: torch.Tensor | None,
        rows: torch.Tensor | None,
    ) -> torch.Tensor:
        """Store the fresh attention output(s), run the MLP on the same rows, return the new stream."""
        if attn is None:
            return x_resp + cache.resp_attn + cache.resp_mlp
        if rows is None:
            cache.resp_attn.copy_(attn)
            x_mid = x_resp + attn
            cache.resp_mlp.copy_(layer.mlp(x_mid))
            return x_mid + cache.resp_mlp
        index = rows.view(*rows.shape, 1).expand(-1, -1, x_resp.shape[-1])
        cache.resp_attn.scatter_(1, index, attn)
        x_mid = x_resp + cache.resp_attn
        cache.resp_mlp.scatter_(1, index, layer.mlp(x_mid.gather(1, index)))
        return x_mid + cache.resp_mlp

    def _response_layer(
        self, layer: DecoderBlock, cache: LayerCache, x_resp: torch.Tensor, mode: str, transfer: int
    ) -> tuple[torch.Tensor, int]:
        q, rows = self._response_queries(layer, cache, x_resp, mode, transfer)
        attn = None if q is None else self._attend(layer, q, cache)
        n_rows = 0 if q is None else q.shape[2]
        return self._finish_response(layer, cache, x_resp, attn, rows), n_rows

    def _revote_context(
        self, index: int, layer: DecoderBlock, q_p: torch.Tensor, cache: LayerCache, x_resp: torch.Tensor,
        voters: torch.Tensor,
    ) -> LayerContext:
        """Scoring context of a prompt refresh: fresh prompt queries, every response query, all keys."""
        q_r = layer.qkv(x_resp, self._resp_rope)[0]
        return self._context(index, torch.cat([q_p, q_r], dim=2), cache.k, voters)

    def _layer_with_prompt(
        self, index: int, layer: DecoderBlock, cache: LayerCache, x_prompt: torch.Tensor, x_resp: torch.Tensor,
        mode: str, transfer: int, voters: torch.Tensor, prompt_rope: RopeTable,
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Prompt refresh at one layer: fresh prompt K/V, prompt queries plus the response queries
        (``prompt_rope``: the prompt rows' RoPE table, made once per pass)."""
        p = self.prompt_length
        chunk = self.model.row_chunk()
        q_p, k_p, v_p = layer.qkv_in_chunks(x_prompt, prompt_rope, chunk)
        q_r, rows = self._response_queries(layer, cache, x_resp, mode, transfer)
        keep = None if self.plan is None else self.plan.keep.get(index)
        cache.replace_prompt(k_p, v_p, None if self._prompt_valid is None else self._prompt_valid[:, None, :])
        if keep is not None and self.plan.press.prompt_refresh == "revote":
            keep = self.plan.revote(self._revote_context(index, layer, q_p, cache, x_resp, voters))
        if keep is not None and self.kept_attention:
            self._evict(cache, keep)  # evicted prompt keys are absent from this pass too
            keep = None
        else:
            cache.attn_mask = self._mask_for(cache)
        skip = self._unread_rows(index)  # prompt rows whose output here is never read
        q_p, x_prompt = q_p[:, :, skip:], x_prompt[:, skip:]
        q = q_p if q_r is None else torch.cat([q_p, q_r], dim=2)
        if q.shape[2]:
            attn = self._attend(layer, q, cache)
        else:  # the last layer of a refresh without response queries: only the K/V were needed
            attn = x_prompt.new_empty(x_prompt.shape[0], 0, x_prompt.shape[2])
        if keep is not None:  # D6 keep/revote: full attention on the refresh pass, then keep the chosen slots
            self._evict(cache, keep)
        rows_p = p - skip
        attn_p, attn_r = attn[:, :rows_p], (None if q_r is None else attn[:, rows_p:])
        if self._prompt_pad_rows is not None:
            attn_p = attn_p.masked_fill(self._prompt_pad_rows[:, skip:], 0.0)
        x_mid = x_prompt + attn_p
        keep_features = not self.policy.prompt_state_exclusion
        x_prompt, mlp_p = layer.mlp_in_chunks(x_mid, chunk, 0 if keep_features else None)
        if keep_features:
            cache.prompt_attn, cache.prompt_mlp = attn_p, mlp_p
        x_resp = self._finish_response(layer, cache, x_resp, attn_r, rows)
        return x_prompt, x_resp, q.shape[2]

    # ----- masks and projection ------------------------------------------------------------

    def _mask_for(self, cache: LayerCache) -> torch.Tensor | None:
        """Attention mask over ``[prompt slots | response rows]``: pads and evicted slots masked.

        Ragged storage: over ``[padded kept pairs | response rows]`` (the padded path of :meth:`_attend`).
        """
        valid = cache.prompt_valid if cache.ragged is None else cache.ragged.valid
        if valid is None:
            return None
        b, g = valid.shape[0], cache.k.shape[2] - cache.prompt_slots
        if valid.shape[1] not in (1, self.config.num_heads):  # per KV head -> per query head
            valid = valid.repeat_interleave(self.config.num_query_groups, dim=1)
        full = torch.cat([valid, valid.new_ones(b, valid.shape[1], g)], dim=2)
        return self.model.key_mask(full, cache.k.dtype)

    def _project(self, positions: torch.Tensor, record: PassRecord) -> torch.Tensor:
        """Final norm + LM head on the rows that predict ``positions`` (mask-only projection)."""
        p = self.prompt_length
        shift = 1 if self.config.logits_shift else 0  # Dream: row j - 1 predicts position j
        if self._block is None:  # a sampler that announced its block is trusted
            rows = positions - shift
            if bool((rows < p).any()):
                lowest = p - shift
                if self._last_prompt_hidden is None or bool((rows < lowest).any()):
                    raise ValueError(
                        f"logits requested for prompt positions {positions[rows < lowest].tolist()}; "
                        "the cache only predicts response positions"
                    )
        # ``stream`` holds canvas rows ``first, first + 1, ...``: position j is read at ``j - shift - first``
        if self.policy.mask_only_projection:
            stream, first = self._resp_stream, p
            if shift:
                stream, first = torch.cat([self._last_prompt_hidden, stream], dim=1), p - 1
            record.projected_rows = int(positions.numel())
            return self.model.project(stream[:, positions - (shift + first)])
        # Ablation: project every row the pass holds, as dLLM-Cache does, then pick the rows.
        if self._prompt_stream is not None:
            stream, first = torch.cat([self._prompt_stream, self._resp_stream], dim=1), 0
        elif shift:
            stream, first = torch.cat([self._last_prompt_hidden, self._resp_stream], dim=1), p - 1
        else:
            stream, first = self._resp_stream, p
        record.projected_rows = stream.shape[1]
        return self.model.project(stream)[:, positions - (shift + first)]
