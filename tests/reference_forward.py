"""Independent transcriptions of the reference LLaDA and Dream forward passes, for tests only.

Written straight from ``models.md`` 2.4-2.5 and 3.3-3.5 against the *published* state-dict names,
with explicit softmax attention (no SDPA, no maskkv code), so a wrong key map, cast, rotation,
mask or grouping in ``maskkv.models`` shows up as a logits mismatch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(folder / shard))
        return state
    return load_file(folder / "model.safetensors")


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.to(torch.float32)
    var = x32.pow(2).mean(-1, keepdim=True)
    return w * (x32 * torch.rsqrt(var + eps)).to(x.dtype)


def _rotate_half(t: torch.Tensor) -> torch.Tensor:
    h = t.shape[-1] // 2
    return torch.cat((-t[..., h:], t[..., :h]), dim=-1)


def _attention(q, k, v, allowed: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """Explicit softmax attention; fully masked rows give exactly 0 (PyTorch's safe softmax)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)
    return probs @ v


def llada_reference_logits(folder: Path, input_ids: torch.Tensor, attention_mask=None) -> torch.Tensor:
    cfg = json.loads((folder / "config.json").read_text())
    sd = {k: v.float() for k, v in read_state_dict(folder).items()}
    d, nh = cfg["d_model"], cfg["n_heads"]
    nkv = cfg.get("n_kv_heads") or nh
    hd = d // nh
    eps = cfg["rms_norm_eps"]
    b, t = input_ids.shape
    x = sd["model.transformer.wte.weight"][input_ids]
    # RoPE table: rows 0..T-1, angles repeated twice, fp32.
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    seq = torch.arange(t, dtype=torch.float32)
    freqs = torch.einsum("i,j->ij", seq, inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[None, None], emb.sin()[None, None]
    bias = None
    if attention_mask is not None and not bool(attention_mask.all()):
        key_bias = torch.where(attention_mask.bool(), 0.0, torch.finfo(torch.float32).min)
        bias = torch.zeros(1, 1, t, t) + key_bias[:, None, None, :]  # [B,1,T,T] like the reference
    for i in range(cfg["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        h = _rms(x, sd[p + "attn_norm.weight"], eps)
        q, k, v = (h @ sd[p + f"{n}_proj.weight"].T for n in "qkv")
        if cfg["include_bias"] or cfg["include_qkv_bias"]:  # the reference: bias=include_bias | include_qkv_bias
            q, k, v = q + sd[p + "q_proj.bias"], k + sd[p + "k_proj.bias"], v + sd[p + "v_proj.bias"]
        q = q.view(b, t, nh, hd).transpose(1, 2)
        k = k.view(b, t, nkv, hd).transpose(1, 2)
        v = v.view(b, t, nkv, hd).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k = k.repeat_interleave(nh // nkv, dim=1)
        v = v.repeat_interleave(nh // nkv, dim=1)
        a = _attention(q, k, v, None, bias).transpose(1, 2).reshape(b, t, d)
        x = x + a @ sd[p + "attn_out.weight"].T
        h2 = _rms(x, sd[p + "ff_norm.weight"], eps)
        g = h2 @ sd[p + "ff_proj.weight"].T
        u = h2 @ sd[p + "up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ sd[p + "ff_out.weight"].T
    x = _rms(x, sd["model.transformer.ln_f.weight"], eps)
    head = sd["model.transformer.wte.weight"] if cfg["weight_tying"] else sd["model.transformer.ff_out.weight"]
    return x @ head.T


def dream_reference_logits(folder: Path, input_ids: torch.Tensor, attention_mask=None) -> torch.Tensor:
    cfg = json.loads((folder / "config.json").read_text())
    sd = {k: v.float() for k, v in read_state_dict(folder).items()}
    d, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = d // nh
    eps = cfg["rms_norm_eps"]
    b, t = input_ids.shape
    allowed = None
    if attention_mask is not None and not bool(attention_mask.all()):
        valid = attention_mask.bool()
        tok_idx = (valid.long().cumsum(-1) - 1).masked_fill(~valid, 1)
        allowed = (valid[:, :, None] & valid[:, None, :])[:, None]  # [B,1,T,T]
    else:
        tok_idx = torch.arange(t)[None].expand(b, t)
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    freqs = (inv[None, :, None] @ tok_idx[:, None, :].float()).transpose(1, 2)  # [B,T,hd/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]
    x = sd["model.embed_tokens.weight"][input_ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms(x, sd[p + "input_layernorm.weight"], eps)
        q = (h @ sd[p + "self_attn.q_proj.weight"].T + sd[p + "self_attn.q_proj.bias"]).view(b, t, nh, hd).transpose(1, 2)
        k = (h @ sd[p + "self_attn.k_proj.weight"].T + sd[p + "self_attn.k_proj.bias"]).view(b, t, nkv, hd).transpose(1, 2)
        v = (h @ sd[p + "self_attn.v_proj.weight"].T + sd[p + "self_attn.v_proj.bias"]).view(b, t, nkv, hd).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        # expand-and-reshape grouping: KV head j serves query heads j*r .. j*r + r - 1
        k = k[:, :, None].expand(b, nkv, nh // nkv, t, hd).reshape(b, nh, t, hd)
        v = v[:, :, None].expand(b, nkv, nh // nkv, t, hd).reshape(b, nh, t, hd)
        a = _attention(q, k, v, allowed, None).transpose(1, 2).reshape(b, t, d)
        x = x + a @ sd[p + "self_attn.o_proj.weight"].T
        h2 = _rms(x, sd[p + "post_attention_layernorm.weight"], eps)
        g = h2 @ sd[p + "mlp.gate_proj.weight"].T
        u = h2 @ sd[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ sd[p + "mlp.down_proj.weight"].T
    x = _rms(x, sd["model.norm.weight"], eps)
    head = sd["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else sd["lm_head.weight"]
    return x @ head.T
