"""Monte Carlo log-likelihood of a continuation under a masked diffusion LM (lm-eval's ``loglikelihood``).

A masked diffusion model has no left-to-right factorisation, so ``log p(continuation | context)`` is
estimated from its ELBO: mask part of the continuation, score the masked tokens, weight by the inverse mask
ratio and average over noisy copies. Each family's reference evaluator draws the noise differently, and both
draws are reproduced here (the same RNG calls, shapes, devices and order), so with the same seed and logits the
estimate equals the reference's:

- LLaDA (``eval_llada.py``, ``get_loglikelihood``): per round one ``randint`` start ``k`` in ``1..T``, mask counts
  ``round(linspace(k, k + (b - 1) T / b, b))`` wrapped into ``1..T`` (spread evenly over the ``b`` copies), then per
  copy a CPU ``randperm(T)`` choosing which continuation tokens are masked; weight ``T / count``.
- Dream (``eval/eval.py``, ``nll_type="mc"``, ``log_type="ftb"``): per round ``u0 ~ U(0, 1)``,
  ``t_i = (u0 + i / b) mod 1``, mask ratio ``p_i = (1 - eps) t_i + eps``, each token masked independently with
  ``p_i`` (a ``[b, L]`` draw over the whole sequence, of which only the continuation is used; the first and last
  position never), weight ``1 / p_i``; logits shifted by one (the model's ``logits_at`` does that).

Both return ``-mean_rounds(sum_masked(CE / p) / b)``. Logits are computed only for the continuation columns.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def _continuation_logits(model: Any, noisy: torch.Tensor, prefix_length: int, mask_id: int,
                         cfg_scale: float) -> torch.Tensor:
    """Logits ``[b, T, V]`` of the continuation columns; LLaDA's unsupervised cfg masks the prefix columns."""
    positions = torch.arange(prefix_length, noisy.shape[1], device=noisy.device)
    if cfg_scale <= 0:
        return model.logits_at(noisy, None, positions)
    uncond = noisy.clone()
    uncond[:, :prefix_length] = mask_id
    cond, un = torch.chunk(model.logits_at(torch.cat([noisy, uncond]), None, positions), 2, dim=0)
    return un + (cfg_scale + 1) * (cond - un)


def _round_loss(model: Any, seq: torch.Tensor, masked: torch.Tensor, p_mask: torch.Tensor, prefix_length: int,
                mask_id: int, cfg_scale: float) -> torch.Tensor:
    """``sum(CE(masked tokens) / p) / b`` for one round; ``masked`` and ``p_mask`` are ``[b, T]``."""
    batch = seq.shape[0]
    noisy = seq.clone()
    noisy[:, prefix_length:] = torch.where(masked, mask_id, seq[:, prefix_length:])
    logits = _continuation_logits(model, noisy, prefix_length, mask_id, cfg_scale)
    target = seq[:, prefix_length:]
    loss = F.cross_entropy(logits[masked], target[masked], reduction="none") / p_mask[masked]
    return loss.sum() / batch


def _check(prefix: torch.Tensor, target: torch.Tensor, mc_num: int, batch_size: int) -> None:
    if prefix.dim() != 1 or target.dim() != 1:
        raise ValueError(f"prefix and target must be 1-D token id tensors, got {tuple(prefix.shape)}, "
                         f"{tuple(target.shape)}")
    if target.numel() == 0:
        raise ValueError("the continuation is empty; its log-likelihood is 0 and needs no estimate")
    if mc_num < 1 or batch_size < 1:
        raise ValueError(f"mc_num={mc_num} and batch_size={batch_size} must be >= 1")


@torch.no_grad()
def llada_loglikelihood(model: Any, prefix: torch.Tensor, target: torch.Tensor, *, mc_num: int = 128,
                        batch_size: int = 32, cfg_scale: float = 0.0) -> float:
    """LLaDA's Monte Carlo estimate of ``log p(target | prefix)`` (``mc_num / batch_size`` rounds of ``batch_size``).

    ``mc_num`` must be a multiple of ``batch_size`` (the reference asserts it).
    """
    _check(prefix, target, mc_num, batch_size)
    if mc_num % batch_size:
        raise ValueError(f"mc_num={mc_num} must be a multiple of the Monte Carlo batch size {batch_size} (LLaDA)")
    device = model.embed_tokens.weight.device
    mask_id = model.config.mask_token_id
    length = target.numel()
    seq = torch.cat([prefix, target]).to(device).unsqueeze(0).repeat(batch_size, 1)
    losses = []
    for _ in range(mc_num // batch_size):
        k = torch.randint(1, length + 1, (), device=device)
        counts = torch.round(torch.linspace(float(k), k + (batch_size - 1) * (length / batch_size),
                                            steps=batch_size, device=device)).long()
        counts = (counts - 1) % length + 1
        # one CPU permutation per copy, drawn in the reference's order
        order = torch.stack([torch.randperm(length) for _ in range(batch_size)]).to(device)
        masked = order < counts.unsqueeze(1)  # copy i masks counts[i] continuation tokens
        p_mask = (counts / length).unsqueeze(1).expand(batch_size, length)
        losses.append(_round_loss(model, seq, masked, p_mask, prefix.numel(), mask_id, cfg_scale))
    values = torch.stack(losses).tolist()
    return -sum(values) / len(values)


@torch.no_grad()
def dream_loglikelihood(model: Any, prefix: torch.Tensor, target: torch.Tensor, *, mc_num: int = 128,
                        batch_size: int = 32, eps: float = 1e-3) -> float:
    """Dream's Monte Carlo estimate of ``log p(target | prefix)`` (``max(mc_num // batch_size, 1)`` rounds).

    ``target`` already ends with the EOS token Dream appends to the continuation.
    """
    _check(prefix, target, mc_num, batch_size)
    device = model.embed_tokens.weight.device
    mask_id = model.config.mask_token_id
    prefix_length, total = prefix.numel(), prefix.numel() + target.numel()
    seq = torch.cat([prefix, target]).to(device).unsqueeze(0).repeat(batch_size, 1)
    losses = []
    for _ in range(max(mc_num // batch_size, 1)):
        u0 = torch.rand(1, device=device, dtype=torch.float32)
        t = (u0 + torch.arange(batch_size, device=device).float() / batch_size) % 1
        p_mask = ((1 - eps) * t + eps).unsqueeze(1).expand(batch_size, total)
        masked = torch.rand((batch_size, total), device=device) < p_mask
        masked[:, 0] = False
        masked[:, -1] = False
        losses.append(_round_loss(model, seq, masked[:, prefix_length:], p_mask[:, prefix_length:], prefix_length,
                                  mask_id, 0.0))
    values = torch.stack(losses).tolist()
    return -sum(values) / len(values)


@torch.no_grad()
def llada_is_greedy(model: Any, prefix: torch.Tensor, target: torch.Tensor, *, cfg_scale: float = 0.0) -> bool:
    """LLaDA's ``suffix_greedy_prediction``: is ``target`` what greedy decoding of its masked span gives?

    From ``[prefix | MASK x T]``, each of ``T`` forwards unmasks one continuation position: the masked position
    whose argmax token has the highest fp32 softmax probability gets that token. The answer is True when the
    decoded span equals ``target`` (lm-eval's ``is_greedy``, e.g. LAMBADA's accuracy).
    """
    _check(prefix, target, 1, 1)
    device = model.embed_tokens.weight.device
    mask_id = model.config.mask_token_id
    start = prefix.numel()
    seq = torch.full((1, start + target.numel()), mask_id, dtype=torch.long, device=device)
    seq[0, :start] = prefix.to(device)
    for _ in range(target.numel()):
        masked = (seq[0, start:] == mask_id).nonzero().squeeze(1)  # continuation columns still masked
        logits = _continuation_logits(model, seq, start, mask_id, cfg_scale)[0, masked]
        tokens = logits.argmax(dim=-1)
        confidence = torch.softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        best = torch.sort(confidence, descending=True).indices[0]
        seq[0, start + masked[best]] = tokens[best]
    return bool(torch.equal(seq[0, start:], target.to(device)))
