"""Measure one benchmark configuration: speed per pass, cache bytes and peak memory.

One :class:`BenchConfig` is one row of the results: a system at one prompt length. :func:`measure`
runs it in this process (one or more warm-up runs, then ``repeats`` timed runs, each a full
``generate`` call); :func:`measure_isolated` runs :func:`measure` in a fresh Python process so that
the peak RSS on CPU belongs to that configuration alone (``python -m maskkv.bench.worker``).

Timing follows ``sampling.md`` 4: the sampler's wall time around the decoding loop (CUDA synchronised),
batch 1 by default, ``tokens/s = batch * gen_length / seconds``. Each forward pass is timed by
:class:`~maskkv.bench.systems.PassTimer`: pass 1 is the *first pass* (full forward; for presses also
the scoring and eviction), the others are *decode steps*. With ``max_passes`` a run stops after that
many passes and its time is extrapolated as ``first + mean(decode) * (steps - 1)`` (marked so).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..cache.dllm_cache import DLLMCache
from ..models.config import ModelConfig
from ..sampling.generate import generate
from .architectures import architecture_config, build_random_model, parameter_count
from .opcount import count_decode_steps
from .systems import SYSTEMS, PassTimer, StopTiming

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class BenchConfig:
    """Everything that defines one measured row (saved with it)."""

    system: str
    prompt_length: int
    gen_length: int = 32
    steps: int = 32
    block_length: int = 32
    budget: int = 256
    batch: int = 1
    arch: str = "llada-mini"
    model_path: str | None = None  # a checkpoint instead of a random architecture
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    warmup: int = 1
    repeats: int = 1
    max_passes: int | None = None  # time only the first N passes, extrapolate the rest
    profile: str | None = None  # MaskKV offline layer profile
    threads: int | None = None  # torch.set_num_threads in the measuring process
    count_ops: bool = True  # count aten ops and host syncs per decode step (an extra untimed run)
    cuda_graphs: bool = False  # cache systems replay their steady passes from CUDA graphs (CUDA only)

    def __post_init__(self) -> None:
        if self.system not in SYSTEMS:
            raise ValueError(f"unknown system {self.system!r}; choose from {', '.join(SYSTEMS)}")
        for name in ("prompt_length", "gen_length", "steps", "block_length", "budget", "batch", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.max_passes is not None and self.max_passes < 1:
            raise ValueError(f"max_passes must be >= 1 or None, got {self.max_passes}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is unknown; use one of {', '.join(DTYPES)}")


# ----- model and prompt -------------------------------------------------------------------------


def load_bench_model(config: BenchConfig) -> torch.nn.Module:
    """The model of ``config``: a checkpoint (``model_path``) or a seeded random architecture."""
    dtype = DTYPES[config.dtype]
    if config.model_path:
        from ..models.loading import load_model

        return load_model(config.model_path, device=config.device, dtype=dtype)
    return build_random_model(architecture_config(config.arch), device=config.device, dtype=dtype, seed=config.seed)


def random_prompt(model_config: ModelConfig, batch: int, length: int, seed: int, device: str) -> torch.Tensor:
    """Seeded random prompt ids ``[batch, length]`` below the mask id (no special meaning, no masks)."""
    high = min(model_config.vocab_size, model_config.mask_token_id)
    generator = torch.Generator().manual_seed(seed + 7919 * length)
    return torch.randint(0, high, (batch, length), generator=generator).to(device)


# ----- memory -----------------------------------------------------------------------------------


def current_rss() -> int:
    """Resident set size of this process now, in bytes (Linux ``/proc``; else the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss()


def reset_peak_memory(device: str) -> bool:
    """Start a new peak: CUDA's allocated peak, or on Linux the process's peak RSS (``VmHWM``, through
    ``/proc/self/clear_refs``). False where the CPU peak cannot be reset."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_since_reset(device: str) -> int | None:
    """CUDA: ``max_memory_allocated``; CPU: ``VmHWM`` (peak RSS since :func:`reset_peak_memory`), bytes."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss() -> int:
    """Peak resident set size of this process, in bytes (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# ----- one run ----------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """One ``generate`` call of a configuration."""

    seconds: float  # sampler wall time, or the extrapolation when stopped early
    cpu_seconds: float  # process CPU time of the call (all threads; not extrapolated)
    wall_seconds: float  # wall time of the call as run (not extrapolated)
    pass_seconds: list[float]
    nfe: int
    extrapolated: bool
    sequences: torch.Tensor | None = None
    cache: Any = None  # the bound CachedDenoiser, if any
    memory_peaks: list[int | None] = field(default_factory=list)  # peak after pass 1 and pass 2 (since a reset)


def run_once(model: Any, config: BenchConfig, prompt: torch.Tensor, *, max_passes: int | None = None,
             profile: str | None = None, memory: bool = False) -> RunRecord:  # fmt: skip
    """One ``generate`` call of ``config``'s system on ``prompt`` with every pass timed.

    ``profile``: MaskKV layer profile to use instead of ``config.profile``. ``memory``: reset the peak
    memory before the call and record it after the first pass and after the first decode step.
    """
    system = SYSTEMS[config.system]
    cache = system.make_cache(config.cuda_graphs)
    press = system.make_press(config.budget, profile or config.profile)
    inner = model if cache is None else cache.bind(model, prompt.shape[1], press=press, block_length=config.block_length)
    read = None
    if memory and reset_peak_memory(config.device):
        read = lambda: peak_memory_since_reset(config.device)  # noqa: E731
    timer = PassTimer(inner, reference_logits=system.reference_logits, max_passes=max_passes, memory=read)
    torch.manual_seed(config.seed)
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    denoiser = None if cache is None else inner
    try:
        out = generate(timer, prompt, gen_length=config.gen_length, steps=config.steps,
                       block_length=config.block_length)  # fmt: skip
    except StopTiming:
        passes = timer.seconds
        decode = statistics.fmean(passes[1:]) if len(passes) > 1 else passes[0]
        seconds = passes[0] + decode * (config.steps - 1)
        cpu, wall = time.process_time() - cpu_start, time.perf_counter() - wall_start
        return RunRecord(seconds, cpu, wall, passes, config.steps, True, None, denoiser, timer.memory_peaks)
    cpu, wall = time.process_time() - cpu_start, time.perf_counter() - wall_start
    return RunRecord(out.seconds, cpu, wall, timer.seconds, out.nfe, False, out.sequences, denoiser, timer.memory_peaks)


COUNTED_PASSES = 6  # the first pass, four V-verify steps and one response refresh (dLLM-Cache's T_r = 5)


def count_step_ops(model: Any, config: BenchConfig, prompt: torch.Tensor, profile: str | None = None) -> dict[str, Any]:
    """Aten ops and host syncs per decode step (:mod:`maskkv.bench.opcount`), over an untimed run of
    ``config``'s system stopped after :data:`COUNTED_PASSES` passes; the sampler's work is included."""
    system = SYSTEMS[config.system]
    cache = system.make_cache(config.cuda_graphs)
    press = system.make_press(config.budget, profile or config.profile)
    inner = model if cache is None else cache.bind(model, prompt.shape[1], press=press, block_length=config.block_length)
    timer = PassTimer(inner, reference_logits=system.reference_logits, max_passes=COUNTED_PASSES)
    torch.manual_seed(config.seed)
    _, counts = count_decode_steps(
        timer,
        lambda m: generate(m, prompt, gen_length=config.gen_length, steps=config.steps, block_length=config.block_length),
        block_first_pass=system.fast_dllm is not None,
        stop=StopTiming,
    )  # fmt: skip
    return {"counted_passes": COUNTED_PASSES, **counts.summary()}


def calibrate_random_profile(model: Any, config: BenchConfig, folder: str) -> str:
    """A MaskKV layer profile (Eq. 8) from one seeded random prompt of up to 128 tokens; its path.

    For speed and memory runs only the existence of a profile matters (it enables layer-by-layer
    eviction); on random weights its values carry no meaning.
    """
    from ..presses.profile import sample_importance, save_profile

    ids = random_prompt(model.config, 1, min(128, config.prompt_length), config.seed + 1, config.device)
    importance = sample_importance(model, ids, config.gen_length).double().cpu().tolist()
    path = os.path.join(folder, "profile.json")
    save_profile(path, model.config, importance, samples=1, gen_length=config.gen_length,
                 data="random prompt (maskkv bench)")  # fmt: skip
    return path


def _press_layout(denoiser: Any) -> dict[str, Any]:
    """Per-layer prompt storage after eviction: slots per head (the largest head's count for ragged
    layers), stored prompt pairs (over batch and heads: padded slots included) and kept pairs per
    (batch, head)."""
    if denoiser is None:
        return {}
    slots, stored, kept = [], [], []
    for layer in denoiser.layers:
        b, heads = layer.k.shape[:2]
        if layer.ragged is not None:
            slots.append(layer.ragged.width)
            stored.append(layer.ragged.k.shape[0])
            kept.append(layer.ragged.counts.tolist())
            continue
        slots.append(layer.prompt_slots)
        stored.append(b * heads * layer.prompt_slots)
        valid = layer.prompt_valid
        if valid is None:
            kept.append([[layer.prompt_slots] * heads for _ in range(b)])
        else:
            kept.append(valid.expand(b, heads, layer.prompt_slots).sum(-1).tolist())
    return {"prompt_slots_per_layer": slots, "stored_prompt_pairs_per_layer": stored, "kept_pairs_per_layer": kept}


def analytic_cache_bytes(model_config: ModelConfig, config: BenchConfig, layout: dict[str, Any],
                         element_size: int) -> dict[str, int] | None:  # fmt: skip
    """Cache bytes by kind predicted from the shapes (``dllm_cache.md`` 8), or None without a cache.

    Prompt K/V: the stored pairs (all ``P`` prompt tokens x Hkv x batch; after eviction the kept pairs,
    or Hkv x the largest head budget where a layer's heads share one padded buffer) * head_dim * 2 (K and V).
    Response K/V: layers * G * 2 * d_kv. Response features: layers * G * 2 * d. Prompt features
    (no prompt-state exclusion): layers * P * 2 * d. All times batch and bytes per element.
    """
    system = SYSTEMS[config.system]
    c, b, e = model_config, config.batch, element_size
    layers, g, p = c.num_layers, config.gen_length, config.prompt_length
    d_kv = c.num_kv_heads * c.head_dim
    if system.fast_dllm is not None:  # at the end: the last block's frozen K/V (prefix: positions before it)
        frozen = g if system.fast_dllm == "dual" else g - min(config.block_length, g)
        out = {"prompt_kv": layers * p * 2 * d_kv * b * e, "response_kv": layers * frozen * 2 * d_kv * b * e,
               "response_features": 0, "prompt_features": 0}  # fmt: skip
        out["total"] = sum(out.values())
        return out
    if system.cache is None:
        return None
    policy = DLLMCache(**system.cache)
    stored = layout.get("stored_prompt_pairs_per_layer") or [p * c.num_kv_heads * b] * layers
    out = {
        "prompt_kv": sum(stored) * c.head_dim * 2 * e,
        "response_kv": layers * g * 2 * d_kv * b * e,
        "response_features": layers * g * 2 * c.hidden_size * b * e,
        "prompt_features": 0 if policy.prompt_state_exclusion else layers * p * 2 * c.hidden_size * b * e,
    }
    if c.logits_shift:  # Dream keeps the final hidden state of the last prompt row
        out["prompt_features"] += c.hidden_size * b * e
    out["total"] = sum(out.values())
    return out


# ----- one configuration ------------------------------------------------------------------------


def measure(config: BenchConfig, model: Any | None = None) -> dict[str, Any]:
    """Warm-up and timed runs of one configuration; the result row (see :mod:`maskkv.bench.report`).

    With ``model`` given (in-process runs on CUDA) the model is shared and only the CUDA peak is
    reset; otherwise the model is built here (fresh-process runs).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    cuda = torch.device(config.device).type == "cuda"
    runtime_rss = current_rss()
    shared_model = model is not None
    build_start = time.perf_counter()
    if model is None:
        model = load_bench_model(config)
    build_seconds = time.perf_counter() - build_start
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model_rss = current_rss()
    model_cuda = torch.cuda.memory_allocated() if cuda else None
    model_config = model.config
    prompt = random_prompt(model_config, config.batch, config.prompt_length, config.seed, config.device)

    with tempfile.TemporaryDirectory(prefix="maskkv-bench-") as folder:
        profile = config.profile
        if SYSTEMS[config.system].offline and not profile:
            profile = calibrate_random_profile(model, config, folder)
        if cuda:  # calibration activations are not part of the measured configuration
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(config.warmup):
            run_once(model, config, prompt, max_passes=config.max_passes, profile=profile)
        peak_before = peak_rss()  # the timed runs reset the peak RSS (first-pass memory): keep the earlier one
        runs = [run_once(model, config, prompt, max_passes=config.max_passes, profile=profile, memory=True)
                for _ in range(config.repeats)]  # fmt: skip
        ops = count_step_ops(model, config, prompt, profile) if config.count_ops else None
    if cuda:
        torch.cuda.synchronize()

    last = runs[-1]
    seconds = statistics.median(r.seconds for r in runs)
    first = statistics.median(r.pass_seconds[0] for r in runs)
    decode_runs = [r.pass_seconds[1:] for r in runs if len(r.pass_seconds) > 1]
    decode_mean = statistics.median(statistics.fmean(d) for d in decode_runs) if decode_runs else None
    decode_median = statistics.median(statistics.median(d) for d in decode_runs) if decode_runs else None
    element_size = model.embed_tokens.weight.element_size()
    denoiser = last.cache
    cache_bytes = None if denoiser is None else denoiser.stats.as_dict()
    layout = _press_layout(denoiser) if denoiser is not None and denoiser.press is not None else {}
    analytic = analytic_cache_bytes(model_config, config, layout, element_size)
    kept = None if cache_bytes is None else cache_bytes["kept_prompt_pairs"]
    logical = None if kept is None else kept * model_config.head_dim * 2 * element_size

    if cuda:
        peak, baseline, note = torch.cuda.max_memory_allocated(), model_cuda, "torch.cuda.max_memory_allocated"
    elif shared_model:
        peak, baseline, note = None, model_rss, "not measured: in-process CPU run (use --isolate)"
    else:
        peak, baseline, note = max(peak_before, peak_rss()), model_rss, "peak RSS of a fresh process (ru_maxrss)"
    tokens = config.batch * config.gen_length
    return {
        "config": asdict(config),
        "system_label": SYSTEMS[config.system].label,
        "system_description": SYSTEMS[config.system].description,
        "model": {"name": model_config.name, "family": model_config.family,
                  "parameters": parameter_count(model_config), "layers": model_config.num_layers,
                  "hidden_size": model_config.hidden_size, "heads": model_config.num_heads,
                  "kv_heads": model_config.num_kv_heads, "head_dim": model_config.head_dim,
                  "vocab_size": model_config.vocab_size, "element_size": element_size,
                  "build_seconds": build_seconds},  # fmt: skip
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "extrapolated": last.extrapolated,
        "timed_passes": len(last.pass_seconds),
        "first_pass_s": first,
        "decode_step_mean_s": decode_mean,
        "decode_step_median_s": decode_median,
        "nfe": last.nfe,
        "sampler_overhead_s": None if last.extrapolated else max(0.0, last.seconds - sum(last.pass_seconds)),
        "seconds_per_repeat": [r.seconds for r in runs],
        "cpu_seconds": statistics.median(r.cpu_seconds for r in runs),
        "threads": torch.get_num_threads(),
        "cpu_utilisation": None if cuda else min(r.cpu_seconds / (r.wall_seconds * torch.get_num_threads())
                                                 for r in runs),  # fmt: skip
        "pass_seconds": last.pass_seconds,
        "cache_bytes": cache_bytes,
        "cache_bytes_analytic": analytic,
        "cache_bytes_match": None if analytic is None else all(cache_bytes[k] == v for k, v in analytic.items()),
        "prompt_kv_logical_bytes": logical,
        "prompt_kv_padding_bytes": None if logical is None else cache_bytes["prompt_kv"] - logical,
        **layout,
        "ops_per_step": ops,
        "captured": bool(denoiser is not None and getattr(denoiser, "graphs", None) and denoiser.graphs.replays),
        "capture_failure": None if denoiser is None or not getattr(denoiser, "graphs", None) else denoiser.graphs.failure,
        # peak since a reset just before the timed run, read after its first pass and after one decode step
        "first_pass_peak_bytes": last.memory_peaks[0] if last.memory_peaks else None,
        "first_pass_step_peak_bytes": last.memory_peaks[-1] if last.memory_peaks else None,
        "first_pass_increment_bytes": (
            None if not last.memory_peaks or last.memory_peaks[-1] is None or baseline is None
            else last.memory_peaks[-1] - baseline
        ),
        "peak_memory_bytes": peak,
        "model_memory_bytes": baseline,
        "runtime_memory_bytes": None if cuda or shared_model else runtime_rss,
        "peak_increment_bytes": None if peak is None or baseline is None else peak - baseline,
        # weights + activations + caches: CUDA's allocated peak; CPU: peak RSS less the Python/torch runtime
        "tensor_peak_bytes": peak if cuda else (None if peak is None else peak - runtime_rss),
        "memory_measure": note,
        "loadavg_1m": _loadavg(),
        "error": None,
    }


def _loadavg() -> float | None:
    """1-minute load average (other processes on the machine skew CPU timings)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def error_row(config: BenchConfig, message: str) -> dict[str, Any]:
    """A row for a configuration that failed (kept in the results, shown as an error)."""
    return {"config": asdict(config), "system_label": SYSTEMS[config.system].label, "error": message}


def measure_isolated(config: BenchConfig, *, timeout: float | None = None) -> dict[str, Any]:
    """:func:`measure` in a fresh ``python -m maskkv.bench.worker`` process; failures become error rows."""
    command = [sys.executable, "-m", "maskkv.bench.worker"]
    try:
        done = subprocess.run(command, input=json.dumps(asdict(config)), capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return error_row(config, f"timed out after {timeout:.0f} s")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-8:]
        return error_row(config, f"worker exited with {done.returncode}: " + " | ".join(tail))
    return json.loads(lines[-1])


def _debug() -> bool:
    """``MASKKV_DEBUG=1``: print the traceback of a configuration that failed (as ``--debug`` does)."""
    return os.environ.get("MASKKV_DEBUG", "").lower() in ("1", "true", "yes")


def measure_in_process(config: BenchConfig, model: Any | None = None) -> dict[str, Any]:
    """:func:`measure` here, failures (out of memory, or any other exception) becoming error rows, so
    the configurations after a failing one still run (the command exits non-zero at the end)."""
    try:
        return measure(config, model)
    except Exception as err:  # noqa: BLE001 - recorded as the row's error; MASKKV_DEBUG=1 prints the traceback
        if _debug():
            traceback.print_exc()
        message = f"{type(err).__name__}: {err}".splitlines()[0][:500]
    if torch.device(config.device).type == "cuda":  # after the except block: its frames' tensors are freed
        torch.cuda.empty_cache()
    return error_row(config, message)


def worker_main() -> int:
    """Entry of ``python -m maskkv.bench.worker``: a JSON BenchConfig on stdin, a JSON row on stdout."""
    try:
        config = BenchConfig(**json.loads(sys.stdin.read()))
        row = measure(config)
    except Exception as err:  # noqa: BLE001 - reported to the parent, which records an error row
        if _debug():
            traceback.print_exc()
        else:  # the row shows one line: the error, not a traceback
            print(f"{type(err).__name__}: {err}", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(row) + "\n")
    return 0
