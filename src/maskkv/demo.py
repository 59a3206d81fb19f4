"""``maskkv demo``: a needle-in-a-haystack prompt answered end to end.

Until the trained tiny model ships, the default checkpoint is a small *random* LLaDA checkpoint
written on the fly: its answers are noise, and the output says so.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

_FILLER = (
    "The grass is green and the sky is blue.",
    "The sun rises in the east and sets in the west.",
    "Rivers run down from the hills into the sea.",
    "A quiet town sleeps under the winter moon.",
    "Bread is baked early in the morning.",
)


def haystack_prompt(tokenizer, approx_tokens: int, *, seed: int) -> tuple[str, str]:
    """A filler text of about ``approx_tokens`` tokens hiding one needle; returns ``(prompt, answer)``."""
    rng = random.Random(seed)
    answer = str(rng.randint(1000, 9999))
    needle = f"The secret number is {answer}."
    sentences: list[str] = []
    while len(tokenizer(" ".join(sentences), add_special_tokens=False)["input_ids"]) < approx_tokens:
        sentences.append(rng.choice(_FILLER))
    sentences.insert(rng.randint(0, len(sentences)), needle)
    return " ".join(sentences) + "\nWhat is the secret number? The secret number is", answer


def run_demo(
    model_path: str | None,
    workdir: Path,
    *,
    haystack_tokens: int,
    gen_length: int,
    steps: int,
    seed: int,
    console: Console,
) -> list[dict[str, object]]:
    """Run the demo and print a table; returns the rows shown, for tests."""
    from . import generate, load_model, load_tokenizer
    from .cli import decode_answer
    from .models.tiny import write_tiny_checkpoint

    if model_path is None:
        model_path = str(write_tiny_checkpoint(workdir / "random-llada", "llada", seed=seed))
        console.print(
            "[bold yellow]Model: a small RANDOM LLaDA checkpoint made on the fly (no trained weights ship "
            "yet): its answers are noise.[/bold yellow] Pass --model PATH for a real checkpoint."
        )
    model = load_model(model_path)
    tokenizer = load_tokenizer(model_path)
    prompt, answer = haystack_prompt(tokenizer, haystack_tokens, seed=seed)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    from .cache import DLLMCache

    systems = [("no cache", None), ("dLLM-Cache", DLLMCache())]
    table = Table(title=f"Needle in a haystack ({ids.shape[1]} prompt tokens, expected answer {answer})")
    for column in ("system", "answer", "correct", "cache MiB", "tokens/s", "NFE"):
        table.add_column(column)
    rows = []
    for name, cache in systems:
        torch.manual_seed(seed)
        out = generate(model, ids, gen_length=gen_length, steps=steps, cache=cache)
        text = decode_answer(tokenizer, out.sequences[0, ids.shape[1]:])
        row = {
            "system": name,
            "answer": text,
            "correct": answer in text,
            "prompt_tokens": ids.shape[1],
            "cache_bytes": None if out.cache_bytes is None else out.cache_bytes["total"],
            "tokens_per_s": gen_length / max(out.seconds, 1e-9),
            "nfe": out.nfe,
        }
        rows.append(row)
        cache_mib = "-" if row["cache_bytes"] is None else f"{row['cache_bytes'] / 2**20:.2f}"
        table.add_row(name, repr(text[:40]), "yes" if row["correct"] else "no", cache_mib,
                      f"{row['tokens_per_s']:.1f}", str(row["nfe"]))
    console.print(table)
    return rows
