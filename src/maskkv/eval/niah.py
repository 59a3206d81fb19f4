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

``--needle magic-number`` swaps DuoAttention's sentence for the RULER-style needle the shipped tiny model was trained
on (``maskkv.train.data``): "One of the special magic numbers for {key} is: {value}." with a key and a 2-digit value
drawn per cell, asked in the training prompt (header, text, question; chat template), scored 1 when the value appears
in the answer (RULER's ``string_match_all``). Splicing, grid and heat map are the same.
"""

from __future__ import annotations

import random
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
from ..train.data import HEADER as MAGIC_HEADER
from ..train.data import KEYS as MAGIC_KEYS
from ..train.data import VALUE_RANGE as MAGIC_VALUES
from ..train.data import magic_needle
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


MAGIC_QUESTION = "What is the special magic number for {key} mentioned in the provided text?"
MAGIC_PROMPT = MAGIC_HEADER + "{context}\n\n{question}"


@dataclass(frozen=True)
class NeedleInstance:
    """The strings of one grid cell: the spliced sentence, the question and what the answer must contain."""

    needle: str
    question: str
    expected: str


@dataclass(frozen=True)
class Needle:
    """A needle kind of ``maskkv eval niah --needle``: its strings, prompt, default decoding and scorer."""

    name: str
    prompt: str  # format string with {context} and {question}
    chat: bool  # wrap the prompt in the chat template by default
    gen_length: int  # default tokens generated per cell
    scoring: str  # "duo_overlap" (DuoAttention) or "string_match" (RULER string_match_all)

    def instance(self, cell_key: str) -> NeedleInstance:
        """The needle of the cell ``"<length>-<depth>-0"``: fixed for DuoAttention's, drawn per cell otherwise."""
        if self.name == "san-francisco":
            return NeedleInstance(needle=NEEDLE, question=QUESTION, expected=EXPECTED_ANSWER)
        rng = random.Random(f"{self.name}:{cell_key}")  # the same key and value for every method
        key, value = rng.choice(MAGIC_KEYS), rng.randint(*MAGIC_VALUES)
        return NeedleInstance(needle=f" {magic_needle(key, value)} ", question=MAGIC_QUESTION.format(key=key),
                              expected=str(value))

    def score(self, response: str, instance: NeedleInstance) -> float:
        """The plotted score of one answer, in [0, 1]."""
        if self.scoring == "duo_overlap":
            return duo_overlap(response)
        return 1.0 if instance.expected.lower() in response.lower() else 0.0

    def record(self) -> dict[str, Any]:
        """The recorded (hashed) description; DuoAttention's keeps the keys of runs made before ``--needle``."""
        if self.name == "san-francisco":
            return {"needle": NEEDLE, "question": QUESTION, "prompt": PROMPT}
        return {"needle": magic_needle("{key}", "{value}"), "question": MAGIC_QUESTION, "prompt": self.prompt,
                "needle_name": self.name, "keys": len(MAGIC_KEYS), "values": list(MAGIC_VALUES),
                "scoring": self.scoring}


#: ``--needle`` choices: DuoAttention's sentence (default, Figure 8) and the shipped tiny model's training needle.
NEEDLES = {
    "san-francisco": Needle("san-francisco", PROMPT, chat=False, gen_length=32, scoring="duo_overlap"),
    "magic-number": Needle("magic-number", MAGIC_PROMPT, chat=True, gen_length=8, scoring="string_match"),
}


def get_needle(name: str) -> Needle:
    """The :data:`NEEDLES` entry ``name``, or an :class:`EvalError` listing the choices."""
    if name not in NEEDLES:
        raise EvalError(f"unknown needle {name!r}; choose one of {', '.join(NEEDLES)}")
    return NEEDLES[name]


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

    def _encode_prefix(self, text: str, max_length: int) -> list[int]:
        """Encode with special tokens; only a prefix of the text long enough for ``max_length`` tokens."""
        chars = max_length * 12
        while True:
            piece = text[:chars]
            ids = self.tokenizer(piece, add_special_tokens=True)["input_ids"]
            if len(ids) >= max_length or chars >= len(text):
                return ids
            chars *= 2

    def context(self, length: int, depth: int, buffer: int, needle: str = NEEDLE) -> str:
        """The haystack of ``length`` nominal tokens with ``needle`` at ``depth`` percent (1.2 steps 2-3)."""
        tok = self.tokenizer
        needle_ids = tok(needle, add_special_tokens=False)["input_ids"]
        text = tok.decode(self.ids[:length], skip_special_tokens=True)
        hay = tok(text, add_special_tokens=False)["input_ids"]
        budget = length - buffer
        if len(hay) + len(needle_ids) > budget:
            hay = hay[: max(0, budget - len(needle_ids))]
        if depth >= 100:
            spliced = hay + needle_ids
        else:
            position = int(len(hay) * depth / 100)
            spliced = hay[:position] + needle_ids + hay[position:]
        return tok.decode(spliced, skip_special_tokens=True)


def encode_prompt(tokenizer: Any, context: str, *, chat: bool, prompt: str = PROMPT,
                  question: str = QUESTION) -> torch.Tensor:
    """The literal book prompt tokenised with special tokens (1.2 step 4), or as one chat user turn."""
    text = prompt.format(context=context, question=question)
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
    chat: bool | None = None  # None: the needle's default (DuoAttention's literal prompt; the chat turn for magic)
    gen_length: int | None = None  # None: the needle's default (32; 8 for magic-number)
    labels: list[str] = field(default_factory=list)
    needle: str = "san-francisco"


def method_label(gen: GenerationConfig) -> str:
    return "Full" if gen.press is None else gen.press


def cells(lengths: list[int], depths: list[int]) -> list[dict[str, Any]]:
    """Grid cells in length-major order, keyed ``"<length>-<depth>-<needle>"`` (1.6)."""
    out = []
    for length in lengths:
        for depth in depths:
            out.append({"index": len(out), "key": f"{length}-{depth}-0", "length": length, "depth": depth})
    return out


def row_score(row: dict[str, Any]) -> float:
    """A prediction row's plotted score: ``score``, or ``duo_overlap`` in rows written before ``--needle``."""
    return row["score"] if "score" in row else row["duo_overlap"]


def pivot(rows: list[dict[str, Any]], lengths: list[int], depths: list[int]) -> list[list[float | None]]:
    """Mean score per (depth, length): rows = depths ascending, columns = lengths ascending (5).

    The score is :func:`row_score` (the needle's scorer).
    """
    cell: dict[tuple[int, int], list[float]] = {}
    for row in rows:
        cell.setdefault((row["depth_percent"], row["context_length"]), []).append(row_score(row))
    return [[(mean(cell[(d, n)]) if (d, n) in cell else None) for n in lengths] for d in depths]


def run_niah(run: NiahRun, out_dir: Path, make_ctx: Any, *, overwrite: bool = False) -> dict[str, Any] | None:
    """Run every method over the grid (resumable per cell), write pivots and the heat map on rank 0."""
    tokenizer = run.handle.tokenizer
    needle = get_needle(run.needle)
    chat = needle.chat if run.chat is None else run.chat
    gen_length = run.gen_length or needle.gen_length
    if chat and not run.handle.has_chat_template():
        raise EvalError(f"--chat was given but the tokenizer of {run.handle.path} has no chat template; "
                        "pass --no-chat")
    haystack = load_haystack(run.haystack)
    builder = HaystackBuilder(tokenizer, haystack, max(run.lengths))
    grid = cells(run.lengths, run.depths)
    summary: dict[str, Any] = {"lengths": run.lengths, "depths": run.depths, "needle": needle.name,
                               "scoring": needle.scoring, "methods": {}}
    panels = []
    is_main = True
    for gen in run.gens:
        label = method_label(gen)
        config = {
            "benchmark": "niah",
            "protocol": "duoattention",
            "model": run.handle.record(),
            "generation": gen.record(),
            "niah": {**needle.record(), "length_buffer": run.length_buffer, "chat": chat, "gen_length": gen_length,
                     "haystack": haystack.record(), "haystack_passes": builder.passes},
        }
        ctx: RunContext = make_ctx(config, "full" if gen.press is None else f"{gen.press}-{gen.budget}")
        prepare_run_dir(ctx, overwrite=overwrite)
        is_main = ctx.dist.is_main

        def predict(cell: dict[str, Any], gen: GenerationConfig = gen) -> dict[str, Any]:
            instance = needle.instance(cell["key"])
            context = builder.context(cell["length"], cell["depth"], run.length_buffer, instance.needle)
            ids = encode_prompt(tokenizer, context, chat=chat, prompt=needle.prompt, question=instance.question)
            out = generate_text(run.handle, gen, ids, gen_length, sample_seed(gen.seed, "niah", cell["index"]))
            response = out.text.strip()
            scores = ({"duo_overlap": duo_overlap(response), "rouge1_x10": rouge1_x10(response)}
                      if needle.scoring == "duo_overlap" else {"expected": instance.expected})
            return {"context_length": cell["length"], "depth_percent": cell["depth"], "needle_id": 0,
                    "response": response, "score": needle.score(response, instance), **scores,
                    "prompt_tokens": int(ids.shape[1]), **out.fields()}

        rows_by_task = run_tasks(ctx, [TaskPlan(name="niah", samples=grid, predict=predict)])
        if not is_main:
            continue
        rows = selected_rows(rows_by_task["niah"] or {}, grid)
        table = pivot(rows, run.lengths, run.depths)
        overall = mean([row_score(r) for r in rows])
        result = {"benchmark": "niah", "run": ctx.run_dir.name, "method": label, "config_hash": ctx.hash,
                  "config": config, "overall_score": round(overall, 6), "lengths": run.lengths,
                  "depths": run.depths, "pivot": table, "cells": len(rows)}
        write_json_atomic(ctx.run_dir / "result.json", result)
        write_json_atomic(ctx.run_dir / "pivot.json",
                          {"lengths": run.lengths, "depths": run.depths, needle.scoring: table})
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
