"""A literal transcription of dLLM-Cache's per-layer branches (``dllm_cache.md`` 2-5), for tests only.

Written against the spec, independently of ``maskkv.cache``: full-length tensors, the four
branches A-D per layer, the layer-0 override (layer 0 always refreshes everything), V-verify with
stale K and fresh V, prompt features stored and re-added. Keys are kept pre-RoPE and re-rotated at
their index, like the original hooks. LLaDA only (no logits shift), batch without padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maskkv.models.rope import apply_rotary


class ReferenceDLLMCache:
    def __init__(self, model, prompt_length: int, prompt_interval: int, response_interval: int, ratio: float):
        self.model, self.p = model, prompt_length
        self.tp, self.tr, self.ratio = prompt_interval, response_interval, ratio
        self.step = 0
        self.store: list[dict[str, torch.Tensor]] = []

    def _rot(self, t: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        cos, sin = self.model.rotary(positions[None])
        return apply_rotary(t, cos, sin, in_fp32=self.model.config.rope_in_fp32)

    def _heads(self, t: torch.Tensor, n: int) -> torch.Tensor:
        b, length, _ = t.shape
        return t.view(b, length, n, -1).transpose(1, 2)

    def _attend(self, layer, q_rows, q_pos, k_all, v_all) -> torch.Tensor:
        cfg = self.model.config
        q = self._rot(self._heads(layer.q_proj(q_rows), cfg.num_heads), q_pos)
        k = self._rot(self._heads(k_all, cfg.num_kv_heads), torch.arange(k_all.shape[1]))
        v = self._heads(v_all, cfg.num_kv_heads)
        return layer.attend(q, k, v, None)

    @torch.inference_mode()
    def logits(self, x_ids: torch.Tensor) -> torch.Tensor:
        self.step += 1
        s, p = self.step, self.p
        g = x_ids.shape[1] - p
        rp_global = (s - 1) % self.tp == 0
        rg_global = (s - 1) % self.tr == 0
        transfer = 0 < self.ratio <= 1
        x = self.model.embed_tokens(x_ids)
        all_pos = torch.arange(p + g)
        for i, layer in enumerate(self.model.layers):
            rp, rg = (True, True) if i == 0 else (rp_global, rg_global)
            if len(self.store) <= i:
                self.store.append({})
            c = self.store[i]
            h = layer.attn_norm(x)
            if rp and rg:  # A
                k, v = layer.k_proj(h), layer.v_proj(h)
                c.update(pk=k[:, :p].clone(), pv=v[:, :p].clone(), gk=k[:, p:].clone(), gv=v[:, p:].clone())
                attn = self._attend(layer, h, all_pos, k, v)
                c.update(pattn=attn[:, :p].clone(), gattn=attn[:, p:].clone())
                mid = x + attn
                mlp = layer.mlp(mid)
                c.update(pmlp=mlp[:, :p].clone(), gmlp=mlp[:, p:].clone())
                x = mid + mlp
                continue
            if rg:  # B: response refresh
                hg = h[:, p:]
                c.update(gk=layer.k_proj(hg), gv=layer.v_proj(hg))
                k_all, v_all = torch.cat([c["pk"], c["gk"]], 1), torch.cat([c["pv"], c["gv"]], 1)
                c["gattn"] = self._attend(layer, hg, all_pos[p:], k_all, v_all)
                mid = x + torch.cat([c["pattn"], c["gattn"]], 1)
                c["gmlp"] = layer.mlp(mid[:, p:])
                x = mid + torch.cat([c["pmlp"], c["gmlp"]], 1)
                continue
            idx = None
            if transfer:  # V-verify on the response rows
                hg = h[:, p:]
                v_new = layer.v_proj(hg)
                sim = F.cosine_similarity(v_new, c["gv"], dim=-1)
                idx = sim.topk(int(g * self.ratio), dim=1, largest=False).indices  # [B, R]
                sel = hg.gather(1, idx[..., None].expand(-1, -1, hg.shape[-1]))
                c["gv"] = v_new
                gk = c["gk"].clone()
                gk.scatter_(1, idx[..., None].expand(-1, -1, gk.shape[-1]), layer.k_proj(sel))
                c["gk"] = gk
            if rp:  # C: prompt refresh
                hp = h[:, :p]
                c.update(pk=layer.k_proj(hp), pv=layer.v_proj(hp))
            k_all, v_all = torch.cat([c["pk"], c["gk"]], 1), torch.cat([c["pv"], c["gv"]], 1)
            rows = []
            if rp:
                rows.append((h[:, :p], all_pos[:p]))
            if idx is not None:  # batch 1: one index list
                rows.append((sel, p + idx[0]))
            if rows:
                q_rows = torch.cat([r[0] for r in rows], 1)
                q_pos = torch.cat([r[1] for r in rows])
                attn = self._attend(layer, q_rows, q_pos, k_all, v_all)
                if rp:
                    c["pattn"] = attn[:, :p]
                if idx is not None:
                    gattn = c["gattn"].clone()
                    gattn.scatter_(1, idx[..., None].expand(-1, -1, gattn.shape[-1]), attn[:, -idx.shape[1]:])
                    c["gattn"] = gattn
            mid = x + torch.cat([c["pattn"], c["gattn"]], 1)
            if rp:
                c["pmlp"] = layer.mlp(mid[:, :p])
            if idx is not None:
                msel = mid[:, p:].gather(1, idx[..., None].expand(-1, -1, mid.shape[-1]))
                gmlp = c["gmlp"].clone()
                gmlp.scatter_(1, idx[..., None].expand(-1, -1, gmlp.shape[-1]), layer.mlp(msel))
                c["gmlp"] = gmlp
            x = mid + torch.cat([c["pmlp"], c["gmlp"]], 1)
        return self.model.project(x)
