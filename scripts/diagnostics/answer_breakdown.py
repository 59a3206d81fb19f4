"""Where the shipped tiny model's held-out answers go (full cache): right, another needle's value, another number
of the prompt (the essay's), or a text that is not in the prompt. The error analysis of ``MODEL_CARD.md``.

    python scripts/diagnostics/answer_breakdown.py [--model DIR] [--tasks single,multikey] [--lengths 1024,2048] [--count 40]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

import torch
from tqdm import tqdm

import maskkv
from maskkv.cache import DLLMCache
from maskkv.demo import shipped_model_path
from maskkv.train.data import NEEDLE_PATTERN
from maskkv.train.evaluate import answer, heldout_samples, make_heldout_builder, prompt_ids

KINDS = ("right", "another needle", "another prompt number", "not in the prompt")


def classify(prediction: str, expected: str, content: str) -> str:
    """One of :data:`KINDS` for a decoded answer of a needle task."""
    if prediction == expected:
        return KINDS[0]
    if prediction in {value for _, value in NEEDLE_PATTERN.findall(content)}:
        return KINDS[1]
    if prediction and prediction in re.findall(r"\d+", content):
        return KINDS[2]
    return KINDS[3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Checkpoint folder (default: the shipped tiny model).")
    parser.add_argument("--tasks", default="single,multikey")
    parser.add_argument("--lengths", default="1024,2048")
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = args.model or str(shipped_model_path())
    model, tokenizer = maskkv.load_model(path), maskkv.load_tokenizer(path)
    builder = make_heldout_builder(tokenizer)
    for tokens in map(int, args.lengths.split(",")):
        for task in args.tasks.split(","):
            counts: Counter[str] = Counter()
            for sample in tqdm(heldout_samples(builder, task, tokens, args.count), desc=f"{task}@{tokens}",
                               leave=False, disable=None):
                text, _ = answer(model, tokenizer, prompt_ids(tokenizer, sample.content), cache=DLLMCache())
                counts[classify(text, sample.answer, sample.content)] += 1
            print(f"{task}@{tokens}: " + ", ".join(f"{counts[k]} {k}" for k in KINDS))


if __name__ == "__main__":
    main()
