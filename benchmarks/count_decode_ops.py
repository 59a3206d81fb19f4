"""Aten ops and host syncs per steady-state decode step, counted on CPU (issue 23's setting).

A 3-layer tiny checkpoint (d 64, 4 heads; LLaDA and Dream), a 300-token prompt, gen / steps / block 32,
press budget 32, greedy, one thread; every op dispatched from the end of the first pass to the end of the
sampler's loop (the sampler's own work included) is counted by :mod:`maskkv.bench.opcount` and divided by
the 3 layers (the first pass's ops are printed beside them). The same numbers as
``tests/test_decode_step.py``'s counts.

    python benchmarks/count_decode_ops.py                           # every system, both families
    python benchmarks/count_decode_ops.py --family llada --systems maskkv --ops   # the ops of one step
"""

from __future__ import annotations

import argparse
import logging
import tempfile

import torch

from maskkv.bench.opcount import count_decode_steps
from maskkv.cache import DLLMCache
from maskkv.cache.fast_dllm import FastDLLMCache
from maskkv.models import load_model
from maskkv.models.tiny import write_tiny_checkpoint
from maskkv.presses import make_press
from maskkv.sampling.generate import generate

SYSTEMS = ("vanilla", "dllm-cache", "maskkv", "adakv", "fast-prefix", "fast-dual")
PROMPT, GEN, BUDGET = 300, 32, 32


def bind(model, system: str):
    """The denoiser of ``system`` for one request (the bare model for ``vanilla``)."""
    if system == "vanilla":
        return model
    if system.startswith("fast-"):
        return FastDLLMCache(system.removeprefix("fast-")).bind(model, PROMPT, block_length=GEN)
    press = None if system == "dllm-cache" else make_press(system, BUDGET)
    return DLLMCache().bind(model, PROMPT, press=press, block_length=GEN)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("llada", "dream", "both"), default="both")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma separated, from {', '.join(SYSTEMS)}")
    parser.add_argument("--ops", action="store_true", help="also list the ops of the first steady step")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    for family in ("llada", "dream") if args.family == "both" else (args.family,):
        folder = tempfile.mkdtemp()
        write_tiny_checkpoint(folder, family, num_layers=3, hidden_size=64, num_heads=4, seed=5)
        model = load_model(folder)
        prompt = torch.randint(0, model.config.vocab_size - 64, (1, PROMPT), generator=torch.Generator().manual_seed(0))
        for system in args.systems.split(","):
            run = lambda m: generate(m, prompt, gen_length=GEN, steps=GEN, block_length=GEN)  # noqa: E731
            _, counts = count_decode_steps(bind(model, system), run, block_first_pass=system.startswith("fast-"))
            s = counts.summary()
            first = next(step.total for step in counts.steps if step.kind == "pass")
            print(f"{family:6s} {system:12s} ops/layer/step mean {s['ops_per_layer_per_step']:5.1f} "
                  f"max {s['ops_per_layer_per_step_max']:5.1f}   syncs/step max {s['syncs_per_step_max']}   "
                  f"first pass {first} ops")  # fmt: skip
            if args.ops:
                step = counts.steady[0]
                for name, n in sorted(step.ops.items(), key=lambda kv: -kv[1]):
                    print(f"    {n:4d}  {name}")


if __name__ == "__main__":
    main()
