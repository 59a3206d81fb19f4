"""Token proposals and their confidences (``sampling.md`` 1.5, 1.6, 2.5).

LLaDA proposes ``argmax`` of Gumbel-perturbed logits and scores it with the softmax of the raw
logits (:func:`llada_propose`); Dream samples from a tempered, top-p/top-k filtered distribution and
scores with probability, margin or negative entropy (:func:`sample_tokens`). Both follow the
reference op for op so that, seeded alike, they draw the same random numbers.
"""

from __future__ import annotations

import torch
import torch.distributions as dists
import torch.nn.functional as F

LLADA_REMASKING = ("low_confidence", "random")
SOFTMAX_DTYPES = ("logits", "float64")
ARGMAX_CHUNK = 1024  # vocabulary columns per chunk of :func:`first_argmax`


def first_argmax(x: torch.Tensor) -> torch.Tensor:
    """``torch.argmax(x, dim=-1)`` (index of the first maximum), fast for wide rows on CPU.

    On CPU, ``argmax`` over a 126k vocabulary runs about 20x slower than ``amax`` (1.7 vs 0.09 ms for
    16 rows, one thread), which made it the largest item of the sampler's per-step time. Here the
    maximum comes from ``amax`` over chunks of :data:`ARGMAX_CHUNK` columns, then ``argmax`` runs only
    inside the first chunk that holds it: the same index as ``torch.argmax``, ties and ``-inf``
    included, and a NaN wins as in ``torch.argmax`` (nothing is read on the host). Other devices and narrow
    rows use ``torch.argmax``.
    """
    width = x.shape[-1]
    chunks = width // ARGMAX_CHUNK
    if x.device.type != "cpu" or chunks < 2 or not x.is_floating_point() or x.stride(-1) != 1:
        return torch.argmax(x, dim=-1)
    body = x[..., : chunks * ARGMAX_CHUNK].unflatten(-1, (chunks, ARGMAX_CHUNK))
    chunk_max = body.amax(dim=-1)  # [..., chunks]; NaN where a chunk holds one
    best = chunk_max.amax(dim=-1, keepdim=True)
    tail = x[..., chunks * ARGMAX_CHUNK :]
    if tail.shape[-1]:
        best = torch.maximum(best, tail.amax(dim=-1, keepdim=True))  # NaN if any NaN in the row
    # argmax's NaN semantics (the first NaN wins) without reading the device: a row with a NaN picks its
    # first NaN chunk, any other row its first chunk holding the maximum.
    holds = (chunk_max == best) | torch.isnan(chunk_max)
    in_body = holds.any(dim=-1)  # else the first maximum (or NaN) is in the tail
    chunk = torch.argmax(holds.to(torch.uint8), dim=-1)  # the first such chunk
    index = chunk[..., None, None].expand(*chunk.shape, 1, ARGMAX_CHUNK)
    inside = torch.argmax(body.gather(-2, index).squeeze(-2), dim=-1)
    found = chunk * ARGMAX_CHUNK + inside
    if tail.shape[-1]:
        found = torch.where(in_body, found, chunks * ARGMAX_CHUNK + torch.argmax(tail, dim=-1))
    return found


def add_gumbel_noise(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """LLaDA's Gumbel-max scores (``sampling.md`` 1.5).

    ``temperature == 0`` returns ``logits`` itself (same object, no copy, no RNG use): in-place edits
    of the result then also edit the logits (the aliasing quirk of 1.6). Otherwise casts to float64,
    draws one ``rand_like`` of the full shape and returns ``exp(l) / (-log u) ** T``, whose argmax is
    an exact sample from ``softmax(l / T)``.
    """
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.rand_like(logits, dtype=torch.float64)
    gumbel_noise = (-torch.log(noise)) ** temperature
    return logits.exp() / gumbel_noise


def llada_propose(
    logits: torch.Tensor,
    temperature: float,
    remasking: str,
    *,
    eos_token_id: int,
    eot_token_id: int | None,
    logits_eos_inf: bool = False,
    confidence_eos_eot_inf: bool = False,
    softmax_dtype: str = "logits",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One LLaDA proposal step on ``[B, C, V]`` logits (``sampling.md`` 1.4-1.6).

    Order, as in the reference: optional EOS logit to ``-inf`` (in place); Gumbel scores (RNG when
    ``T > 0``); ``x0 = argmax``; optional EOS ``-inf`` in the scores then EOT ``-inf`` in the raw logits
    (at ``T == 0`` both land in the raw logits); confidence = softmax of the raw logits gathered at
    ``x0`` for ``"low_confidence"``.

    Args:
        logits: ``[B, C, V]`` logits; edited in place by the EOS flags.
        softmax_dtype: ``"logits"`` (LLaDA HEAD: softmax in the logits dtype) or ``"float64"``
            (original LLaDA and Fast-dLLM).

    Returns:
        ``(x0 [B, C] int64, confidence [B, C] or None)``; ``None`` for ``"random"``, whose uniform draw
        the caller makes (it is full length ``[B, L]`` and comes after the noise draw).
    """
    if remasking not in LLADA_REMASKING:
        raise ValueError(f"remasking={remasking!r} is not a LLaDA remasking; use one of {LLADA_REMASKING}")
    if softmax_dtype not in SOFTMAX_DTYPES:
        raise ValueError(f"softmax_dtype={softmax_dtype!r} is unknown; use one of {SOFTMAX_DTYPES}")
    if confidence_eos_eot_inf and eot_token_id is None:
        raise ValueError(
            "confidence_eos_eot_inf=True needs the EOT id, but model.config.eot_token_id is None; "
            "set it in the ModelConfig or turn the flag off"
        )
    if logits_eos_inf:
        logits[:, :, eos_token_id] = -torch.inf
    scored = add_gumbel_noise(logits, temperature)
    x0 = first_argmax(scored)  # [B, C]; first maximum wins (= torch.argmax)
    if confidence_eos_eot_inf:
        # The reference's chained assignment: EOS into the (maybe aliased) scores, then EOT into the logits.
        scored[:, :, eos_token_id] = -torch.inf
        logits[:, :, eot_token_id] = -torch.inf
    if remasking == "random":
        return x0, None
    source = logits if softmax_dtype == "logits" else logits.to(torch.float64)
    p = F.softmax(source, dim=-1)
    confidence = torch.gather(p, dim=-1, index=x0.unsqueeze(-1)).squeeze(-1)  # [B, C]
    return x0, confidence


def top_p_logits(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter of Dream's ``sample_tokens`` (``sampling.md`` 2.5 step 2).

    Drops tokens whose cumulative probability (descending order) exceeds ``top_p``, shifted right by
    one so the first token crossing it (and always the top token) is kept. Dropped logits get the
    dtype's finite minimum, not ``-inf``.
    """
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    remove_sorted = cumulative > top_p
    remove_sorted[..., 1:] = remove_sorted[..., :-1].clone()
    remove_sorted[..., 0] = False
    remove = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, sorted_indices, remove_sorted)
    return logits.masked_fill(remove, torch.finfo(logits.dtype).min)


def top_k_logits(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Top-k filter of Dream's ``sample_tokens`` (``sampling.md`` 2.5 step 3).

    Drops logits strictly below the k-th largest (ties at the k-th are kept), filling the dtype's
    finite minimum. ``top_k`` is clipped to the vocabulary size.
    """
    top_k = min(top_k, logits.size(-1))
    kth = torch.topk(logits, top_k)[0][..., -1, None]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def sample_tokens(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    margin_confidence: bool = False,
    neg_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dream's ``sample_tokens`` (``sampling.md`` 2.5), exact order.

    Temperature, top-p, top-k, softmax in the logits dtype; at ``T > 0`` a
    ``torch.distributions.Categorical`` sample (falls back to the argmax on any error, like the
    reference), else the argmax. The confidence is the chosen token's probability, or top1 - top2
    (``margin_confidence``), or ``sum p log(p + 1e-10)`` (``neg_entropy``, larger = surer).

    Args:
        logits: ``[N, V]`` logits of the masked positions.

    Returns:
        ``(confidence [N], tokens [N] int64)``.
    """
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = top_p_logits(logits, top_p)
    if top_k is not None:
        logits = top_k_logits(logits, top_k)
    probs = torch.softmax(logits, dim=-1)

    if temperature > 0:
        try:
            tokens = dists.Categorical(probs=probs).sample()
            confidence = torch.gather(probs, -1, tokens.unsqueeze(-1)).squeeze(-1)
        except Exception:  # the reference's fallback (e.g. NaN probabilities)
            confidence, tokens = probs.max(dim=-1)
    else:  # probs.max(dim=-1): the first maximum and its value
        tokens = first_argmax(probs)
        confidence = torch.gather(probs, -1, tokens.unsqueeze(-1)).squeeze(-1)

    if margin_confidence:
        sorted_probs, _ = torch.sort(probs, dim=-1, descending=True)
        confidence = sorted_probs[:, 0] - sorted_probs[:, 1]
    if neg_entropy:
        confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return confidence, tokens
