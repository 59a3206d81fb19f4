"""Turn a finished training run into the shipped model folder: copy, calibrate MaskKV, evaluate.

``python -m maskkv.train.finalize --run RUN --dest src/maskkv/assets/tiny-llada`` copies
``RUN/model`` (config.json, model.safetensors, tokenizer files), computes MaskKV's offline layer
profile (``maskkv_profile.json``) on prompts built from the *training* filler, and writes
``heldout_eval.json``: held-out accuracy by task and context length with the full prompt cache
(dLLM-Cache, no eviction), with MaskKV at a small budget, and (on a subset) without any cache.
The model card quotes these numbers; the tests compare against them.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import torch

from .data import TASKS, TaskBuilder

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
CALIBRATION_SEED = 7


def calibration_prompts(tokenizer, count: int = 16, tokens: int = 1024) -> list[torch.Tensor]:
    """Prompts of every task over the *training* filler (never the held-out essays)."""
    from .evaluate import prompt_ids
    from .trainer import make_filler

    try:
        filler = make_filler("essays", "train")
    except ImportError:
        filler = make_filler("synthetic", "train")
    builder = TaskBuilder(tokenizer.backend_tokenizer, filler)
    rng = random.Random(CALIBRATION_SEED)
    return [prompt_ids(tokenizer, builder.sample(TASKS[i % len(TASKS)], tokens, rng).content) for i in range(count)]


def _table(rows, metric: str = "exact") -> dict[str, float]:
    from .evaluate import summarize

    return {f"{task}@{tokens}": round(v, 4) for (task, tokens), v in summarize(rows, metric).items()}


def main(argv: list[str] | None = None) -> None:
    from .. import load_model, load_tokenizer
    from ..cache import DLLMCache
    from ..presses import MaskKVPress
    from ..presses.profile import calibrate, save_profile
    from .evaluate import run_eval

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--dest", type=Path, required=True)
    parser.add_argument("--count", type=int, default=40, help="held-out samples per task and length")
    parser.add_argument("--lengths", default="512,1024,2048")
    parser.add_argument("--budget", type=int, default=32, help="MaskKV budget of the eviction check")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-copy", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lengths = tuple(int(x) for x in args.lengths.split(","))
    dest = args.dest
    if not args.skip_copy:
        dest.mkdir(parents=True, exist_ok=True)
        for name in MODEL_FILES:
            shutil.copyfile(args.run / "model" / name, dest / name)
            (dest / name).chmod(0o644)
    model = load_model(str(dest))
    tokenizer = load_tokenizer(str(dest))
    profile_path = dest / "maskkv_profile.json"
    prompts = calibration_prompts(tokenizer)
    importance = calibrate(model, prompts, 8, progress=False)
    save_profile(profile_path, model.config, importance, samples=len(prompts), gen_length=8, token_set="all",
                 data=f"maskkv.train.data tasks over the training essays, 1024 tokens, seed {CALIBRATION_SEED}",
                 checkpoint="maskkv/assets/tiny-llada")
    print("profile", [round(v, 4) for v in importance], flush=True)
    results: dict[str, object] = {"count": args.count, "lengths": list(lengths), "gen_length": 8, "steps": 8,
                                  "block_length": 8, "budget": args.budget}
    start = time.time()
    rows = run_eval(model, tokenizer, lengths=lengths, count=args.count, cache_factory=DLLMCache)
    results["full_cache"] = _table(rows)
    results["full_cache_all_refs"] = _table(rows, "all_refs")
    results["prompt_tokens_mean"] = {str(n): sum(r.prompt_tokens for r in rows if r.tokens == n)
                                     / max(1, sum(r.tokens == n for r in rows)) for n in lengths}
    results["seconds_full_cache"] = time.time() - start
    print(json.dumps(results["full_cache"], indent=1), flush=True)
    _write(dest, results)
    start = time.time()
    rows = run_eval(model, tokenizer, lengths=lengths[-2:], count=args.count, cache_factory=DLLMCache,
                    press_factory=lambda: MaskKVPress(budget=args.budget, profile=str(profile_path)))
    results[f"maskkv_budget_{args.budget}"] = _table(rows)
    results["seconds_maskkv"] = time.time() - start
    print(json.dumps(results[f"maskkv_budget_{args.budget}"], indent=1), flush=True)
    _write(dest, results)
    start = time.time()
    rows = run_eval(model, tokenizer, lengths=(1024,), count=10)
    results["no_cache_first10_at_1024"] = _table(rows)
    results["seconds_no_cache"] = time.time() - start
    rows = run_eval(model, tokenizer, tasks=("single", "multikey"), lengths=(1024,), count=10, filler="synthetic",
                    cache_factory=DLLMCache)
    results["full_cache_synthetic_first10_at_1024"] = _table(rows)
    _write(dest, results)
    print(json.dumps(results, indent=1))
    print(render_tables(results))


def render_tables(results: dict[str, object]) -> str:
    """Markdown tables (task rows, length columns) of every accuracy block in ``heldout_eval.json``."""
    out = []
    for name, block in results.items():
        if not isinstance(block, dict) or not block or not all("@" in k for k in block):
            continue
        cells = {tuple(k.split("@")): v for k, v in block.items()}
        tasks = [t for t in TASKS if any(c[0] == t for c in cells)]
        lengths = sorted({int(c[1]) for c in cells})
        out.append(f"**{name}**\n")
        out.append("| task | " + " | ".join(f"{n} tokens" for n in lengths) + " |")
        out.append("|---" * (len(lengths) + 1) + "|")
        for t in tasks:
            row = [f"{100 * cells[(t, str(n))]:.1f}%" if (t, str(n)) in cells else "-" for n in lengths]
            out.append(f"| {t} | " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)


def _write(dest: Path, results: dict[str, object]) -> None:
    (dest / "heldout_eval.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":  # pragma: no cover
    main()
