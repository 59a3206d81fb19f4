"""``maskkv bench``: speed and memory of vanilla, dLLM-Cache, MaskKV and the baselines vs prompt length."""

from __future__ import annotations

import gc
import shlex
import time
from pathlib import Path
from typing import Any

import click
import torch
from click.core import ParameterSource
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..validation import check_number
from .architectures import ARCHITECTURES
from .report import build_document, machine_info, print_results, write_outputs
from .runner import DTYPES, BenchConfig, load_bench_model, measure_in_process, measure_isolated
from .systems import SYSTEMS, resolve_systems

DEFAULT_LENGTHS = "512 1024 2048 4096"
# --quick: a small grid for smoke tests (applies to the options not given explicitly).
# One thread: the tiny model gains nothing from two, and one is robust to other processes on the CPU.
QUICK = {"arch": "llada-tiny", "lengths": "128 256", "gen_length": 8, "steps": 8, "block_length": 8, "budget": 32,
         "ref_steps": 2, "threads": 1}  # fmt: skip


def parse_lengths(text: str) -> list[int]:
    """``"512 1024"``, ``"512,1024"`` or ``"1k,2k"`` -> ``[512, 1024]`` / ``[1024, 2048]`` (order kept, no repeats)."""
    lengths: list[int] = []
    for item in text.replace(",", " ").split():
        token = item.strip().lower()
        scale = 1024 if token.endswith("k") else 1
        try:
            value = int(token[:-1] if scale > 1 else token) * scale
        except ValueError:
            raise ValueError(f"--lengths: {item!r} is not a whole number of tokens (e.g. 512, 4096 or 4k)") from None
        if value < 1:
            raise ValueError(f"--lengths: {item!r} must be a positive number of tokens")
        if value not in lengths:
            lengths.append(value)
    if not lengths:
        raise ValueError("--lengths is empty; give prompt lengths such as '512 1024 2048 4096'")
    return lengths


@click.command(name="bench")
@click.option("--arch", default="llada-mini", show_default=True,
              help=f"Random-weight architecture: {', '.join(ARCHITECTURES)}.")
@click.option("--model", "model_path", default=None, help="Benchmark this checkpoint folder instead of --arch.")
@click.option("--lengths", default=DEFAULT_LENGTHS, show_default=True,
              help="Prompt lengths in tokens, space or comma separated; 4k = 4096.")
@click.option("--systems", "systems_spec", default="default", show_default=True,
              help="Comma list of systems and groups: vanilla, vanilla-ref, dllm-cache, dllm-cache-no-mop, "
                   "dllm-cache-orig, maskkv, maskkv-offline, snapkv, pyramidkv, squeeze, adakv, streaming, h2o, "
                   "knorm, random, sparse_dllm; groups default (vanilla, vanilla-ref, dllm-cache, "
                   "dllm-cache-no-mop, maskkv, maskkv-offline), baselines, all.")
@click.option("--gen-length", type=int, default=32, show_default=True, help="Tokens generated per prompt.")
@click.option("--steps", type=int, default=32, show_default=True, help="Denoising steps.")
@click.option("--block-length", type=int, default=32, show_default=True, help="Semi-autoregressive block length.")
@click.option("--budget", type=int, default=256, show_default=True,
              help="Press budget: average prompt K/V pairs kept per KV head per layer.")
@click.option("--profile", "profile_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="MaskKV layer profile (`maskkv calibrate`) for maskkv and maskkv-offline; without one maskkv "
                   "runs online and maskkv-offline calibrates on a random prompt before timing.")
@click.option("--batch", type=int, default=1, show_default=True, help="Prompts per generate call.")
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default=None,
              help="Weights dtype (default: float32 on CPU, bfloat16 on CUDA).")
@click.option("--repeats", type=int, default=1, show_default=True, help="Timed runs per configuration (median).")
@click.option("--warmup", type=int, default=1, show_default=True, help="Untimed warm-up runs per configuration.")
@click.option("--vanilla-steps", type=int, default=None,
              help="Time vanilla over its first N passes only and extrapolate (default: the full run).")
@click.option("--ref-steps", type=int, default=3, show_default=True,
              help="Passes timed for vanilla-ref before extrapolating (0: the full run).")
@click.option("--isolate/--no-isolate", default=None,
              help="A fresh process per configuration (default on CPU, where peak RSS needs it; off on CUDA).")
@click.option("--threads", type=int, default=None, help="torch.set_num_threads in every measuring process.")
@click.option("--retries", type=int, default=0, show_default=True,
              help="Measure a CPU configuration again (up to N times) when its process got under 75%% of its "
                   "threads' CPU time (another process competing); the best-served attempt is kept.")
@click.option("--timeout", type=float, default=3600.0, show_default=True,
              help="Seconds allowed per configuration (isolated runs).")
@click.option("--cuda-graphs", is_flag=True,
              help="Cache systems (dLLM-Cache, MaskKV, the presses, Fast-dLLM) replay their steady decode passes "
                   "from CUDA graphs (CUDA only); the rows say which ran captured.")
@click.option("--count-ops/--no-count-ops", default=True, show_default=True,
              help="Count aten ops and host syncs per decode step (an extra untimed run of 6 passes per row).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the weights, prompts and sampler.")
@click.option("--quick", is_flag=True,
              help="Small grid in well under a minute: llada-tiny, prompts 128 256, gen/steps/block 8, budget 32, "
                   "one thread (explicit flags win).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write results.json, results.csv and figure.png here.")
def bench(**options: Any) -> None:
    """Tokens/s, first-pass and decode-step time, NFE, cache bytes and peak memory vs prompt length."""
    ctx = click.get_current_context()
    if options["quick"]:
        for key, value in QUICK.items():
            if ctx.get_parameter_source(key) == ParameterSource.DEFAULT:
                options[key] = value
    console = Console(stderr=True)
    try:
        check_number("--timeout", options["timeout"], low=0.0, low_open=True)
        configs, settings = _grid(options)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    device = settings["device"]
    command = ["maskkv", "bench", *_given_args(ctx)]
    console.print(f"[dim]{len(configs)} configurations on {device} ({settings['dtype']}), "
                  f"{'a fresh process each' if settings['isolate'] else 'in one process'}[/dim]")  # fmt: skip

    rows: list[dict[str, Any]] = []
    machine = machine_info(device)
    shared: dict[str, Any] = {}  # the model, when configurations run in this process
    started = time.perf_counter()

    def document_so_far(complete: bool) -> dict[str, Any]:
        settings["wall_seconds"] = time.perf_counter() - started
        document = build_document(rows, machine=machine, settings=settings, command=command)
        document["complete"] = complete
        return document

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("bench", total=len(configs))
        for config in configs:
            progress.update(task, description=f"{config.system} @ {config.prompt_length}")
            row, attempts = None, 0
            while attempts == 0 or (_contended(row) and attempts <= options["retries"]):
                if attempts:
                    progress.console.print(
                        f"[yellow]{config.system} @ {config.prompt_length}: the process got "
                        f"{row['cpu_utilisation']:.0%} of its {row['threads']} thread(s) (another process on the "
                        "CPU?); measuring again[/yellow]"
                    )
                again = _measure(config, settings["isolate"], options["timeout"], shared)
                attempts += 1
                if row is None or (not again.get("error") and
                                   (again.get("cpu_utilisation") or 0) > (row.get("cpu_utilisation") or 0)):
                    row = again
            row["attempts"], row["contended"] = attempts, _contended(row)
            rows.append(row)
            progress.advance(task)
            if options["out_dir"] is not None:  # saved after every configuration: a killed run keeps its rows
                write_outputs(document_so_far(complete=False), options["out_dir"], figure=False)
    document = document_so_far(complete=True)
    out = Console()
    if not out.is_terminal:
        out = Console(width=150)  # files and pipes: one line per row
    print_results(rows, document["targets"], out)
    console.print(f"[dim]{len(rows)} configurations in {settings['wall_seconds']:.0f} s[/dim]")
    if options["out_dir"] is not None:
        paths = write_outputs(document, options["out_dir"])
        console.print(f"wrote {', '.join(str(p) for p in paths.values())}")
    failed = [r for r in rows if r.get("error")]
    if failed:
        raise click.ClickException(f"{len(failed)} configuration(s) failed; see the error rows")


CONTENDED = 0.75  # CPU time / (wall time * threads) below this: the run shared its cores


def _contended(row: dict[str, Any] | None) -> bool:
    """Whether a CPU row's process got clearly less CPU than its threads (timings unreliable)."""
    return bool(row) and not row.get("error") and (row.get("cpu_utilisation") or 1.0) < CONTENDED


def _measure(config: BenchConfig, isolate: bool, timeout: float, shared: dict[str, Any]) -> dict[str, Any]:
    """One configuration: a fresh process, or in this one with the model in ``shared`` (built once)."""
    if isolate:
        return measure_isolated(config, timeout=timeout)
    if "model" not in shared:
        shared["model"] = load_bench_model(config)
    row = measure_in_process(config, shared["model"])
    gc.collect()
    if torch.device(config.device).type == "cuda":
        torch.cuda.empty_cache()
    return row


def _grid(options: dict[str, Any]) -> tuple[list[BenchConfig], dict[str, Any]]:
    """Validated configurations (prompt length outer, system inner) and the settings to save."""
    if options["model_path"] is None and options["arch"] not in ARCHITECTURES:
        raise ValueError(f"unknown --arch {options['arch']!r}; choose one of {', '.join(ARCHITECTURES)}")
    lengths = parse_lengths(options["lengths"])
    systems = resolve_systems(options["systems_spec"])
    device = options["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but torch sees no CUDA GPU")
    dtype = options["dtype"] or ("float32" if kind == "cpu" else "bfloat16")
    isolate = options["isolate"] if options["isolate"] is not None else kind == "cpu"
    for name in ("vanilla_steps", "ref_steps", "retries"):
        if options[name] is not None and options[name] < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {options[name]}")
    if options["gen_length"] % options["block_length"] != 0:
        raise ValueError(f"--gen-length {options['gen_length']} is not a multiple of --block-length "
                         f"{options['block_length']}")  # fmt: skip
    blocks = options["gen_length"] // options["block_length"]
    if options["steps"] % blocks != 0:
        raise ValueError(f"--steps {options['steps']} is not a multiple of the {blocks} blocks")
    configs = []
    for length in lengths:
        for system in systems:
            limit = {"vanilla": options["vanilla_steps"], "vanilla-ref": options["ref_steps"]}.get(system)
            configs.append(BenchConfig(
                system=system, prompt_length=length, gen_length=options["gen_length"], steps=options["steps"],
                block_length=options["block_length"], budget=options["budget"], batch=options["batch"],
                arch=options["arch"], model_path=options["model_path"], device=device, dtype=dtype,
                seed=options["seed"], warmup=options["warmup"], repeats=options["repeats"],
                max_passes=limit or None, profile=options["profile_path"], threads=options["threads"],
                count_ops=options["count_ops"], cuda_graphs=options["cuda_graphs"],
            ))  # fmt: skip
    settings = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()},
                "lengths": lengths, "systems": systems, "device": device, "dtype": dtype, "isolate": isolate,
                "system_descriptions": {s: SYSTEMS[s].description for s in systems}}  # fmt: skip
    return configs, settings


def _given_args(ctx: click.Context) -> list[str]:
    """The options given on the command line, re-quoted (for the saved command)."""
    args: list[str] = []
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[param.name]
        flag = param.opts[0]
        if isinstance(param, click.Option) and param.is_flag:
            if param.secondary_opts and value is False:
                flag = param.secondary_opts[0]
            args.append(flag)
        else:
            args += [flag, shlex.quote(str(value))]
    return args
