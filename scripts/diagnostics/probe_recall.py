"""Probe: can the tiny LLaDA architecture learn a bare key -> value lookup, and after how many steps?

A diagnostic for the tiny model's multi-key plateau (``src/maskkv/assets/tiny-llada/MODEL_CARD.md``, fifth-session
probes). Each sample is a bare associative-recall sequence in the shipped tokenizer's tokens,

    k1 [gap] v1  k2 [gap] v2  ...  kn [gap] vn   k_a [gap] [MASK]  (k_b [gap] [MASK] ...)

with keys from the needle keys and values from the two-digit numbers; the loss is the cross-entropy of the masked
values only, at constant learning rate after a 50-step warm-up. The model is built exactly as ``maskkv train-tiny``
builds it (``maskkv.train.trainer.build_model``). Prints a moving accuracy every 100 steps; chance is 1/pairs.

    python scripts/diagnostics/probe_recall.py --steps 4000 --hidden 128                  # jumps off chance at ~1800 steps
    python scripts/diagnostics/probe_recall.py --steps 6000 --gaps 0:4000,1:500,2:500,3:1000 --lr 3e-3
    python scripts/diagnostics/probe_recall.py --steps 3000 --hidden 128 --queries all     # every key queried: stays at chance
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from maskkv.models.llada import config_from_dict
from maskkv.models.tiny import TinyTokenizerInfo
from maskkv.train.data import KEYS
from maskkv.train.trainer import TrainConfig, build_model, llada_config_dict

ASSET = Path(__file__).resolve().parents[2] / "src" / "maskkv" / "assets" / "tiny-llada"
GAP_WORDS = (" is", ":", " the")  # filler tokens between a key and its value, as many as the gap asks for
PAD_WORD = " the"  # the filler token of --pad


def parse_gaps(text: str) -> list[tuple[int, int]]:
    """``"3"`` -> gap 3 throughout; ``"0:4000,3:1000"`` -> gap 0 for 4000 steps, then gap 3."""
    if ":" not in text:
        return [(int(text), 1 << 62)]
    return [(int(g), int(n)) for g, n in (part.split(":") for part in text.split(","))]


def gap_at(schedule: list[tuple[int, int]], step: int) -> int:
    end = 0
    for gap, steps in schedule:
        end += steps
        if step <= end:
            return gap
    return schedule[-1][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--hidden", type=int, default=64, help="d_model (the MLP is twice as wide)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rope-theta", type=float, default=10000.0)
    parser.add_argument("--qkv-bias", action="store_true")
    parser.add_argument("--gaps", default="0", help="tokens between key and value: '3' or a schedule '0:4000,3:1000'")
    parser.add_argument("--pairs", default="4", help="pairs per sample: '4' or a range '2-6'")
    parser.add_argument("--queries", default="1", help="masked queries per sample: '1' or 'all' (a recall list)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loss-scale", type=float, default=1.0,
                        help="multiply the loss (the trainer's loss is the lookups' summed CE / (8 x batch))")
    parser.add_argument("--pad", default="0", help="filler tokens around each sequence: 'N' on both sides or 'BEFORE:AFTER'")
    parser.add_argument("--pad-from", type=int, default=0, help="first step that pads (before it: bare sequences)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    info = TinyTokenizerInfo("llada", (ASSET / "tokenizer.json").read_text(), 3000)
    cfg = TrainConfig(out_dir="unused", num_layers=args.layers, hidden_size=args.hidden, num_heads=args.heads,
                      intermediate_size=2 * args.hidden, rope_theta=args.rope_theta, qkv_bias=args.qkv_bias)
    model = build_model(config_from_dict(llada_config_dict(cfg, info)), seed=args.seed)
    encode = info.backend().encode
    keys = [ids[0] for ids in (encode(" " + k, add_special_tokens=False).ids for k in KEYS) if len(ids) == 1]
    values = [encode(f" {v}", add_special_tokens=False).ids[-1] for v in range(10, 100)]
    gap_ids = [encode(w, add_special_tokens=False).ids[0] for w in GAP_WORDS]
    pad_id = encode(PAD_WORD, add_special_tokens=False).ids[0]
    mask, pad = model.config.mask_token_id, model.config.eos_token_id
    low, _, high = args.pairs.partition("-")
    pair_range = (int(low), int(high or low))
    schedule = parse_gaps(args.gaps)
    before, _, after = args.pad.partition(":")
    pad_before, pad_after = int(before), int(after or before)
    rng = random.Random(args.seed)

    def batch(gap: int, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded ids [B, T], (row, position) of every masked value [N, 2], their targets [N]."""
        rows, where, targets = [], [], []
        padded = step >= args.pad_from
        for r in range(args.batch):
            n = rng.randint(*pair_range)
            ks, vs = rng.sample(keys, n), rng.sample(values, n)
            seq: list[int] = [pad_id] * (pad_before if padded else 0)
            for k, v in zip(ks, vs):
                seq += [k, *gap_ids[:gap], v]
            asked = rng.sample(range(n), n if args.queries == "all" else int(args.queries))
            for i in asked:
                seq += [ks[i], *gap_ids[:gap], mask]
                where.append((r, len(seq) - 1))
                targets.append(vs[i])
            rows.append(seq + [pad_id] * (pad_after if padded else 0))
        width = max(map(len, rows))
        return (torch.tensor([s + [pad] * (width - len(s)) for s in rows]), torch.tensor(where),
                torch.tensor(targets))

    optim = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.05)
    accuracy, start = None, time.time()
    for step in range(1, args.steps + 1):
        for group in optim.param_groups:
            group["lr"] = args.lr * min(1.0, step / 50)
        gap = gap_at(schedule, step)
        ids, where, targets = batch(gap, step)
        logits = model(ids).logits[where[:, 0], where[:, 1]]
        loss = args.loss_scale * F.cross_entropy(logits, targets)
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        hit = (logits.argmax(-1) == targets).float().mean().item()
        accuracy = hit if accuracy is None else 0.98 * accuracy + 0.02 * hit
        if step % 100 == 0:
            print(f"step {step} gap {gap} loss {loss.item():.3f} accuracy {accuracy:.3f} ({time.time() - start:.0f} s)",
                  flush=True)


if __name__ == "__main__":
    main()
