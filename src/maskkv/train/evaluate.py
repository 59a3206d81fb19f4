"""Held-out evaluation of a trained tiny model through the public pipeline (load, chat template, generate).

Held-out means: a separate sample seed, and (with the essay filler) essay files never used in
training. Scoring: ``exact`` = the decoded answer (cut at EOS/EOT, stripped) equals the expected
text; ``all_refs`` = RULER's string-match-all (every reference appears in the answer).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .data import (
    ANSWER_TOKENS,
    TASKS,
    EssayFiller,
    Sample,
    SyntheticFiller,
    TaskBuilder,
)

__all__ = ["EVAL_SEED", "EvalRow", "heldout_samples", "make_heldout_builder", "run_eval", "summarize"]

EVAL_SEED = 20251129


@dataclass
class EvalRow:
    task: str
    tokens: int  # target length (the prompt is at most about this long)
    prompt_tokens: int
    answer: str
    prediction: str
    exact: bool
    all_refs: bool


def make_heldout_builder(tokenizer, filler: str = "essays") -> TaskBuilder:
    """A builder over held-out filler; ``tokenizer`` is a loaded HF tokenizer (its backend is used)."""
    source = EssayFiller("heldout") if filler == "essays" else SyntheticFiller("heldout")
    return TaskBuilder(tokenizer.backend_tokenizer, source)


def heldout_samples(builder: TaskBuilder, task: str, tokens: int, count: int, seed: int = EVAL_SEED) -> list[Sample]:
    """``count`` fixed samples of ``task`` at ``tokens``; multi-key uses 4 needles (RULER's niah_multikey_1)."""
    rng = random.Random(f"{seed}-{task}-{tokens}")
    return [builder.sample(task, tokens, rng, num_needles=4 if task == "multikey" else None) for _ in range(count)]


def prompt_ids(tokenizer, content: str) -> torch.Tensor:
    """``[1, P]`` ids of ``content`` as one user turn in the checkpoint's chat template."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]


def answer(model, tokenizer, ids: torch.Tensor, *, cache=None, press=None, gen_length: int = ANSWER_TOKENS):
    """Generate the answer (gen_length = steps = block_length); returns (text, GenerationOutput)."""
    from .. import generate
    from ..text import decode_answer

    out = generate(model, ids, gen_length=gen_length, steps=gen_length, block_length=gen_length, cache=cache,
                   press=press)
    return decode_answer(tokenizer, out.sequences[0, ids.shape[1]:]), out


def run_eval(model, tokenizer, *, tasks: Sequence[str] = TASKS, lengths: Sequence[int] = (512, 1024, 2048),
             count: int = 40, filler: str = "essays", cache_factory=None, press_factory=None,
             progress: bool = True) -> list[EvalRow]:
    """Evaluate every (task, length) on ``count`` held-out samples; factories make a fresh cache/press per sample."""
    from tqdm import tqdm

    builder = make_heldout_builder(tokenizer, filler)
    rows: list[EvalRow] = []
    jobs = [(t, n) for n in lengths for t in tasks]
    bar = tqdm(total=len(jobs) * count, disable=not progress, desc="eval")
    for task, tokens in jobs:
        for sample in heldout_samples(builder, task, tokens, count):
            ids = prompt_ids(tokenizer, sample.content)
            text, _ = answer(model, tokenizer, ids, cache=cache_factory() if cache_factory else None,
                             press=press_factory() if press_factory else None)
            rows.append(EvalRow(task, tokens, ids.shape[1], sample.answer, text, text == sample.answer,
                                all(r in text for r in sample.references)))
            bar.update(1)
    bar.close()
    return rows


def summarize(rows: Sequence[EvalRow], metric: str = "exact") -> dict[tuple[str, int], float]:
    """Accuracy per (task, length)."""
    groups: dict[tuple[str, int], list[bool]] = {}
    for row in rows:
        groups.setdefault((row.task, row.tokens), []).append(getattr(row, metric))
    return {key: sum(v) / len(v) for key, v in groups.items()}


if __name__ == "__main__":  # pragma: no cover - manual use: python -m maskkv.train.evaluate FOLDER
    import json
    import sys

    from .. import load_model, load_tokenizer

    torch.set_num_threads(1)
    folder = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    lengths = tuple(int(x) for x in sys.argv[3].split(",")) if len(sys.argv) > 3 else (512, 1024, 2048)
    filler = sys.argv[4] if len(sys.argv) > 4 else "essays"
    start = time.time()
    rows = run_eval(load_model(folder), load_tokenizer(folder), lengths=lengths, count=count, filler=filler)
    table = summarize(rows)
    refs = summarize(rows, "all_refs")
    print(json.dumps({f"{t}@{n}": [round(v, 3), round(refs[(t, n)], 3)] for (t, n), v in table.items()}, indent=1))
    print(f"{len(rows)} samples in {time.time() - start:.0f} s")
