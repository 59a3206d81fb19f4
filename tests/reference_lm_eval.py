"""Transcriptions of the dLLM repositories' lm-eval log-likelihood estimators, for tests only.

- ``llada_reference``: ML-GSAI/LLaDA ``eval_llada.py`` (``LLaDAEvalHarness._forward_process``, ``get_logits``,
  ``get_loglikelihood``), with the model call ``model(batch).logits``; ``llada_greedy_reference``: its
  ``suffix_greedy_prediction`` (the check behind ``is_check_greedy=True``, the class's default).
- ``dream_reference``: DreamLM/Dream ``eval/eval.py`` (``Dream._forward_process``, ``get_logits``,
  ``_eval_target_nll_mc`` with ``log_type="ftb"``), negated as its ``loglikelihood`` does.

The structure (full-sequence logits, the per-row loop, Python-float accumulation) follows the references on
purpose: ``maskkv.lmeval.likelihood`` is vectorised and must agree with these to the last draw.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _llada_get_logits(model, batch, prompt_index, mask_id, cfg):
    """``LLaDAEvalHarness.get_logits``: unsupervised cfg masks the prompt columns of a second copy."""
    if cfg > 0.0:
        un_batch = batch.clone()
        un_batch[prompt_index.unsqueeze(0).repeat(batch.shape[0], 1)] = mask_id
        batch = torch.cat([batch, un_batch])
    logits = model(batch).logits
    if cfg > 0.0:
        logits, un_logits = torch.chunk(logits, 2, dim=0)
        logits = un_logits + (cfg + 1) * (logits - un_logits)
    return logits


def llada_reference(model, prefix, target, *, mc_num, batch_size, mask_id, cfg=0.0):
    device = model.embed_tokens.weight.device
    seq = torch.concatenate([prefix, target])[None, :].repeat((batch_size, 1)).to(device)
    prompt_index = torch.arange(seq.shape[1], device=device) < len(prefix)

    def forward_process(batch):
        b, l = batch.shape
        target_len = (l - prompt_index.sum()).item()
        k = torch.randint(1, target_len + 1, (), device=batch.device)
        x = torch.round(torch.linspace(float(k), k + (b - 1) * (target_len / b), steps=b, device=batch.device)).long()
        x = ((x - 1) % target_len) + 1
        indices = torch.arange(target_len, device=batch.device).repeat(b, 1)
        is_mask = indices < x.unsqueeze(1)
        for i in range(b):
            is_mask[i] = is_mask[i][torch.randperm(target_len)]
        is_mask = torch.cat((torch.zeros(b, prompt_index.sum(), dtype=torch.bool, device=batch.device), is_mask), dim=1)
        return torch.where(is_mask, mask_id, batch), (x / target_len).unsqueeze(1).repeat(1, l)

    def get_logits(batch):
        return _llada_get_logits(model, batch, prompt_index, mask_id, cfg)

    loss_acc = []
    with torch.no_grad():
        for _ in range(mc_num // batch_size):
            perturbed, p_mask = forward_process(seq)
            mask_indices = perturbed == mask_id
            logits = get_logits(perturbed)
            loss = F.cross_entropy(logits[mask_indices], seq[mask_indices], reduction="none") / p_mask[mask_indices]
            loss_acc.append((loss.sum() / batch_size).item())
    return -sum(loss_acc) / len(loss_acc)


def llada_greedy_reference(model, prefix, target, *, mask_id, cfg=0.0):
    device = model.embed_tokens.weight.device
    seq = torch.full((1, len(prefix) + len(target)), mask_id, device=device)
    prompt_index = torch.arange(seq.shape[1], device=device) < len(prefix)
    prefix, target = prefix.to(device), target.to(device)
    seq[0, :len(prefix)] = prefix

    def get_logits(batch):
        return _llada_get_logits(model, batch, prompt_index, mask_id, cfg)

    with torch.no_grad():
        for _ in range(len(target)):
            mask_index = seq == mask_id
            logits = get_logits(seq)[mask_index]
            x0 = torch.argmax(logits, dim=-1)
            p = torch.softmax(logits.to(torch.float32), dim=-1)
            confidence = torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)).squeeze(dim=-1)
            _, index = torch.sort(confidence, descending=True)
            x0[index[1:]] = mask_id
            seq[mask_index] = x0.clone()
    return bool(torch.all(target == seq[0, len(prefix):])), seq[0, len(prefix):].clone()


def dream_reference(model, prefix, target, *, mc_num, batch_size, mask_id, sampling_eps=1e-3):
    device = model.embed_tokens.weight.device
    seq = torch.concatenate([prefix, target])[None, :].repeat((batch_size, 1)).to(device)

    def forward_process(batch):
        b, l = batch.shape
        u0 = torch.rand(1, device=batch.device, dtype=torch.float32)
        indices = torch.arange(b, device=batch.device).float()
        t = (u0 + indices / b) % 1
        p_mask = (1 - sampling_eps) * t + sampling_eps
        p_mask = p_mask[:, None].repeat(1, l)
        mask_indices = torch.rand((b, l), device=batch.device) < p_mask
        mask_indices[:, 0] = False
        mask_indices[:, -1] = False
        return torch.where(mask_indices, mask_id, batch), p_mask

    def get_logits(batch):
        logits = model(batch).logits
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)

    loss_acc = []
    with torch.no_grad():
        for _ in range(max(mc_num // batch_size, 1)):
            perturbed = seq.clone()
            perturbed_, p_mask = forward_process(seq)
            perturbed[:, -len(target):] = perturbed_[:, -len(target):]
            mask_indices = perturbed == mask_id
            logits = get_logits(perturbed)
            loss = F.cross_entropy(logits[mask_indices], seq[mask_indices], reduction="none") / p_mask[mask_indices]
            loss_acc.append((loss.sum() / batch_size).item())
    return sum(loss_acc) / len(loss_acc) * -1.0
