"""Budget sweeps: methods x budgets x tasks plus the full-cache reference (MaskKV Figure 3 and Table 1).

Each (method, budget) is an ordinary LongBench and/or RULER run in ``<out>/runs/``, so a sweep resumes exactly like
those runs do: finished predictions are reused, only missing samples are generated. The sweep then writes

- ``sweep.json`` / ``sweep.csv``: every score, with the run folders and configuration hashes;
- ``sweep_table.md``: a Table-1-style markdown table (best value per budget in bold; last column the average as
  a percentage of the full-cache average);
- ``sweep_curves.png``: score-vs-budget curves, one panel per task plus the average, the full cache dashed.

A task is a LongBench task name (``multi_news``) or a RULER-style task (``niah_single_1``, scored at every
``--lengths`` value, columns ``<task>-<length>``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .common import (
    EvalError,
    GenerationConfig,
    ModelHandle,
    RunContext,
    mean,
    write_csv_atomic,
    write_json_atomic,
)
from .longbench import ENGLISH_TASKS, LongBenchRun, Protocol, run_longbench
from .ruler import RULER_TASKS, RulerRun, run_ruler


@dataclass
class SweepRun:
    """Resolved inputs of ``maskkv eval sweep``."""

    handle: ModelHandle
    gen: GenerationConfig  # the shared decoding settings; press and budget are set per run
    methods: list[str]
    budgets: list[int]
    tasks: list[str]
    protocol: Protocol | None = None
    data: Path | None = None
    limit: int | None = None
    gen_length: int | None = None
    ruler_lengths: tuple[int, ...] = (4096,)
    num_samples: int = 100
    haystack: str | None = None
    words: str = "auto"
    chat: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def split_tasks(tasks: list[str]) -> tuple[list[str], list[str]]:
    """LongBench tasks and RULER tasks; an unknown name raises with both lists of valid names."""
    longbench, ruler = [], []
    for task in tasks:
        if task in ENGLISH_TASKS:
            longbench.append(task)
        elif task in RULER_TASKS:
            ruler.append(task)
        else:
            raise EvalError(f"unknown task {task!r}. LongBench tasks: {', '.join(ENGLISH_TASKS)}. RULER-style tasks: "
                            f"{', '.join(RULER_TASKS)}")
    return longbench, ruler


def run_sweep(sweep: SweepRun, out_dir: Path, make_ctx: Callable[[dict[str, Any], str], RunContext], *,
              overwrite: bool = False) -> dict[str, Any] | None:
    """Run the full-cache reference and every (method, budget), then write the table, the curves and the JSON."""
    longbench_tasks, ruler_tasks = split_tasks(sweep.tasks)
    if longbench_tasks and (sweep.protocol is None or sweep.data is None):
        raise EvalError("LongBench tasks in a sweep need --data DIR (or --hf)")
    if not sweep.methods or not sweep.budgets:
        raise EvalError("a sweep needs at least one --methods entry and one --budgets value")
    points: list[tuple[str, int | None]] = [("full", None)] + [(m, b) for m in sweep.methods for b in sweep.budgets]
    scores: dict[str, dict[str, float]] = {}
    runs: dict[str, dict[str, str]] = {}
    is_main = True
    for method, budget in points:
        gen = replace(sweep.gen, press=None if method == "full" else method, budget=budget,
                      press_options=sweep.gen.press_options if method != "full" else {})
        name = "full" if method == "full" else f"{method}-{budget}"
        point_scores: dict[str, float] = {}
        runs[name] = {}
        if longbench_tasks:
            run = LongBenchRun(handle=sweep.handle, gen=gen, protocol=sweep.protocol, tasks=tuple(longbench_tasks),
                               data=sweep.data, limit=sweep.limit, gen_length=sweep.gen_length)
            result = run_longbench(run, lambda config, n=f"longbench_{name}": make_ctx(config, n), overwrite=overwrite)
            runs[name]["longbench"] = f"runs/longbench_{name}"
            if result is None:
                is_main = False
            else:
                point_scores.update(result["scores"])
        if ruler_tasks:
            run_r = RulerRun(handle=sweep.handle, gen=gen, tasks=tuple(ruler_tasks), lengths=sweep.ruler_lengths,
                             num_samples=sweep.num_samples, seed=gen.seed, chat=sweep.chat, haystack=sweep.haystack,
                             words=sweep.words, gen_length=sweep.gen_length)
            result = run_ruler(run_r, lambda config, n=f"ruler_{name}": make_ctx(config, n), overwrite=overwrite)
            runs[name]["ruler"] = f"runs/ruler_{name}"
            if result is None:
                is_main = False
            else:
                for task, per_length in result["scores"].items():
                    for length, value in per_length.items():
                        point_scores[f"{task}-{length}"] = value
        scores[name] = point_scores
    if not is_main:
        return None
    columns = list(scores["full"])
    for values in scores.values():
        values["average"] = round(mean([values[c] for c in columns]), 2) if columns else float("nan")
    summary = {
        "model": sweep.handle.record(), "methods": sweep.methods, "budgets": sweep.budgets, "tasks": sweep.tasks,
        "columns": columns, "scores": scores, "runs": runs,
        "generation": {k: v for k, v in sweep.gen.record().items() if k not in ("press", "budget", "press_repr")},
    }
    write_json_atomic(out_dir / "sweep.json", summary)
    write_csv_atomic(out_dir / "sweep.csv", ["method", "budget", *columns, "average"],
                     [[*_split_name(name), *[values.get(c) for c in columns], values["average"]]
                      for name, values in scores.items()])
    (out_dir / "sweep_table.md").write_text(markdown_table(scores, columns, sweep.methods, sweep.budgets),
                                            encoding="utf-8")
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for column in [*columns, "average"]:
        curves[column] = {m: [(b, scores[f"{m}-{b}"][column]) for b in sweep.budgets] for m in sweep.methods}
    try:
        from .plots import budget_curves

        model = Path(sweep.handle.path.rstrip("/")).name
        summary["curves"] = str(budget_curves(curves, {c: scores["full"][c] for c in [*columns, "average"]},
                                              out_dir / "sweep_curves.png", title=model))
    except EvalError as err:
        summary["curves"] = None
        summary["curves_error"] = str(err)
    write_json_atomic(out_dir / "sweep.json", summary)
    return summary


def _split_name(name: str) -> tuple[str, int | str]:
    if name == "full":
        return "full", ""
    method, budget = name.rsplit("-", 1)
    return method, int(budget)


def markdown_table(scores: dict[str, dict[str, float]], columns: list[str], methods: list[str],
                   budgets: list[int]) -> str:
    """Table 1 layout: the full cache first, then one block per budget; best per budget and column in bold."""
    header = ["Method", "Budget", *columns, "Avg.", "% of Full"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(columns) + 2)) + "|"]
    full = scores["full"]

    def relative(avg: float) -> str:
        base = full["average"]
        return f"{100 * avg / base:.1f}%" if base and not math.isnan(base) else "–"

    lines.append("| " + " | ".join(["Full cache", "–", *[f"{full[c]:.2f}" for c in columns],
                                    f"{full['average']:.2f}", relative(full["average"])]) + " |")
    for budget in budgets:
        block = {m: scores[f"{m}-{budget}"] for m in methods}
        best = {c: max(v[c] for v in block.values()) for c in [*columns, "average"]}
        for method, values in block.items():
            cells = [(f"**{values[c]:.2f}**" if values[c] == best[c] and len(block) > 1 else f"{values[c]:.2f}")
                     for c in [*columns, "average"]]
            lines.append("| " + " | ".join([method, str(budget), *cells, relative(values["average"])]) + " |")
    return "\n".join(lines) + "\n"
