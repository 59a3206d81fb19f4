"""Needle-in-a-haystack with DuoAttention's protocol, the configuration MaskKV's Figures 6 and 8 use.

Specification: ``shared/spec/niah_ruler.md`` section 1 (strings, insertion, grid, generation, scoring, output) and
section 5 (the heat map). Strings of 1.1 are DuoAttention's (mit-han-lab/duo-attention
``eval/needle/needle_in_haystack.py``); the code is this project's.

Per cell ``(context length L, depth d)``: the haystack is cut to ``L`` tokens of the evaluated model (special tokens
counted), re-encoded without special tokens, shortened to leave ``L - 200`` tokens for haystack + needle, the needle
is spliced at token index ``int(len * d / 100)`` (appended at d = 100), and the decoded text is wrapped in the
literal book prompt. The answer is scored with ``duo_overlap`` (1.5: shared lower-cased words with the 12 expected
words over 12; a perfect answer scores 11/12) and, when the optional ``rouge-score`` package is installed, with
DuoAttention's ROUGE-1 x 10.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import (
    EvalError,
    GenerationConfig,
    ModelHandle,
    RunContext,
    TaskPlan,
    generate_text,
    mean,
    prepare_run_dir,
    run_tasks,
    sample_seed,
    selected_rows,
    write_csv_atomic,
    write_json_atomic,
)
from .words import Haystack, load_haystack

NEEDLE = ("\n\nRemember, the best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny "
          "day.\n\n")
QUESTION = "what is the best thing to do in San Francisco?\n\nAnswer: The best thing to do in San Francisco is"
PROMPT = ("<|im_start|> This is a very long story book: <book> {context} </book>.\n\nQuestion: Based on the content "
          "of the book, {question}")
EXPECTED_ANSWER = "eat a sandwich and sit in Dolores Park on a sunny day."
_EXPECTED_WORDS = EXPECTED_ANSWER.lower().split()  # 12 words, 11 distinct

#: MaskKV Figure 8's grid (1.3): 13 lengths from 2000 to 16000, DuoAttention's 10 depths.
DEFAULT_MIN_LENGTH, DEFAULT_MAX_LENGTH, DEFAULT_NUM_LENGTHS, DEFAULT_NUM_DEPTHS = 2000, 16000, 13, 10


def grid_lengths(min_length: int, max_length: int, num: int) -> list[int]:
    """``round(linspace(min, max, num))`` as ints (1.3)."""
    return [int(v) for v in np.round(np.linspace(min_length, max_length, num))]


def grid_depths(num: int) -> list[int]:
    """``round(linspace(0, 100, num))`` as ints: [0, 11, 22, 33, 44, 56, 67, 78, 89, 100] for 10."""
    return [int(v) for v in np.round(np.linspace(0, 100, num))]


def duo_overlap(response: str) -> float:
    """DuoAttention's plotted score (1.5): |set(words of the response) & set(expected words)| / 12."""
    words = set(response.lower().split())
    return len(words & set(_EXPECTED_WORDS)) / len(_EXPECTED_WORDS)


def rouge1_x10(response: str) -> float | None:
    """DuoAttention's stored score: ROUGE-1 F (Google ``rouge-score``, stemming) x 10; None if not installed."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        return None
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    return 10 * scorer.score(NEEDLE, response)["rouge1"].fmeasure


class HaystackBuilder:
    """Cuts a haystack to a token length and splices the needle (1.2), with the evaluated model's tokenizer."""

    def __init__(self, tokenizer: Any, haystack: Haystack, max_length: int) -> None:
        self.tokenizer = tokenizer
        text = haystack.text
        if not text.strip():
            raise EvalError(f"the haystack ({haystack.source}) is empty")
        passes = 1
        ids = self._encode_prefix(text, max_length)
        while len(ids) < max_length:  # repeat whole passes over the files (1.2 step 1)
            passes += 1
            ids = self._encode_prefix(haystack.text * passes, max_length)
        self.ids = ids
        self.passes = passes
        self.needle_ids = tokenizer(NEEDLE, add_special_tokens=False)["input_ids"]

    def _encode_prefix(self, text: str, max_length: int) -> list[int]:
        """Encode with special tokens; only a prefix of the text long enough for ``max_length`` tokens."""
        chars = max_length * 12
        while True:
            piece = text[:chars]
            ids = self.tokenizer(piece, add_special_tokens=True)["input_ids"]
            if len(ids) >= max_length or chars >= len(text):
                return ids
            chars *= 2

    def context(self, length: int, depth: int, buffer: int) -> str:
        """The haystack of ``length`` nominal tokens with the needle at ``depth`` percent (1.2 steps 2-3)."""
        tok = self.tokenizer
        text = tok.decode(self.ids[:length], skip_special_tokens=True)
        hay = tok(text, add_special_tokens=False)["input_ids"]
        budget = length - buffer
        if len(hay) + len(self.needle_ids) > budget:
            hay = hay[: max(0, budget - len(self.needle_ids))]
        if depth >= 100:
            spliced = hay + self.needle_ids
        else:
            position = int(len(hay) * depth / 100)
            spliced = hay[:position] + self.needle_ids + hay[position:]
        return tok.decode(spliced, skip_special_tokens=True)


def encode_prompt(tokenizer: Any, context: str, *, chat: bool) -> torch.Tensor:
    """The literal book prompt tokenised with special tokens (1.2 step 4), or as one chat user turn."""
    text = PROMPT.format(context=context, question=QUESTION)
    if chat:
        from ..text import encode_prompt as chat_encode

        return chat_encode(tokenizer, text, chat=True)
    return tokenizer(text, add_special_tokens=True, return_tensors="pt")["input_ids"]


@dataclass
class NiahRun:
    """Resolved inputs of one ``maskkv eval niah`` invocation (several methods share the grid)."""

    handle: ModelHandle
    gens: list[GenerationConfig]
    lengths: list[int]
    depths: list[int]
    haystack: str | None = None
    length_buffer: int = 200
    chat: bool = False
    gen_length: int = 32
    labels: list[str] = field(default_factory=list)


def method_label(gen: GenerationConfig) -> str:
    return "Full" if gen.press is None else gen.press


def cells(lengths: list[int], depths: list[int]) -> list[dict[str, Any]]:
    """Grid cells in length-major order, keyed ``"<length>-<depth>-<needle>"`` (1.6)."""
    out = []
    for length in lengths:
        for depth in depths:
            out.append({"index": len(out), "key": f"{length}-{depth}-0", "length": length, "depth": depth})
    return out


def pivot(rows: list[dict[str, Any]], lengths: list[int], depths: list[int]) -> list[list[float | None]]:
    """Mean ``duo_overlap`` per (depth, length): rows = depths ascending, columns = lengths ascending (5)."""
    cell: dict[tuple[int, int], list[float]] = {}
    for row in rows:
        cell.setdefault((row["depth_percent"], row["context_length"]), []).append(row["duo_overlap"])
    return [[(mean(cell[(d, n)]) if (d, n) in cell else None) for n in lengths] for d in depths]


def run_niah(run: NiahRun, out_dir: Path, make_ctx: Any, *, overwrite: bool = False) -> dict[str, Any] | None:
    """Run every method over the grid (resumable per cell), write pivots and the heat map on rank 0."""
    tokenizer = run.handle.tokenizer
    if run.chat and not run.handle.has_chat_template():
        raise EvalError(f"--chat was given but the tokenizer of {run.handle.path} has no chat template; "
                        "pass --no-chat")
    haystack = load_haystack(run.haystack)
    builder = HaystackBuilder(tokenizer, haystack, max(run.lengths))
    grid = cells(run.lengths, run.depths)
    summary: dict[str, Any] = {"lengths": run.lengths, "depths": run.depths, "methods": {}}
    panels = []
    is_main = True
    for gen in run.gens:
        label = method_label(gen)
        config = {
            "benchmark": "niah",
            "protocol": "duoattention",
            "model": run.handle.record(),
            "generation": gen.record(),
            "niah": {"needle": NEEDLE, "question": QUESTION, "prompt": PROMPT, "length_buffer": run.length_buffer,
                     "chat": run.chat, "gen_length": run.gen_length, "haystack": haystack.record(),
                     "haystack_passes": builder.passes},
        }
        ctx: RunContext = make_ctx(config, "full" if gen.press is None else f"{gen.press}-{gen.budget}")
        prepare_run_dir(ctx, overwrite=overwrite)
        is_main = ctx.dist.is_main

        def predict(cell: dict[str, Any], gen: GenerationConfig = gen) -> dict[str, Any]:
            context = builder.context(cell["length"], cell["depth"], run.length_buffer)
            ids = encode_prompt(tokenizer, context, chat=run.chat)
            out = generate_text(run.handle, gen, ids, run.gen_length, sample_seed(gen.seed, "niah", cell["index"]))
            response = out.text.strip()
            return {"context_length": cell["length"], "depth_percent": cell["depth"], "needle_id": 0,
                    "response": response, "duo_overlap": duo_overlap(response), "rouge1_x10": rouge1_x10(response),
                    "prompt_tokens": int(ids.shape[1]), **out.fields()}

        rows_by_task = run_tasks(ctx, [TaskPlan(name="niah", samples=grid, predict=predict)])
        if not is_main:
            continue
        rows = selected_rows(rows_by_task["niah"] or {}, grid)
        table = pivot(rows, run.lengths, run.depths)
        overall = mean([r["duo_overlap"] for r in rows])
        result = {"benchmark": "niah", "run": ctx.run_dir.name, "method": label, "config_hash": ctx.hash,
                  "config": config, "overall_score": round(overall, 6), "lengths": run.lengths,
                  "depths": run.depths, "pivot": table, "cells": len(rows)}
        write_json_atomic(ctx.run_dir / "result.json", result)
        write_json_atomic(ctx.run_dir / "pivot.json",
                          {"lengths": run.lengths, "depths": run.depths, "duo_overlap": table})
        write_csv_atomic(ctx.run_dir / "pivot.csv", ["depth_percent", *[str(n) for n in run.lengths]],
                         [[d, *[("" if v is None else round(v, 6)) for v in row]] for d, row in zip(run.depths, table)])
        summary["methods"][label] = {"run": str(ctx.run_dir), "overall_score": round(overall, 6),
                                     "config_hash": ctx.hash, "press": config["generation"]["press_repr"]}
        from .plots import HeatmapPanel

        panels.append(HeatmapPanel(label=label, lengths=run.lengths, depths=run.depths, scores=table))
    if not is_main:
        return None
    write_json_atomic(out_dir / "niah_summary.json", summary)
    try:
        from .plots import niah_heatmap

        budget = next((g.budget for g in run.gens if g.budget is not None), None)
        model = Path(run.handle.path.rstrip("/")).name
        title = f"{model}" + (f" (budget {budget})" if budget else "")
        trained = run.handle.model_config().max_position_embeddings
        path = niah_heatmap(panels, out_dir / "niah_heatmap.png", title=title, trained_length=trained)
        summary["heatmap"] = str(path)
    except EvalError as err:  # matplotlib missing: the numbers are saved, say so
        summary["heatmap"] = None
        summary["heatmap_error"] = str(err)
    write_json_atomic(out_dir / "niah_summary.json", summary)
    return summary
