"""Where a system's decode steps spend their time (everything after the first pass).

Runs one ``generate`` call of a ``maskkv bench`` system (default: MaskKV on llada-mini, prompt 4096,
gen/steps/block 32, budget 256) after a warm-up run, and profiles from the end of the first pass to
the end of the call, so the sampler's own work between passes is included. Each forward pass is a
``decode_pass`` range in the torch profile.

    python benchmarks/profile_decode_step.py                      # torch.profiler, top ops by self time
    python benchmarks/profile_decode_step.py --tool cprofile      # Python-level view
    python benchmarks/profile_decode_step.py --system dllm-cache --prompt 512
    python benchmarks/profile_decode_step.py --threads 1          # as `maskkv bench --threads 1`
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from maskkv.bench.runner import BenchConfig, load_bench_model, random_prompt
from maskkv.bench.systems import SYSTEMS
from maskkv.sampling.generate import generate


class _ProfileAfterFirstPass:
    """``logits_at`` wrapper: starts ``start()`` after the first pass, labels every pass."""

    def __init__(self, inner, start) -> None:
        self.inner, self.config, self.start, self.passes = inner, inner.config, start, 0

    def __getattr__(self, name):  # begin_block / end_blocks / static_positions of the denoiser
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def logits_at(self, input_ids, attention_mask, positions):
        with record_function("decode_pass" if self.passes else "first_pass"):
            out = self.inner.logits_at(input_ids, attention_mask, positions)
        self.passes += 1
        if self.passes == 1 and self.start is not None:
            self.start()
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", default="maskkv", choices=sorted(SYSTEMS))
    parser.add_argument("--arch", default="llada-mini")
    parser.add_argument("--prompt", type=int, default=4096)
    parser.add_argument("--gen-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--tool", choices=("torch", "cprofile"), default="torch")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)

    config = BenchConfig(system=args.system, prompt_length=args.prompt, gen_length=args.gen_length, steps=args.steps,
                         block_length=args.block_length, budget=args.budget, arch=args.arch)
    model = load_bench_model(config)
    prompt = random_prompt(model.config, 1, args.prompt, 0, "cpu")
    system = SYSTEMS[args.system]

    def one_call(start=None) -> float:
        cache = system.make_cache()
        inner = model if cache is None else cache.bind(model, args.prompt, press=system.make_press(args.budget),
                                                     block_length=args.block_length)
        torch.manual_seed(0)
        began = time.perf_counter()
        generate(_ProfileAfterFirstPass(inner, start), prompt, gen_length=args.gen_length, steps=args.steps,
                 block_length=args.block_length)
        return time.perf_counter() - began

    one_call()  # warm-up
    if args.tool == "cprofile":
        profiler = cProfile.Profile()
        seconds = one_call(profiler.enable)
        profiler.disable()
        print(f"{args.system} @ {args.prompt}: {seconds:.3f} s in the call")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)
        return
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        prof.stop()  # started again after the first pass
        seconds = one_call(prof.start)
    print(f"{args.system} @ {args.prompt}: {seconds:.3f} s in the call (profiled: passes 2..{args.steps} and sampler)")
    averages = prof.key_averages()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=args.top))
    summarize(prof, model.config.vocab_size, args.steps - 1)


def summarize(prof, vocab_size: int, passes: int) -> None:
    """Self CPU time per decode step, by category (LM head = matmuls with the vocabulary dimension)."""
    inside: dict[str, float] = {}
    outside: dict[str, float] = {}
    total = 0.0
    for event in prof.events():
        if event.name in ("decode_pass", "first_pass") or event.device_type.name != "CPU":
            continue
        in_pass = _inside(event)
        self_us = event.self_cpu_time_total
        total += self_us
        shapes = event.input_shapes or []
        if event.name == "mkldnn::_linear_pointwise":  # the packed LM head (PackedLMHead)
            kind = "LM head GEMM"
        elif event.name in ("aten::mm", "aten::addmm", "aten::bmm"):
            kind = "LM head GEMM" if any(vocab_size in shape for shape in shapes if shape) else "trunk GEMMs"
        elif "scaled_dot_product" in event.name:
            kind = "attention (SDPA)"
        elif event.name in ("aten::_softmax", "aten::softmax", "aten::argmax", "aten::topk", "aten::gather"):
            kind = event.name.replace("aten::", "").lstrip("_")
        else:
            kind = "other ops"
        (inside if in_pass else outside)[kind] = (inside if in_pass else outside).get(kind, 0.0) + self_us
    print(f"per decode step (mean of {passes}), self CPU time of the ops, ms:")
    for label, table in (("inside logits_at (the pass)", inside), ("sampler, between passes", outside)):
        print(f"  {label}: {sum(table.values()) / passes / 1000:.2f}")
        for kind, us in sorted(table.items(), key=lambda kv: -kv[1]):
            print(f"    {kind:<20} {us / passes / 1000:8.2f}")


def _inside(event) -> bool:
    """Whether ``event`` ran inside a ``decode_pass`` range."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == "decode_pass":
            return True
        parent = parent.cpu_parent
    return False


if __name__ == "__main__":
    main()
