"""Reference-exact LLaDA and Dream samplers behind one :func:`generate` (``sampling.md`` 1-3).

- LLaDA (``sampling.md`` 1): semi-autoregressive blocks, the fixed per-block schedule of 1.3, Gumbel
  proposals, low-confidence or random remasking, cfg, the EOS/EOT flags, left-padded batches.
- Dream (``sampling.md`` 2): the float32 timestep schedule recomputed from the current mask count,
  ``sample_tokens`` with origin / maskgit_plus / topk_margin / entropy; optionally per block with a
  per-block ``linspace(1, eps, s_b + 1)`` (the step rule of the Fast-dLLM block sampler, 3.4).
- Fast-dLLM threshold decoding (3.1) for both families: top-1 plus every eligible position whose
  confidence is ``>= threshold``, repeated until the block has no masks.

Given bit-identical logits, the canvases equal the reference samplers' token for token, and a
``torch.manual_seed`` before the call reproduces the reference's random draws: the same RNG calls,
shapes, dtypes, device and order. Logits are requested only for the positions that need them (the
masked positions of the current block), except for LLaDA at ``temperature > 0`` where the reference
draws full-shape ``[B, L, V]`` Gumbel noise and we request all positions to replay it.

Deviation: a step whose region has no masked position left (LLaDA with ``s_b > n`` after the block is
done; Dream ``origin`` finishing early) does not call the model (nothing can change), but still makes
the reference's random draws. ``nfe`` counts the forward calls made; ``steps`` counts every step.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

import torch

from ..cache.dllm_cache import DLLMCache
from ..cache.fast_dllm import FastDLLMCache
from ..presses.base import Press
from ..validation import check_number, check_optional

from .confidence import LLADA_REMASKING, SOFTMAX_DTYPES, llada_propose, sample_tokens
from .schedules import (
    dream_num_transfer_tokens,
    dream_timesteps,
    dream_transfer_schedule,
    llada_transfer_schedule,
    threshold_transfer_index,
)

DREAM_ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")
DREAM_ALIASES = {"low_confidence": "maskgit_plus"}

# What an unset (None) temperature / top_p / top_k means: the family reference's effective default
# (``sampling.md`` 1.9, 2.1). LLaDA's ``generate`` has plain keyword defaults and no hidden ones. Dream's
# ``diffusion_generate`` without a ``generation_config`` builds one with
# ``DreamGenerationConfig.from_model_config(model.config)``; under transformers 4.46 (Dream's pin) every
# ``PretrainedConfig`` carries the legacy ``temperature=1.0, top_p=1.0, top_k=50``, which override the class
# defaults, so a call that does not pass ``top_k`` keeps the 50 largest logits before the confidence softmax.
REFERENCE_DEFAULTS: dict[str, dict[str, float | int]] = {
    "llada": {"temperature": 0.0},
    "dream": {"temperature": 1.0, "top_p": 1.0, "top_k": 50},
}


@dataclass
class GenerationOutput:
    """What :func:`generate` returns.

    Attributes:
        sequences: ``[B, P + G]`` int64 canvas, prompt included (like the references).
        nfe: model forward calls (cfg counts one per step: a single batched call).
        seconds: wall time of the decoding loop (CUDA synchronised at both ends).
        steps: sampler steps run (adaptive with a threshold).
        cache_bytes: with a cache, its bytes by kind after the last pass plus ``total`` and ``peak``.
    """

    sequences: torch.LongTensor
    nfe: int
    seconds: float
    steps: int
    cache_bytes: dict[str, int] | None = None


@dataclass(frozen=True)
class _Plan:
    """Validated inputs shared by both families."""

    x: torch.Tensor  # [B, L] canvas
    attention_mask: torch.Tensor | None  # [B, L] or None
    prompt_length: int
    gen_length: int
    block_length: int
    steps_per_block: int


def _elapsed(start: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _prepare(
    model: Any,
    prompt_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    gen_length: int,
    steps: int,
    block_length: int | None,
) -> _Plan:
    """Validate shapes and build the canvas (``sampling.md`` 1.2, 2.2)."""
    config = model.config
    if not isinstance(prompt_ids, torch.Tensor):
        raise ValueError(f"prompt_ids must be a torch.Tensor of token ids, got {type(prompt_ids).__name__}")
    if prompt_ids.dtype.is_floating_point or prompt_ids.dtype == torch.bool:
        raise ValueError(f"prompt_ids must hold integer token ids, got dtype {prompt_ids.dtype}")
    if prompt_ids.dim() == 1:
        prompt_ids = prompt_ids.unsqueeze(0)
        if attention_mask is not None and attention_mask.dim() == 1:
            attention_mask = attention_mask.unsqueeze(0)
    if prompt_ids.dim() != 2:
        raise ValueError(f"prompt_ids must be 2-D [batch, prompt_len] (or 1-D), got shape {tuple(prompt_ids.shape)}")
    batch, prompt_length = prompt_ids.shape
    if batch == 0 or prompt_length == 0:
        raise ValueError(
            f"prompt_ids has shape {tuple(prompt_ids.shape)}: the samplers need at least one prompt token per row "
            "(Dream's first prediction comes from the last prompt row); prepend a BOS token"
        )
    if gen_length <= 0:
        raise ValueError(f"gen_length must be >= 1, got {gen_length}")
    if steps <= 0:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if block_length is None:
        block_length = gen_length
    if block_length <= 0 or gen_length % block_length != 0:
        raise ValueError(
            f"gen_length={gen_length} is not divisible by block_length={block_length}; "
            "pick a block_length that divides gen_length (or None for one block)"
        )
    num_blocks = gen_length // block_length
    if steps % num_blocks != 0:
        raise ValueError(
            f"steps={steps} is not divisible by the number of blocks {num_blocks} "
            f"(gen_length {gen_length} / block_length {block_length}); use a multiple of {num_blocks}"
        )
    mask_id = config.mask_token_id
    hits = (prompt_ids == mask_id).nonzero()
    if hits.numel():
        row, pos = (int(v) for v in hits[0])
        raise ValueError(
            f"prompt_ids[{row}, {pos}] is the mask token id {mask_id}: infilling (masks inside the prompt) "
            "is not supported, and pads must not use the mask id; remove it from the prompt"
        )

    device = getattr(model, "device", None) or prompt_ids.device
    prompt_ids = prompt_ids.to(device)
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (batch, prompt_length):
            shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
            raise ValueError(
                f"attention_mask has shape {shape} but prompt_ids has shape {(batch, prompt_length)}; "
                "pass one 0/1 entry per prompt token"
            )
        attention_mask = attention_mask.to(device=device)
        if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("attention_mask must contain only 0 (pad) and 1 (real token)")
        attention_mask = attention_mask.long()
        if bool((attention_mask[:, 1:] < attention_mask[:, :-1]).any()) or bool((attention_mask[:, -1] == 0).any()):
            raise ValueError(
                "attention_mask must describe left padding (zeros, then ones, ending with a real token in every "
                "row); re-tokenise with padding_side='left'"
            )
        ones = torch.ones(batch, gen_length, dtype=attention_mask.dtype, device=device)
        attention_mask = torch.cat([attention_mask, ones], dim=-1)

    x = torch.full((batch, prompt_length + gen_length), mask_id, dtype=torch.long, device=device)
    x[:, :prompt_length] = prompt_ids
    return _Plan(x, attention_mask, prompt_length, gen_length, block_length, steps // num_blocks)


def _masked_columns(eligible: torch.Tensor) -> torch.Tensor:
    """Ascending canvas positions where any row is eligible: ``[C]`` int64 (reads the count on the host)."""
    return eligible.any(dim=0).nonzero().squeeze(1)


@dataclass(frozen=True)
class _Block:
    """One block of the canvas and the positions its steps ask logits for, chosen without reading the device.

    The samplers know on the host how many masks the block holds before each step (its schedule commits a
    fixed count per step). With one row they ask for exactly those positions (``exact``): the block's
    masked columns in ascending order, found by a stable sort, cut to the host count. With several rows
    (whose masks sit at different columns) they ask for every column of the block and mask the rest.
    """

    start: int
    end: int
    exact: bool
    _row: list = field(default_factory=list, repr=False, compare=False)  # [canvas, its block row (a view)]

    def positions(self, x: torch.Tensor, mask_id: int, masks: int, columns: torch.Tensor) -> torch.Tensor:
        """``[C]`` canvas positions for a step that starts with ``masks`` masked block positions per row."""
        if not self.exact:
            return columns[self.start : self.end]
        if not self._row or self._row[0] is not x:  # a view per canvas: the steps commit into x in place
            self._row[:] = [x, x[0, self.start : self.end]]
        masked = self._row[1] == mask_id
        order = torch.sort(masked, descending=True, stable=True).indices  # masked columns first, ascending
        return order[:masks] + self.start


def _static_positions(model: Any) -> bool:
    """Whether the denoiser wants every position of the block each step (CUDA graphs: fixed shapes)."""
    return bool(getattr(model, "static_positions", False))


def _announce(model: Any, start: int, end: int) -> None:
    """Tell a cached denoiser the block it serves next (it then trusts the positions: no device reads)."""
    begin_block = getattr(model, "begin_block", None)
    if begin_block is not None:
        begin_block(start, end)


@contextmanager
def _blocks_announced(model: Any) -> Iterator[None]:
    """Around a sampler's loop: afterwards the denoiser checks the positions of direct calls again."""
    try:
        yield
    finally:
        end_blocks = getattr(model, "end_blocks", None)
        if end_blocks is not None:
            end_blocks()


def _run_steps(steps: Any, model: Any, plan: _Plan, options: dict[str, Any]) -> tuple[torch.Tensor, int, int]:
    """``steps(model, plan, **options)`` with its blocks announced, checked by one read at the end.

    The sync-free steps take the masks left from the host's schedule, which assumes every committed token
    is a real one. A model that commits the mask token leaves a mask on the canvas (the step positions never
    come back to it), which the one read after the loop sees; the call is then run again from the same
    canvas and random state with the reference's device reads (``synced``), so the result is always the
    reference's. Re-running needs a fresh denoiser: a plain model, or one with ``reset()`` (the caches).
    """
    start, rng = plan.x.clone(), _rng_state(plan.x.device)
    with _blocks_announced(model):
        x, nfe, steps_run, scheduled = steps(model, plan, **options)
    mask_id = model.config.mask_token_id
    if not scheduled or not bool((x[:, plan.prompt_length :] == mask_id).any()):
        return x, nfe, steps_run
    reset = getattr(model, "reset", None)
    if reset is None and not isinstance(model, torch.nn.Module):
        raise RuntimeError(
            f"the model committed the mask token id {mask_id}; the sampler must re-run this call with device "
            f"reads, but {type(model).__name__} has no reset(); suppress that logit or pass a resettable denoiser"
        )
    if reset is not None:
        reset()
    _set_rng_state(plan.x.device, rng)
    with _blocks_announced(model):
        x, again, steps_run, _ = steps(model, replace(plan, x=start), synced=True, **options)
    return x, nfe + again, steps_run


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(device: torch.device, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _threshold_commit(
    x: torch.Tensor, candidates: torch.Tensor, confidence: torch.Tensor, eligible: torch.Tensor, *, threshold: float,
    mask_id: int, start: int, end: int, remaining: int, k: int | None, block: int,
) -> tuple[torch.Tensor, int]:
    """One Fast-dLLM threshold step (``sampling.md`` 3.1): commit, then count the masks left in ``[start, end)``.

    Reading that count is the step's one host synchronisation; no progress means the model proposed the mask
    token. ``k``: the largest eligible count of a row when known on the host (else it is read too).
    """
    pick = threshold_transfer_index(confidence, eligible, threshold, k=k)
    x = torch.where(pick, candidates, x)
    now = int((x[:, start:end] == mask_id).sum())
    if now == remaining:
        raise RuntimeError(
            f"threshold decoding made no progress in block {block}: the model proposed the mask token "
            f"id {mask_id}; suppress that logit in the model"
        )
    return x, now


def _commit_scheduled(
    x: torch.Tensor, x0: torch.Tensor, confidence: torch.Tensor, k: int, alg_temp: float | None = None
) -> None:
    """Per row, write ``x0`` into ``x`` at ``k`` positions chosen by ``confidence`` (``sampling.md`` 1.4, 1.7, 2.4).

    The ``k`` most confident positions (``torch.topk`` on full-length ``[L]`` rows, as in the references),
    or with Dream's ``alg_temp > 0`` ``k`` positions drawn from ``softmax(confidence / alg_temp)`` without
    replacement. Every row commits the same host-known ``k`` (the block's schedule), so one batched call
    serves them all.
    """
    if k > 0:
        if alg_temp:
            index = torch.multinomial(torch.softmax(confidence / alg_temp, dim=-1), num_samples=k)
        else:
            index = torch.topk(confidence, k).indices  # [B, k]
        x.scatter_(1, index, x0.gather(1, index))


def _llada_logits(
    model: Any,
    x: torch.Tensor,
    attention_mask: torch.Tensor | None,
    positions: torch.Tensor,
    prompt_length: int,
    cfg_scale: float,
) -> torch.Tensor:
    """LLaDA logits at ``positions``, with unsupervised cfg as one batched call (``sampling.md`` 1.4)."""
    if cfg_scale <= 0:
        return model.logits_at(x, attention_mask, positions)
    x_uncond = x.clone()
    x_uncond[:, :prompt_length] = model.config.mask_token_id  # prompt_index = the prompt columns
    mask2 = None if attention_mask is None else torch.cat([attention_mask, attention_mask], dim=0)
    both = model.logits_at(torch.cat([x, x_uncond], dim=0), mask2, positions)
    cond, uncond = torch.chunk(both, 2, dim=0)
    return uncond + (cfg_scale + 1) * (cond - uncond)


def _generate_llada(model: Any, plan: _Plan, **options: Any) -> tuple[torch.Tensor, int, int]:
    """:func:`_llada_steps` through :func:`_run_steps`."""
    return _run_steps(_llada_steps, model, plan, options)


def _generate_dream(model: Any, plan: _Plan, **options: Any) -> tuple[torch.Tensor, int, int]:
    """:func:`_dream_steps` through :func:`_run_steps`."""
    return _run_steps(_dream_steps, model, plan, options)


def _llada_steps(
    model: Any,
    plan: _Plan,
    *,
    temperature: float,
    remasking: str,
    cfg_scale: float,
    threshold: float | None,
    logits_eos_inf: bool,
    confidence_eos_eot_inf: bool,
    softmax_dtype: str,
    synced: bool = False,
) -> tuple[torch.Tensor, int, int, bool]:
    """LLaDA ``generate`` (``sampling.md`` 1.4), or Fast-dLLM's threshold loop (3.1).

    ``synced``: read the masked positions from the device every step (the reference's way; see
    :func:`_run_steps`). Returns (x, nfe, steps, whether the host schedule chose the positions).
    """
    config = model.config
    x = plan.x
    batch, length = x.shape
    mask_id = config.mask_token_id
    prompt_length, block_length = plan.prompt_length, plan.block_length
    columns = torch.arange(length, device=x.device)
    nfe = 0
    steps_run = 0
    # The reference draws T > 0 Gumbel noise of shape [B, L, V]; replaying it needs logits for every
    # position. Caches predict response rows only (``full_logits = False``): their noise is drawn for
    # the requested rows, the same distribution but not the reference's random stream.
    replay_noise = temperature > 0 and getattr(model, "full_logits", True)

    # One row asks for exactly its masked positions; with several rows, or when a committed proposal may
    # leave a mask behind (confidence -inf: EOS/EOT flags), the whole block is asked and masked.
    # A denoiser replaying CUDA graphs needs fixed shapes: it asks for the whole block (static_positions).
    exact = batch == 1 and not confidence_eos_eot_inf and not replay_noise and not _static_positions(model)
    exact = exact and not synced

    def step(x: torch.Tensor, block: _Block, masks: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One proposal over the canvas: (x0 [B, L], confidence [B, L]); confidence None when skipped.

        ``masks``: the block's masked positions per row before this step (known on the host).
        """
        nonlocal nfe
        eligible = (x == mask_id) & (columns < block.end) if synced else None
        if synced:  # the reference's reads: is any position left, and which
            masks = int(bool(eligible.any()))
        if masks == 0:
            # Nothing to predict (s_b > n after the block is done): skip the forward, keep the reference's draws.
            if replay_noise:
                torch.rand((batch, length, config.vocab_size), dtype=torch.float64, device=x.device)
            if remasking == "random":
                torch.rand((batch, length), device=x.device)
            return x, None
        if replay_noise:
            positions = columns
        else:
            positions = _masked_columns(eligible) if synced else block.positions(x, mask_id, masks, columns)
        logits = _llada_logits(model, x, plan.attention_mask, positions, prompt_length, cfg_scale)
        nfe += 1
        x0_c, confidence_c = llada_propose(
            logits,
            temperature,
            remasking,
            eos_token_id=config.eos_token_id,
            eot_token_id=config.eot_token_id,
            logits_eos_inf=logits_eos_inf,
            confidence_eos_eot_inf=confidence_eos_eot_inf,
            softmax_dtype=softmax_dtype,
        )
        if confidence_c is None:  # "random": one full-length float32 draw, after the noise
            confidence_c = torch.rand((batch, length), device=x.device)[:, positions]
        x0 = x.clone()
        x0[:, positions] = x0_c
        # Full-length rows, -inf off the eligible set, so topk sees the reference's [L] rows (1.7).
        confidence = torch.full((batch, length), -torch.inf, dtype=confidence_c.dtype, device=x.device)
        confidence[:, positions] = confidence_c
        if not block.exact:  # exact positions are the eligible set itself
            if eligible is None:
                eligible = (x == mask_id) & (columns < block.end)
            confidence = torch.where(eligible, confidence, -torch.inf)
        return x0, confidence

    for index in range(plan.gen_length // block_length):
        block_start = prompt_length + index * block_length
        block = _Block(block_start, block_start + block_length, exact)
        _announce(model, block.start, block.end)
        if threshold is None:
            # The block starts all masks (sampling.md 1.3): its schedule is known here, on the host.
            schedule = llada_transfer_schedule(block_length, plan.steps_per_block)
            masks = block_length
            for k in schedule:
                x0, confidence = step(x, block, masks)
                steps_run += 1
                if confidence is not None:
                    _commit_scheduled(x, x0, confidence, k)
                masks -= k
        else:
            # Threshold decoding commits a data-dependent count: one read per step (the masks left).
            remaining = batch * block_length
            while remaining > 0:
                x0, confidence = step(x, block, remaining)
                steps_run += 1
                eligible = (x == mask_id) & (columns < block.end)
                x, remaining = _threshold_commit(
                    x, x0, confidence, eligible, threshold=threshold, mask_id=mask_id, start=block.start,
                    end=block.end, remaining=remaining, k=remaining if exact else None, block=index,
                )  # fmt: skip
    return x, nfe, steps_run, threshold is None


@dataclass(frozen=True)
class _DreamSettings:
    """One Dream call's sampling settings as :func:`generate` validated them (``sampling.md`` 2.1, 2.4, 3.1).

    ``alg``: the canonical remasking name (:data:`DREAM_ALGS`); ``top_p`` / ``top_k``: the effective
    filters (the reference's hidden defaults applied; ``top_k`` None: no filter).
    """

    alg: str
    temperature: float
    top_p: float | None
    top_k: int | None
    alg_temp: float | None
    eps: float
    threshold: float | None

    def sample(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(confidence, tokens)`` of ``logits [N, V]``: ``sample_tokens`` with this call's filters and confidence."""
        return sample_tokens(
            logits, self.temperature, self.top_p, self.top_k,
            margin_confidence=self.alg == "topk_margin", neg_entropy=self.alg == "entropy",
        )  # fmt: skip

    def host_schedule(self, batch: int) -> bool:
        """Whether the sync-free steps (host schedule, positions of :class:`_Block`) serve this call: every
        selection that commits the scheduled count (not origin's random subset), where they draw the
        reference's random numbers (one row, or greedy)."""
        return (self.threshold is not None or self.alg != "origin") and (batch == 1 or self.temperature == 0)


def _dream_steps(
    model: Any, plan: _Plan, *, settings: _DreamSettings, synced: bool = False
) -> tuple[torch.Tensor, int, int, bool]:
    """Dream ``_sample`` (``sampling.md`` 2.4), per block when blocks are given (3.4), or threshold (3.1).

    ``synced``: the reference's loop with its device reads (see :func:`_run_steps`); otherwise the
    sync-free steps of :func:`_dream_host_steps` where they apply (:meth:`_DreamSettings.host_schedule`).

    Without ``block_length`` the plan holds one block spanning the generation region, which is the
    reference's unblocked sampler exactly.
    """
    config = model.config
    x = plan.x
    batch, length = x.shape
    mask_id = config.mask_token_id
    columns = torch.arange(length, device=x.device)
    block_length = plan.block_length
    steps_per_block = plan.steps_per_block
    timesteps = dream_timesteps(steps_per_block, settings.eps, device=x.device)
    threshold = settings.threshold
    nfe = 0
    steps_run = 0

    def masked_logits(x: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor | None:
        """Logits of the eligible positions, flattened row-major like the reference's ``logits[mask_index]``."""
        nonlocal nfe
        positions = _masked_columns(eligible)
        if positions.numel() == 0:
            return None
        logits = model.logits_at(x, plan.attention_mask, positions)  # [B, C, V], shift done by the model
        nfe += 1
        return logits[eligible[:, positions]]  # [N, V]

    def proposals(eligible: torch.Tensor, mask_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidates ``[B, L]`` (mask id off the eligible set) and confidence ``[B, L]`` (-inf off it)."""
        confidence, tokens = settings.sample(mask_logits)
        full_confidence = torch.full((batch, length), -torch.inf, dtype=mask_logits.dtype, device=x.device)
        full_confidence[eligible] = confidence
        candidates = torch.full_like(x, mask_id)
        candidates[eligible] = tokens
        return candidates, full_confidence

    if not synced and settings.host_schedule(batch):
        return _dream_host_steps(model, plan, settings, timesteps)
    for block in range(plan.gen_length // block_length):
        block_start = plan.prompt_length + block * block_length
        block_end = block_start + block_length
        in_block = (columns >= block_start) & (columns < block_end)
        if threshold is not None:
            remaining = int((x[:, block_start:block_end] == mask_id).sum())
            while remaining > 0:
                eligible = (x == mask_id) & in_block
                mask_logits = masked_logits(x, eligible)
                steps_run += 1
                candidates, full_confidence = proposals(eligible, mask_logits)
                x, remaining = _threshold_commit(
                    x, candidates, full_confidence, eligible, threshold=threshold, mask_id=mask_id, start=block_start,
                    end=block_end, remaining=remaining, k=None, block=block,
                )  # fmt: skip
            continue

        for i in range(steps_per_block):
            eligible = (x == mask_id) & in_block
            steps_run += 1
            mask_logits = masked_logits(x, eligible)
            if mask_logits is None:
                # No masks left (origin can finish early): the reference's draws here are all empty.
                continue
            t = timesteps[i]
            s = timesteps[i + 1]
            if settings.alg == "origin":
                p_transfer = 1 - s / t if i < steps_per_block - 1 else 1
                new = torch.full((mask_logits.shape[0],), mask_id, dtype=torch.long, device=x.device)
                chosen = torch.rand(mask_logits.shape[0], device=x.device) < p_transfer
                _, new[chosen] = settings.sample(mask_logits[chosen])
                x[eligible] = new
                continue
            candidates, full_confidence = proposals(eligible, mask_logits)
            k = dream_num_transfer_tokens(eligible, timesteps, i, steps_per_block)
            _commit_scheduled(x, candidates, full_confidence, k, settings.alg_temp)
    return x, nfe, steps_run, False


def _dream_host_steps(
    model: Any, plan: _Plan, settings: _DreamSettings, timesteps: torch.Tensor
) -> tuple[torch.Tensor, int, int, bool]:
    """Dream's steps with the commit counts known on the host: no device read in a step (``sampling.md`` 2.4, 3.1).

    Every block starts all masks and every step commits its scheduled count per row, so the schedule of
    :func:`dream_transfer_schedule` (with the sampler's own float32 ``timesteps``) is the reference's
    ``int(avg * (1 - s / t))`` step for step. Threshold decoding reads the masks left once per step.
    """
    x, mask_id, threshold = plan.x, model.config.mask_token_id, settings.threshold
    batch, length = x.shape
    columns = torch.arange(length, device=x.device)
    block_length = plan.block_length
    exact = batch == 1 and not _static_positions(model)
    schedule = None if threshold is not None else dream_transfer_schedule(
        block_length, plan.steps_per_block, timesteps=timesteps
    )  # fmt: skip
    nfe = 0
    steps_run = 0

    def propose(block: _Block, masks: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Candidates ``[B, L]`` (mask id off the eligible set), confidence ``[B, L]`` (-inf off it), eligible."""
        nonlocal nfe
        positions = block.positions(x, mask_id, masks, columns)
        logits = model.logits_at(x, plan.attention_mask, positions)  # [B, C, V], shift done by the model
        nfe += 1
        # Row-major over (row, position) like the reference's logits[mask_index]; with one row exactly its rows.
        confidence, tokens = settings.sample(logits.flatten(0, 1))
        full_confidence = torch.full((batch, length), -torch.inf, dtype=logits.dtype, device=x.device)
        full_confidence[:, positions] = confidence.view(batch, -1)
        candidates = torch.full_like(x, mask_id)
        candidates[:, positions] = tokens.view(batch, -1)
        eligible = None
        if not block.exact:
            eligible = (x == mask_id) & (columns >= block.start) & (columns < block.end)
            full_confidence = torch.where(eligible, full_confidence, -torch.inf)
            candidates = torch.where(eligible, candidates, mask_id)
        return candidates, full_confidence, eligible

    for index in range(plan.gen_length // block_length):
        start = plan.prompt_length + index * block_length
        block = _Block(start, start + block_length, exact)
        _announce(model, block.start, block.end)
        if threshold is not None:
            remaining = batch * block_length
            while remaining > 0:
                candidates, full_confidence, eligible = propose(block, remaining)
                steps_run += 1
                if eligible is None:
                    eligible = (x == mask_id) & (columns >= block.start) & (columns < block.end)
                x, remaining = _threshold_commit(
                    x, candidates, full_confidence, eligible, threshold=threshold, mask_id=mask_id,
                    start=block.start, end=block.end, remaining=remaining, k=remaining if exact else None, block=index,
                )  # fmt: skip
            continue
        masks = block_length
        for k in schedule:
            steps_run += 1
            if masks == 0:  # no masks left: the reference's draws here are all empty
                continue
            candidates, full_confidence, _ = propose(block, masks)
            _commit_scheduled(x, candidates, full_confidence, k, settings.alg_temp)
            masks -= k
    return x, nfe, steps_run, threshold is None


def bind_denoiser(model: Any, prompt_length: int, cache: Any, press: Press | None, *,
                  block_length: int | None) -> Any:
    """What one request's steps call ``logits_at`` on: the cache policy bound to the request, or, for a press
    without a cache, a cache that recomputes every row each pass but attends only to the kept prompt keys,
    or the bare model."""
    if cache is not None:
        return cache.bind(model, prompt_length, press=press, block_length=block_length)
    if press is not None:
        every_pass = DLLMCache(prompt_interval=1, response_interval=1, transfer_ratio=0.0)
        return every_pass.bind(model, prompt_length, press=press, kept_attention=True)
    return model


def generate(
    model: Any,
    prompt_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    gen_length: int,
    steps: int,
    block_length: int | None = None,
    temperature: float | None = 0.0,
    remasking: str = "low_confidence",
    cfg_scale: float = 0.0,
    threshold: float | None = None,
    logits_eos_inf: bool = False,
    confidence_eos_eot_inf: bool = False,
    softmax_dtype: str = "logits",
    top_p: float | None = None,
    top_k: int | None = None,
    alg_temp: float | None = None,
    eps: float = 1e-3,
    cache: DLLMCache | FastDLLMCache | None = None,
    press: Press | None = None,
) -> GenerationOutput:
    """Fill ``gen_length`` masks after the prompt with the family's reference sampler (``sampling.md`` 1-3).

    Args:
        model: has ``config`` (:class:`~maskkv.models.config.ModelConfig`) and
            ``logits_at(input_ids [B, L], attention_mask [B, L] | None, positions [C]) -> [B, C, V]``.
        prompt_ids: ``[B, P]`` (or ``[P]``) token ids, left-padded for batches; no mask tokens.
        attention_mask: ``[B, P]`` 0/1 left-padding mask, or None (all real). Extended with ones over
            the generation region. cfg with None is allowed (the reference would fail).
        gen_length: ``G``, tokens to generate.
        steps: total steps ``S`` (divisible by the number of blocks). With ``threshold`` only validated.
        block_length: ``Lb``; None = one block (LLaDA) / Dream's unblocked sampler.
        temperature: LLaDA Gumbel / Dream sampling temperature, ``>= 0`` (0 = greedy, the default for both
            families). ``None`` = the family reference's default: 0.0 for LLaDA, 1.0 for Dream (what
            ``diffusion_generate`` samples at when the caller passes no temperature).
        remasking: LLaDA ``"low_confidence"`` | ``"random"``; Dream ``"origin"`` | ``"maskgit_plus"`` |
            ``"topk_margin"`` | ``"entropy"`` (``"low_confidence"`` = ``"maskgit_plus"``).
        cfg_scale: LLaDA unsupervised classifier-free guidance, ``>= 0``.
        threshold: Fast-dLLM parallel decoding threshold in ``(0, 1]`` (3.1), or None.
        logits_eos_inf, confidence_eos_eot_inf: LLaDA EOS/EOT flags (1.6).
        softmax_dtype: LLaDA confidence softmax ``"logits"`` (HEAD) | ``"float64"`` (Fast-dLLM).
        top_p: Dream nucleus filter in ``(0, 1]``; ``None`` = the reference's effective 1.0 (no filter).
        top_k: Dream top-k filter before the softmax that gives tokens and confidences; ``None`` = the
            reference's effective 50 (``DreamGenerationConfig.from_model_config`` under transformers 4.46);
            ``0`` switches the filter off. LLaDA's reference has no such hidden defaults: leave all three None.
        alg_temp, eps: Dream selection temperature (``>= 0``) and final time in ``(0, 1)``.
        cache: a :class:`~maskkv.cache.DLLMCache` policy, a :class:`~maskkv.cache.FastDLLMCache`
            (Fast-dLLM's per-block prefix/dual cache, ``sampling.md`` 3.2-3.3), or None for a full
            forward every step.
        press: a :class:`~maskkv.presses.Press` evicting prompt K/V at the first pass. With
            ``cache=None`` every step still recomputes every row, but attends only to the kept
            prompt keys (evicted entries are absent from every later step).

    Returns:
        :class:`GenerationOutput` with the ``[B, P + G]`` canvas.
    """
    config = model.config
    family = config.family
    if family not in ("llada", "dream"):
        raise ValueError(f"model.config.family={family!r} is unknown; expected 'llada' or 'dream'")
    if temperature is None:
        temperature = REFERENCE_DEFAULTS[family]["temperature"]
    check_number("temperature", temperature, low=0.0, hint="0 is greedy, None the family reference's default")
    check_number("cfg_scale", cfg_scale, low=0.0, hint="0 disables cfg")
    check_optional("threshold", threshold, low=0.0, high=1.0, low_open=True, hint="None uses the step schedule")
    check_number("eps", eps, low=0.0, high=1.0, low_open=True, high_open=True)
    if softmax_dtype not in SOFTMAX_DTYPES:
        raise ValueError(f"softmax_dtype={softmax_dtype!r} is unknown; use one of {SOFTMAX_DTYPES}")

    if family == "llada":
        if remasking not in LLADA_REMASKING:
            raise ValueError(
                f"remasking={remasking!r} is not valid for a LLaDA model; use one of {LLADA_REMASKING}"
            )
        dream_only = {"top_p": top_p, "top_k": top_k, "alg_temp": alg_temp}
        given = [name for name, value in dream_only.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} apply to Dream models only; leave them None for LLaDA")
    else:
        alg = DREAM_ALIASES.get(remasking, remasking)
        if alg not in DREAM_ALGS:
            raise ValueError(
                f"remasking={remasking!r} is not valid for a Dream model; use one of {DREAM_ALGS} "
                "('low_confidence' is accepted as 'maskgit_plus')"
            )
        llada_only = {
            "cfg_scale": cfg_scale > 0,
            "logits_eos_inf": logits_eos_inf,
            "confidence_eos_eot_inf": confidence_eos_eot_inf,
            "softmax_dtype='float64'": softmax_dtype != "logits",
        }
        given = [name for name, used in llada_only.items() if used]
        if given:
            raise ValueError(f"{', '.join(given)} apply to LLaDA models only; Dream's reference has no such option")
        check_optional("top_p", top_p, low=0.0, high=1.0, low_open=True, hint="None is the reference's 1.0 (off)")
        check_optional("top_k", top_k, low=0, integer=True, hint="None is the reference's 50, 0 switches it off")
        check_optional("alg_temp", alg_temp, low=0.0)
        defaults = REFERENCE_DEFAULTS["dream"]
        top_p = defaults["top_p"] if top_p is None else top_p
        top_k = defaults["top_k"] if top_k is None else (top_k or None)  # 0: no top-k filter
        if threshold is not None and alg not in ("maskgit_plus", "topk_margin"):
            raise ValueError(
                f"threshold needs a probability-like confidence; remasking={remasking!r} has none "
                "(origin is random order, entropy is <= 0); use 'maskgit_plus' or 'topk_margin'"
            )
        if threshold is not None and alg_temp:
            raise ValueError(f"alg_temp={alg_temp} samples the commit order, threshold selects it; set one of them")

    with torch.inference_mode():
        plan = _prepare(model, prompt_ids, attention_mask, gen_length, steps, block_length)
        device = plan.x.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        denoiser = bind_denoiser(model, plan.prompt_length, cache, press, block_length=plan.block_length)
        if family == "llada":
            x, nfe, steps_run = _generate_llada(
                denoiser,
                plan,
                temperature=temperature,
                remasking=remasking,
                cfg_scale=cfg_scale,
                threshold=threshold,
                logits_eos_inf=logits_eos_inf,
                confidence_eos_eot_inf=confidence_eos_eot_inf,
                softmax_dtype=softmax_dtype,
            )
        else:
            settings = _DreamSettings(
                alg=alg, temperature=temperature, top_p=top_p, top_k=top_k, alg_temp=alg_temp, eps=eps,
                threshold=threshold,
            )  # fmt: skip
            x, nfe, steps_run = _generate_dream(denoiser, plan, settings=settings)
        seconds = _elapsed(start, device)
    # A clone made outside inference mode is an ordinary tensor: callers may edit it in place.
    cache_bytes = None if denoiser is model else denoiser.stats.as_dict()
    return GenerationOutput(
        sequences=x.clone(), nfe=nfe, seconds=seconds, steps=steps_run, cache_bytes=cache_bytes
    )
