"""Benchmark output: the terminal table, results.json / results.csv, the Figure-4-style plot, targets.

``results.json`` holds ``{"schema", "created", "command", "machine", "settings", "rows", "targets"}``;
each row is what :func:`maskkv.bench.runner.measure` returns (its ``config`` is the full
configuration). ``results.csv`` has one line per row: machine and configuration columns, then the
measurements, cache bytes by kind flattened as ``cache_<kind>``.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

logger = logging.getLogger(__name__)
SCHEMA = 1
MIB = 2**20

# Issue 6 targets: (key, description, threshold, "<=" or ">=")
TARGETS = (
    ("maskkv_speedup_vs_vanilla", "MaskKV tokens/s / vanilla tokens/s at the longest prompt", 20.0, ">="),
    ("maskkv_offline_speedup_vs_vanilla", "the same for MaskKV with an offline layer profile (the paper's)", 20.0,
     ">="),
    ("maskkv_decode_step_growth", "MaskKV mean decode step, longest / shortest prompt", 1.2, "<="),
    ("maskkv_peak_vs_vanilla", "MaskKV peak memory / vanilla peak memory at the longest prompt", 0.25, "<="),
    ("maskkv_peak_vs_vanilla_ref", "MaskKV peak memory / vanilla (all-row logits) peak memory", 0.25, "<="),
    ("maskkv_peak_increment_vs_vanilla_ref",
     "the same with the memory after model construction subtracted from both", 0.25, "<="),
    ("maskkv_tensor_peak_vs_vanilla", "MaskKV / vanilla tensor peak (weights, activations, cache; no runtime)",
     0.25, "<="),
    ("maskkv_tensor_peak_vs_vanilla_ref", "MaskKV / vanilla (all-row logits) tensor peak", 0.25, "<="),
    ("maskkv_cache_vs_dllm_cache", "MaskKV cache bytes / dLLM-Cache cache bytes at the longest prompt", 0.10, "<="),
    ("dllm_cache_speedup_vs_vanilla", "dLLM-Cache tokens/s / vanilla tokens/s at the longest prompt", 5.0, ">="),
)  # fmt: skip


# ----- machine ----------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(dirty)}


def machine_info(device: str) -> dict[str, Any]:
    """CPU, cores, accelerator, versions and the git commit of this checkout (if any)."""
    from .. import __version__

    info: dict[str, Any] = {
        "cpu": _cpu_model(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
        "maskkv": __version__, "device": device, "gpu": None, "cuda": torch.version.cuda,
    }  # fmt: skip
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(torch.device(device)).total_memory
    try:
        with open("/proc/meminfo") as f:
            info["ram_bytes"] = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    info["git"] = _git_commit()
    return info


# ----- targets ----------------------------------------------------------------------------------


def _find(rows: list[dict[str, Any]], system: str, length: int) -> dict[str, Any] | None:
    for row in rows:
        if row["config"]["system"] == system and row["config"]["prompt_length"] == length and not row.get("error"):
            return row
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b in (None, 0) else a / b


def evaluate_targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue-6 ratios at the longest (and shortest) prompt length, with pass/fail.

    Missing systems give ``None`` values. Peak memory is the measured peak (CUDA: allocated bytes;
    CPU: peak RSS of the configuration's process, which includes the weights and the torch runtime); the
    tensor peak leaves out the runtime on CPU (peak RSS less the RSS before the model was built), which
    makes it the CPU counterpart of CUDA's allocated peak.
    """
    lengths = sorted({r["config"]["prompt_length"] for r in rows if not r.get("error")})
    if not lengths:
        return {}
    long, short = lengths[-1], lengths[0]
    m, m_short, m_off = _find(rows, "maskkv", long), _find(rows, "maskkv", short), _find(rows, "maskkv-offline", long)
    v, ref, dc = _find(rows, "vanilla", long), _find(rows, "vanilla-ref", long), _find(rows, "dllm-cache", long)

    def get(row: dict[str, Any] | None, *keys: str) -> Any:
        for key in keys:
            if row is None:
                return None
            row = row.get(key)
        return row

    values = {
        "maskkv_speedup_vs_vanilla": _ratio(get(m, "tokens_per_s"), get(v, "tokens_per_s")),
        "maskkv_offline_speedup_vs_vanilla": _ratio(get(m_off, "tokens_per_s"), get(v, "tokens_per_s")),
        "maskkv_decode_step_growth": _ratio(get(m, "decode_step_mean_s"), get(m_short, "decode_step_mean_s"))
        if long != short else None,
        "maskkv_peak_vs_vanilla": _ratio(get(m, "peak_memory_bytes"), get(v, "peak_memory_bytes")),
        "maskkv_peak_vs_vanilla_ref": _ratio(get(m, "peak_memory_bytes"), get(ref, "peak_memory_bytes")),
        "maskkv_peak_increment_vs_vanilla_ref": _ratio(get(m, "peak_increment_bytes"), get(ref, "peak_increment_bytes")),
        "maskkv_tensor_peak_vs_vanilla": _ratio(get(m, "tensor_peak_bytes"), get(v, "tensor_peak_bytes")),
        "maskkv_tensor_peak_vs_vanilla_ref": _ratio(get(m, "tensor_peak_bytes"), get(ref, "tensor_peak_bytes")),
        "maskkv_cache_vs_dllm_cache": _ratio(get(m, "cache_bytes", "total"), get(dc, "cache_bytes", "total")),
        "dllm_cache_speedup_vs_vanilla": _ratio(get(dc, "tokens_per_s"), get(v, "tokens_per_s")),
    }  # fmt: skip
    out: dict[str, Any] = {"long_prompt": long, "short_prompt": short,
                           "contended_rows": [f"{r['config']['system']}@{r['config']['prompt_length']}"
                                              for r in rows if r.get("contended")]}  # fmt: skip
    for key, description, threshold, op in TARGETS:
        value = values[key]
        holds = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        out[key] = {"description": description, "value": value, "threshold": threshold, "op": op, "holds": holds}
    return out


# ----- terminal ---------------------------------------------------------------------------------


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MIB:,.1f}"


def _ops(ops: dict[str, Any] | None, key: str) -> str:
    value = None if not ops else ops.get(key)
    return "-" if value is None else f"{value:.0f}" if isinstance(value, float) else str(value)


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{1000 * s:,.1f}"


def results_table(rows: list[dict[str, Any]], title: str = "maskkv bench") -> Table:
    """One line per configuration; ``*`` marks times extrapolated from the first passes."""
    table = Table(title=title, header_style="bold")
    for name in ("system", "prompt", "tok/s", "x van.", "1st pass ms", "step ms", "NFE", "cache MiB",
                 "prompt KV MiB", "kept", "peak MiB", "model MiB", "1st+step +MiB", "ops/layer", "syncs"):
        table.add_column(name, justify="left" if name == "system" else "right", no_wrap=True)
    vanilla = {r["config"]["prompt_length"]: r["tokens_per_s"] for r in rows
               if r["config"]["system"] == "vanilla" and not r.get("error")}  # fmt: skip
    for r in rows:
        c = r["config"]
        if r.get("error"):
            table.add_row(c["system"], str(c["prompt_length"]), f"[red]error: {r['error'][:60]}[/red]")
            continue
        star = "*" if r["extrapolated"] else ""
        star += "!" if r.get("contended") else ""
        base = vanilla.get(c["prompt_length"])
        cache = r.get("cache_bytes") or {}
        kept = "-"
        if cache.get("prompt_pairs"):
            kept = f"{100 * cache['kept_prompt_pairs'] / cache['prompt_pairs']:.1f}%"
        table.add_row(
            c["system"], str(c["prompt_length"]), f"{r['tokens_per_s']:.2f}{star}",
            "-" if not base else f"{r['tokens_per_s'] / base:.1f}", _ms(r["first_pass_s"]),
            _ms(r["decode_step_mean_s"]) + star, str(r["nfe"]), _mib(cache.get("total")),
            _mib(cache.get("prompt_kv")), kept, _mib(r.get("peak_memory_bytes")), _mib(r.get("model_memory_bytes")),
            _mib(r.get("first_pass_increment_bytes")), _ops(r.get("ops_per_step"), "ops_per_layer_per_step_max"),
            _ops(r.get("ops_per_step"), "syncs_per_step_max"),
        )  # fmt: skip
    return table


def targets_table(targets: dict[str, Any]) -> Table:
    table = Table(title=f"targets (prompt {targets.get('long_prompt')} vs {targets.get('short_prompt')})",
                  header_style="bold")  # fmt: skip
    for name in ("target", "value", "threshold", "holds"):
        table.add_column(name)
    for key, *_ in TARGETS:
        t = targets.get(key)
        if t is None:
            continue
        value = "-" if t["value"] is None else f"{t['value']:.3g}"
        holds = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "n/a"}[t["holds"]]
        table.add_row(t["description"], value, f"{t['op']} {t['threshold']:g}", holds)
    return table


def print_results(rows: list[dict[str, Any]], targets: dict[str, Any], console: Console) -> None:
    console.print(results_table(rows))
    if any(r.get("contended") for r in rows):
        console.print("[yellow]! the process got under 75% of its threads' CPU time in every attempt: another "
                      "process competed, its times are too slow[/yellow]")
    console.print("[dim]* extrapolated: first pass + mean of the timed decode steps x (steps - 1). "
                  "peak: CUDA max allocated, CPU peak RSS of the configuration's own process; "
                  "model: the same right after building the model[/dim]")
    if targets:
        console.print(targets_table(targets))


# ----- files ------------------------------------------------------------------------------------


def build_document(rows: list[dict[str, Any]], *, machine: dict[str, Any], settings: dict[str, Any],
                   command: list[str]) -> dict[str, Any]:  # fmt: skip
    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine,
        "settings": settings,
        "rows": rows,
        "targets": evaluate_targets(rows),
    }


CSV_METRICS = ("seconds", "tokens_per_s", "extrapolated", "timed_passes", "first_pass_s", "decode_step_mean_s",
               "decode_step_median_s", "nfe", "sampler_overhead_s", "cpu_seconds", "threads", "cpu_utilisation",
               "contended", "attempts", "loadavg_1m", "peak_memory_bytes", "model_memory_bytes",
               "runtime_memory_bytes", "peak_increment_bytes", "tensor_peak_bytes", "memory_measure", "cache_bytes_match",
               "prompt_kv_logical_bytes", "prompt_kv_padding_bytes", "first_pass_peak_bytes",
               "first_pass_step_peak_bytes", "first_pass_increment_bytes", "captured", "capture_failure", "error")  # fmt: skip
OPS_METRICS = ("ops_per_step_mean", "ops_per_step_max", "ops_per_layer_per_step", "ops_per_layer_per_step_max",
               "syncs_per_step_mean", "syncs_per_step_max", "syncs_outside_steps")  # fmt: skip
CACHE_KINDS = ("prompt_kv", "response_kv", "response_features", "prompt_features", "total", "peak",
               "kept_prompt_pairs", "prompt_pairs")  # fmt: skip


def write_csv(document: dict[str, Any], path: Path) -> None:
    machine = document["machine"]
    fixed = {"cpu": machine["cpu"], "cpu_cores": machine["cpu_cores"], "gpu": machine.get("gpu"),
             "torch": machine["torch"], "maskkv": machine["maskkv"], "git_commit": machine["git"]["commit"]}  # fmt: skip
    lines = []
    for row in document["rows"]:
        line = {**fixed, "system_label": row["system_label"], **row["config"]}
        model = row.get("model") or {}
        line["parameters"] = model.get("parameters")
        for key in CSV_METRICS:
            line[key] = row.get(key)
        cache = row.get("cache_bytes") or {}
        for kind in CACHE_KINDS:
            line[f"cache_{kind}"] = cache.get(kind)
        ops = row.get("ops_per_step") or {}
        for key in OPS_METRICS:
            line[key] = ops.get(key)
        lines.append(line)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(lines[0]) if lines else ["system"])
        writer.writeheader()
        writer.writerows(lines)


def plot(document: dict[str, Any], path: Path) -> None:
    """Tokens/s, peak memory and decode-step time vs prompt length, one line per system (Figure 4).

    matplotlib's object API on the Agg canvas: no pyplot, no global backend switch, no display needed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in document["rows"] if not r.get("error")]
    systems: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        systems.setdefault(r["config"]["system"], []).append(r)
    fig = Figure(figsize=(16, 4.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    panels = (
        (axes[0], "tokens_per_s", 1.0, "decoded tokens / s"),
        (axes[1], "peak_memory_bytes", 1 / 2**30, "peak memory (GiB)"),
        (axes[2], "decode_step_mean_s", 1000.0, "mean decode step (ms)"),
    )
    for ax, key, scale, label in panels:
        for name, series in systems.items():
            series = sorted(series, key=lambda r: r["config"]["prompt_length"])
            points = [(r["config"]["prompt_length"], r[key] * scale) for r in series if r.get(key) is not None]
            if not points:
                continue
            xs, ys = zip(*points)
            dashed = any(r["extrapolated"] for r in series) and key != "peak_memory_bytes"
            ax.plot(xs, ys, marker="o", linestyle="--" if dashed else "-", label=series[0]["system_label"])
        if key == "peak_memory_bytes":
            baselines = sorted(r["model_memory_bytes"] for r in rows if r.get("model_memory_bytes"))
            if baselines:
                ax.axhline(baselines[len(baselines) // 2] * scale, color="grey", linestyle=":",
                           label="after model construction")  # fmt: skip
                ax.legend(fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:  # an error-only run draws no line
        axes[0].legend(fontsize=8)
    first = rows[0]["config"] if rows else {}
    machine = document["machine"]
    where = machine.get("gpu") or machine.get("cpu")
    threads = f", {rows[0]['threads']} thread(s)" if rows and rows[0].get("threads") and not machine.get("gpu") else ""
    fig.suptitle(f"{(rows[0]['model']['name'] if rows else '')} {first.get('dtype', '')} on {where}{threads}; "
                 f"gen {first.get('gen_length')}, steps {first.get('steps')}, block {first.get('block_length')}, "
                 f"budget {first.get('budget')} (dashed: extrapolated)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_outputs(document: dict[str, Any], out_dir: Path, *, figure: bool = True) -> dict[str, Path]:
    """results.json, results.csv and figure.png (with ``figure``) under ``out_dir``.

    If matplotlib (a dependency) cannot be imported, the figure is left out with a warning that says so.

    The JSON is written to a temporary file and renamed, so an interrupted write never leaves a
    truncated results.json behind.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "csv": out_dir / "results.csv", "png": out_dir / "figure.png"}
    partial = paths["json"].with_suffix(".json.tmp")
    partial.write_text(json.dumps(document, indent=1) + "\n")
    partial.replace(paths["json"])
    write_csv(document, paths["csv"])
    if not figure:
        del paths["png"]
        return paths
    try:
        plot(document, paths["png"])
    except ImportError as err:
        logger.warning("matplotlib, a dependency of maskkv, cannot be imported (%s): no %s; `pip install "
                       "matplotlib` (or rerun `bash scripts/install.sh`) and rerun the benchmark", err, paths["png"])
        del paths["png"]
    return paths
