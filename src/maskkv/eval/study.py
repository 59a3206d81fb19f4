"""The eviction study on the shipped tiny model (issue 7, part 4): accuracy vs budget for every press.

For each held-out task and prompt length (the trained model's own tasks, :mod:`maskkv.train.evaluate`), every
sample is answered once with the full prompt cache (dLLM-Cache, no eviction) and once per (method, budget)
with that press on the same cache policy; the answer is right when it equals the expected text exactly.

Results are appended to ``<out>/predictions.jsonl`` one sample at a time (flushed), so an interrupted study
resumes where it stopped. Then the study writes

- ``study.json`` / ``study.csv``: accuracy per (task, length, method, budget), the full-cache accuracy, the
  budget as a fraction of the mean prompt, and the share of full-cache accuracy kept;
- ``study_table.md``: one table per (task, length), methods x budgets;
- ``study_curves.png``: accuracy-vs-budget curves, one panel per (task, length), the full cache dashed.

``maskkv`` uses the checkpoint's ``maskkv_profile.json`` when there is one (offline layer budgets, MaskKV's
Eq. 8); every other press runs with its own defaults at the same average budget per KV head and layer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .common import (
    EvalError,
    RowWriter,
    mean,
    read_rows,
    write_csv_atomic,
    write_json_atomic,
)

#: The methods of issue 7's study (MaskKV and the paper's baselines, plus StreamingLLM and random).
STUDY_METHODS = ("maskkv", "snapkv", "pyramidkv", "squeeze", "adakv", "streaming", "random")
STUDY_BUDGETS = (16, 32, 64, 128, 256, 512)
STUDY_TASKS = ("single", "multikey")
STUDY_LENGTHS = (1024, 2048, 4096)
FULL = "full"


@dataclass
class StudyConfig:
    """What ``maskkv eval study`` runs; the folder's predictions belong to one model and sample set."""

    model: str
    out_dir: Path
    methods: Sequence[str] = STUDY_METHODS
    budgets: Sequence[int] = STUDY_BUDGETS
    tasks: Sequence[str] = STUDY_TASKS
    lengths: Sequence[int] = STUDY_LENGTHS
    count: int = 40
    filler: str = "essays"

    def identity(self) -> dict[str, Any]:
        """What must match for earlier predictions in ``out_dir`` to be reused."""
        return {"model": str(self.model), "count": self.count, "filler": self.filler}


def _key(task: str, length: int, index: int, method: str, budget: int | None) -> str:
    return f"{task}|{length}|{index}|{method}|{budget if budget is not None else '-'}"


def _press_factory(method: str, budget: int, profile: str | None) -> Callable[[], Any]:
    from ..presses import make_press

    if method == "maskkv" and profile is not None:
        return lambda: make_press(method, budget, profile=profile)
    return lambda: make_press(method, budget)


def run_study(config: StudyConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the study and write its files; returns the ``study.json`` document."""
    import torch
    from tqdm import tqdm

    from .. import load_model, load_tokenizer
    from ..cache import DLLMCache
    from ..presses import PRESSES
    from ..train.evaluate import (
        answer,
        heldout_samples,
        make_heldout_builder,
        prompt_ids,
    )

    unknown = [m for m in config.methods if m not in PRESSES]
    if unknown:
        raise EvalError(f"--methods: unknown press(es) {unknown}; choose from {sorted(PRESSES)}")
    if any(b <= 0 for b in config.budgets):
        raise EvalError(f"--budgets must be positive, got {list(config.budgets)}")
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    identity_path = out / "study_identity.json"
    if identity_path.exists() and json.loads(identity_path.read_text()) != config.identity():
        raise EvalError(f"{out} holds a study of another model or sample set ({identity_path}); "
                        "use a new --out folder or delete it")  # fmt: skip
    write_json_atomic(identity_path, config.identity())

    model, tokenizer = load_model(config.model), load_tokenizer(config.model)
    profile_path = Path(config.model) / "maskkv_profile.json"
    profile = str(profile_path) if profile_path.is_file() else None
    predictions = out / "predictions.jsonl"
    done = {row["key"]: row for row in read_rows(predictions)}
    builder = make_heldout_builder(tokenizer, config.filler)
    runs: list[tuple[str, int | None]] = [(FULL, None)] + [(m, b) for m in config.methods for b in config.budgets]
    cells = [(task, length) for length in config.lengths for task in config.tasks]
    total = len(cells) * config.count * len(runs)
    bar = tqdm(total=total, initial=sum(1 for k in done if k.split("|")[3] in {r[0] for r in runs}),
               disable=not progress, desc="study")  # fmt: skip
    start = time.perf_counter()
    with RowWriter(predictions) as writer, torch.inference_mode():
        for task, length in cells:
            samples = heldout_samples(builder, task, length, config.count)
            for index, sample in enumerate(samples):
                ids = None
                for method, budget in runs:
                    key = _key(task, length, index, method, budget)
                    if key in done:
                        continue
                    if ids is None:
                        ids = prompt_ids(tokenizer, sample.content)
                    press = None if method == FULL else _press_factory(method, budget, profile)()
                    text, result = answer(model, tokenizer, ids, cache=DLLMCache(), press=press)
                    row = {"key": key, "task": task, "length": length, "index": index, "method": method,
                           "budget": budget, "prompt_tokens": int(ids.shape[1]), "answer": sample.answer,
                           "prediction": text, "exact": text == sample.answer,
                           "kept_prompt_pairs": result.cache_bytes.get("kept_prompt_pairs") if result.cache_bytes
                           else None}  # fmt: skip
                    writer.write(row)
                    done[key] = row
                    bar.update(1)
    bar.close()
    document = summarize_study(list(done.values()), config, seconds=time.perf_counter() - start)
    write_study_files(document, out)
    return document


def summarize_study(rows: Sequence[dict[str, Any]], config: StudyConfig, *, seconds: float = 0.0) -> dict[str, Any]:
    """Accuracy per cell and run, the full-cache reference and the share of it each run keeps."""
    wanted = {FULL, *config.methods}
    groups: dict[tuple[str, int, str, int | None], list[dict[str, Any]]] = {}
    for row in rows:
        if row["method"] in wanted and row["task"] in config.tasks and row["length"] in config.lengths \
                and row["index"] < config.count and (row["budget"] is None or row["budget"] in config.budgets):
            groups.setdefault((row["task"], row["length"], row["method"], row["budget"]), []).append(row)
    results = []
    for task in config.tasks:
        for length in config.lengths:
            full_rows = groups.get((task, length, FULL, None), [])
            full = mean([float(r["exact"]) for r in full_rows]) if full_rows else None
            prompt = mean([float(r["prompt_tokens"]) for r in full_rows]) if full_rows else None
            results.append({"task": task, "length": length, "method": FULL, "budget": None, "samples": len(full_rows),
                            "accuracy": full, "mean_prompt_tokens": prompt, "budget_fraction": None,
                            "share_of_full": 1.0 if full else None})  # fmt: skip
            for method in config.methods:
                for budget in config.budgets:
                    cell = groups.get((task, length, method, budget), [])
                    acc = mean([float(r["exact"]) for r in cell]) if cell else None
                    results.append({
                        "task": task, "length": length, "method": method, "budget": budget, "samples": len(cell),
                        "accuracy": acc, "mean_prompt_tokens": prompt,
                        "budget_fraction": None if not prompt else budget / prompt,
                        "share_of_full": None if acc is None or not full else acc / full,
                    })  # fmt: skip
    return {"config": {**{k: v for k, v in asdict(config).items() if k != "out_dir"},
                       "out_dir": str(config.out_dir)},
            "seconds": seconds, "results": results}  # fmt: skip


def _cell_table(results: list[dict[str, Any]], task: str, length: int, methods: Sequence[str],
                budgets: Sequence[int]) -> list[str]:  # fmt: skip
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    by = {(r["method"], r["budget"]): r for r in results if r["task"] == task and r["length"] == length}
    full = by.get((FULL, None), {})
    prompt = full.get("mean_prompt_tokens")
    lines = [f"### {task}, {length} tokens (mean prompt {prompt:.0f} tokens; full cache "
             f"{pct(full.get('accuracy'))} %, {full.get('samples', 0)} samples)" if prompt else f"### {task}, {length}",
             "", "| method | " + " | ".join(f"B={b} ({100 * b / prompt:.1f} %)" if prompt else f"B={b}" for b in budgets)
             + " |", "|---|" + "---:|" * len(budgets)]  # fmt: skip
    best = [max((by.get((m, b), {}).get("accuracy") or 0.0) for m in methods) for b in budgets]
    for method in methods:
        values = [by.get((method, b), {}).get("accuracy") for b in budgets]
        cells = [f"**{pct(v)}**" if v is not None and v == best[i] and v > 0 else pct(v) for i, v in enumerate(values)]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines + [""]


def write_study_files(document: dict[str, Any], out: Path) -> None:
    """``study.json``, ``study.csv``, ``study_table.md`` and ``study_curves.png`` (a note says why if it fails)."""
    from .plots import budget_curves

    config, results = document["config"], document["results"]
    write_json_atomic(out / "study.json", document)
    header = ["task", "length", "method", "budget", "samples", "accuracy", "mean_prompt_tokens", "budget_fraction",
              "share_of_full"]  # fmt: skip
    write_csv_atomic(out / "study.csv", header, ([r[h] for h in header] for r in results))
    lines = ["# Eviction study: exact-match accuracy (%) by budget (K/V pairs per head and layer)", ""]
    for task in config["tasks"]:
        for length in config["lengths"]:
            lines += _cell_table(results, task, length, config["methods"], config["budgets"])
    (out / "study_table.md").write_text("\n".join(lines))
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    full: dict[str, float] = {}
    for r in results:
        if r["accuracy"] is None:
            continue
        panel = f"{r['task']} @ {r['length']}"
        if r["method"] == FULL:
            full[panel] = 100 * r["accuracy"]
        else:
            curves.setdefault(panel, {}).setdefault(r["method"], []).append((r["budget"], 100 * r["accuracy"]))
    if curves:
        try:
            budget_curves(curves, full, out / "study_curves.png", title="Exact match (%) vs budget")
        except EvalError as err:  # matplotlib missing: the numbers are already written
            print(f"note: {err}")
