"""Diagnostic: is the asked needle's value token among the top-32 prompt keys of a head, under SnapKV's
observation-window scores and under MaskKV's Mask-Voting scores? (the shipped tiny model, held-out samples)

    python scripts/diagnostics/needle_rank.py [--count 40] [--tokens 1024]

For each held-out sample it decodes with a SnapKV press at budget 32 that also records the layer's mask votes, and
counts the samples whose value token is in the 32 highest scores of at least one KV head, per layer and scorer
(SnapKV's scores include its protected window, as in its keep set). Used in ``docs/results.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re

import torch

import maskkv
from maskkv.cache import DLLMCache
from maskkv.demo import shipped_model_path
from maskkv.presses import SnapKVPress
from maskkv.train.evaluate import answer, heldout_samples, make_heldout_builder, prompt_ids

TOP = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = shipped_model_path()
    model, tok = maskkv.load_model(str(path)), maskkv.load_tokenizer(str(path))
    recorded: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    @dataclasses.dataclass(frozen=True)
    class RecordingSnapKV(SnapKVPress):
        def score(self, ctx):
            snap = super().score(ctx)
            recorded.append((ctx.layer, snap.detach().clone(), ctx.mask_votes()[..., : ctx.prompt_length].clone()))
            return snap

    builder = make_heldout_builder(tok, "essays")
    for task in ("single", "multikey"):
        hits: dict[str, int] = {}
        samples = heldout_samples(builder, task, args.tokens, args.count)
        for sample in samples:
            ids = prompt_ids(tok, sample.content)
            key = re.search(r"special magic number for (\w+) mentioned", sample.content).group(1)
            needle = f"magic numbers for {key} is: "
            start = sample.content.index(needle) + len(needle)
            # the value token nearest to where the asked needle's value sits (chat prefix + the content before it)
            content_ids = tok(sample.content, add_special_tokens=False)["input_ids"]
            expected = ids.shape[1] - len(content_ids) + len(tok(sample.content[:start], add_special_tokens=False)["input_ids"])
            value_id = tok(sample.answer, add_special_tokens=False)["input_ids"][-1]
            position = min((i for i, t in enumerate(ids[0].tolist()) if t == value_id), key=lambda i: abs(i - expected))
            recorded.clear()
            answer(model, tok, ids, cache=DLLMCache(), press=RecordingSnapKV(budget=TOP))
            for layer, snap, votes in recorded:
                for name, scores in (("snapkv", snap), ("mask-votes", votes)):
                    kept = scores[0].topk(TOP, dim=-1).indices
                    hits[f"{name} layer {layer}"] = hits.get(f"{name} layer {layer}", 0) + int((kept == position).any())
        print(f"{task} @ {args.tokens} tokens, {len(samples)} samples: value token in a head's top-{TOP}:",
              ", ".join(f"{k} {v}/{len(samples)}" for k, v in hits.items()), flush=True)


if __name__ == "__main__":
    main()
