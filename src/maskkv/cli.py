"""The ``maskkv`` command line: thin wrappers that parse flags and call the library."""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import click
import torch
from rich.console import Console

from .models.loading import WEIGHT_DTYPES as _DTYPES
from .validation import click_check as _checked

console = Console(stderr=True)

# What a user can cause: bad values, missing / malformed / mismatched files, an unreachable hub.
_USER_ERRORS = (ValueError, OSError, KeyError)


def _fail(message: str) -> None:
    raise click.ClickException(message)


def _debug_requested(ctx: click.Context) -> bool:
    return bool(ctx.params.get("debug")) or os.environ.get("MASKKV_DEBUG", "").lower() in ("1", "true", "yes")


class _MainGroup(click.Group):
    """The ``maskkv`` group: any error ends in one ``Error: ...`` line and exit code 1, never a traceback.

    ``--debug`` (or ``MASKKV_DEBUG=1``) prints the traceback as well. Errors a user can cause (bad values,
    missing or broken files) print their message; anything else is labelled an internal error.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as err:
            origin = err.__cause__ or err.__context__  # the error a command turned into its message
            if _debug_requested(ctx) and origin is not None:
                traceback.print_exception(origin)
            raise
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as err:
            if _debug_requested(ctx):
                traceback.print_exception(err)
            if isinstance(err, _USER_ERRORS):
                message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
            elif isinstance(err, (MemoryError, torch.OutOfMemoryError)):
                message = (f"out of memory ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
                           "use a shorter prompt or generation, a smaller batch or budget, or another device")
            else:
                message = (f"internal error ({type(err).__name__}: {err}); rerun with --debug (or MASKKV_DEBUG=1) "
                           "for the traceback and report it")
            raise click.ClickException(message or type(err).__name__) from None


@click.group(cls=_MainGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="maskkv")
@click.option("--debug", is_flag=True, help="Show the Python traceback of an error (also: MASKKV_DEBUG=1).")
def main(debug: bool) -> None:
    """maskkv: KV-cache eviction for long-context inference with diffusion LLMs (LLaDA, Dream)."""


@main.command()
@click.option("--model", "model_path", required=True, help="Checkpoint folder (config.json + safetensors) or hub id.")
@click.option("--prompt", default=None, help="Prompt text.")
@click.option("--prompt-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Read the prompt from this UTF-8 file instead of --prompt.")
@click.option("--chat/--no-chat", default=False, show_default=True,
              help="Wrap the prompt in the tokenizer's chat template as one user turn.")
@click.option("--gen-length", type=int, default=64, show_default=True, help="Tokens to generate.")
@click.option("--steps", type=int, default=64, show_default=True, help="Denoising steps in total.")
@click.option("--block-length", type=int, default=None,
              help="Semi-autoregressive block length (default: one block; Dream: its own schedule).")
@click.option("--temperature", type=float, default=0.0, show_default=True, callback=_checked(low=0.0),
              help="Sampling temperature >= 0 (0 = greedy, for both families). Dream's reference samples at 1.0 "
                   "when its caller passes no temperature: give --temperature 1 to reproduce that call.")
@click.option("--remasking", default="low_confidence", show_default=True,
              help="LLaDA: low_confidence | random. Dream: origin | maskgit_plus | topk_margin | entropy.")
@click.option("--cfg-scale", type=float, default=0.0, show_default=True, callback=_checked(low=0.0),
              help="LLaDA: classifier-free guidance scale >= 0 (0 = off).")
@click.option("--threshold", type=float, default=None, callback=_checked(low=0.0, high=1.0, low_open=True),
              help="Fast-dLLM parallel decoding confidence threshold in (0, 1], e.g. 0.9.")
@click.option("--top-p", type=float, default=None, callback=_checked(low=0.0, high=1.0, low_open=True),
              help="Dream: nucleus filter in (0, 1] (default: the reference's effective 1.0, no filter).")
@click.option("--top-k", type=int, default=None, callback=_checked(low=0, integer=True),
              help="Dream: keep the K largest logits before the softmax that gives tokens and confidences "
                   "(default: the reference's effective 50; 0 = no filter).")
@click.option("--alg-temp", type=float, default=None, callback=_checked(low=0.0),
              help="Dream: temperature >= 0 of the position choice.")
@click.option("--logits-eos-inf", is_flag=True, help="LLaDA: never propose EOS.")
@click.option("--confidence-eos-eot-inf", is_flag=True, help="LLaDA: zero the confidence of EOS/EOT proposals.")
@click.option("--cache", "cache_kind", type=click.Choice(["none", "dllm", "fast-prefix", "fast-dual"]), default="none",
              show_default=True,
              help="none: full forward every step. dllm: dLLM-Cache with prompt-state exclusion and mask-only "
                   "projection. fast-prefix / fast-dual: Fast-dLLM's per-block prefix / dual KV cache.")
@click.option("--prompt-interval", type=int, default=50, show_default=True,
              help="dLLM-Cache: recompute the prompt every N passes (-1: every pass).")
@click.option("--response-interval", type=int, default=5, show_default=True,
              help="dLLM-Cache: recompute all response rows every N passes (-1: every pass).")
@click.option("--transfer-ratio", type=float, default=0.25, show_default=True, callback=_checked(low=0.0, high=1.0),
              help="dLLM-Cache: share in [0, 1] of response rows refreshed by V-verify on other passes.")
@click.option("--press", "press_name", default=None,
              help="Evict prompt K/V with this press: maskkv, snapkv, pyramidkv, squeeze, adakv, streaming, h2o, "
                   "knorm, random, sparse_dllm.")
@click.option("--budget", type=int, default=256, show_default=True,
              help="Press budget: average prompt K/V pairs kept per KV head per layer.")
@click.option("--profile", "profile_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="MaskKV offline layer profile (from `maskkv calibrate`); without one MaskKV runs online.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the torch RNG.")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")
@click.option("--dtype", type=click.Choice(sorted(_DTYPES)), default=None,
              help="Weights dtype (default: float32 on CPU, bfloat16 elsewhere).")
@click.option("--rope-scaling-factor", type=float, default=1.0, show_default=True,
              callback=_checked(low=0.0, low_open=True),
              help="Multiply rope_theta (LongLLaDA NTK scaling, e.g. 4 for 8k with LLaDA).")
def generate(model_path: str, prompt: str | None, prompt_file: Path | None, chat: bool, gen_length: int, steps: int,
             block_length: int | None, temperature: float, remasking: str, cfg_scale: float, threshold: float | None,
             top_p: float | None, top_k: int | None, alg_temp: float | None, logits_eos_inf: bool,
             confidence_eos_eot_inf: bool, cache_kind: str, prompt_interval: int, response_interval: int,
             transfer_ratio: float, press_name: str | None, budget: int, profile_path: str | None, seed: int,
             device: str, dtype: str | None, rope_scaling_factor: float) -> None:
    """Generate an answer to one prompt and print it.

    \b
    Defaults: greedy (temperature 0) for both families. LLaDA's reference has no hidden defaults.
    Dream: an unset --top-k / --top-p is the reference's effective 50 / 1.0 (Dream's diffusion_generate
    builds its config from the model config, which carries transformers 4.46's legacy top_k=50);
    --top-k 0 turns the filter off.
    """
    from . import generate as run_generate
    from . import load_model, load_tokenizer
    from .cache import DLLMCache, FastDLLMCache
    from .presses import make_press
    from .text import decode_answer, encode_prompt

    if (prompt is None) == (prompt_file is None):
        _fail("give exactly one of --prompt TEXT or --prompt-file FILE")
    text = prompt if prompt is not None else prompt_file.read_text(encoding="utf-8")
    try:
        cache = None
        if cache_kind == "dllm":
            cache = DLLMCache(prompt_interval=prompt_interval, response_interval=response_interval,
                              transfer_ratio=transfer_ratio)
        elif cache_kind.startswith("fast-"):
            cache = FastDLLMCache(cache_kind.removeprefix("fast-"))
        press = None
        if press_name is not None:
            options = {"profile": profile_path} if profile_path else {}
            press = make_press(press_name, budget, **options)
        elif profile_path is not None:
            _fail("--profile needs --press maskkv")
        model = load_model(model_path, device=device, dtype=_DTYPES.get(dtype) if dtype else None,
                           rope_scaling_factor=rope_scaling_factor)
        tokenizer = load_tokenizer(model_path)
        ids = encode_prompt(tokenizer, text, chat=chat).to(model.embed_tokens.weight.device)
        torch.manual_seed(seed)
        out = run_generate(model, ids, gen_length=gen_length, steps=steps, block_length=block_length,
                           temperature=temperature, remasking=remasking, cfg_scale=cfg_scale, threshold=threshold,
                           top_p=top_p, top_k=top_k, alg_temp=alg_temp, logits_eos_inf=logits_eos_inf,
                           confidence_eos_eot_inf=confidence_eos_eot_inf, cache=cache,
                           press=press)
    except (ValueError, OSError) as err:
        _fail(str(err))
    answer = decode_answer(tokenizer, out.sequences[0, ids.shape[1]:])
    click.echo(answer)
    summary = (f"{gen_length} tokens, {out.nfe} forward passes, {out.seconds:.2f} s "
               f"({gen_length / max(out.seconds, 1e-9):.1f} tokens/s)")
    if out.cache_bytes is not None:
        summary += f", cache {out.cache_bytes['total'] / 2**20:.1f} MiB (peak {out.cache_bytes['peak'] / 2**20:.1f} MiB)"
        if press is not None:
            kept = out.cache_bytes["kept_prompt_pairs"] / max(out.cache_bytes["prompt_pairs"], 1)
            summary += f", {100 * kept:.1f}% of the prompt K/V kept"
    console.print(f"[dim]{summary}[/dim]")


@main.command()
@click.option("--model", "model_path", required=True, help="Checkpoint folder or hub id.")
@click.option("--data", "data_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSONL calibration prompts: one object per line with a 'prompt' (or 'input'/'context') field.")
@click.option("--samples", type=int, default=32, show_default=True, help="Use the first N rows.")
@click.option("--gen-length", type=int, default=32, show_default=True, help="Masks appended to each prompt.")
@click.option("--max-prompt-tokens", type=int, default=None, help="Keep the last N tokens of longer prompts.")
@click.option("--chat/--no-chat", default=False, show_default=True, help="Wrap prompts in the chat template.")
@click.option("--device", default="cpu", show_default=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the profile JSON.")
def calibrate(model_path: str, data_path: Path, samples: int, gen_length: int, max_prompt_tokens: int | None,
              chat: bool, device: str, output: Path) -> None:
    """Compute MaskKV's offline layer-importance profile (Eq. 8) over a calibration set."""
    import hashlib
    import json

    from . import load_model, load_tokenizer
    from .presses.profile import calibrate as run_calibration
    from .presses.profile import save_profile
    from .text import encode_prompt

    if samples <= 0:
        _fail(f"--samples must be positive, got {samples}")
    prompts, texts = [], []
    try:
        model = load_model(model_path, device=device)
        tokenizer = load_tokenizer(model_path)
        for number, line in enumerate(data_path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                _fail(f"{data_path}:{number}: not a JSON object line ({err}); write one JSON object per line")
            if not isinstance(row, dict):
                _fail(f"{data_path}:{number}: expected a JSON object with a 'prompt' field, got {type(row).__name__}")
            text = next((row[k] for k in ("prompt", "input", "context") if isinstance(row.get(k), str)), None)
            if text is None:
                _fail(f"{data_path}:{number}: no 'prompt', 'input' or 'context' string field")
            texts.append(text)
            ids = encode_prompt(tokenizer, text, chat=chat)
            if max_prompt_tokens:
                ids = ids[:, -max_prompt_tokens:]
            prompts.append(ids.to(device))
            if len(prompts) == samples:
                break
        if not prompts:
            _fail(f"{data_path} has no calibration rows")
        importance = run_calibration(model, prompts, gen_length)
    except (ValueError, OSError) as err:
        _fail(str(err))
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    save_profile(output, model.config, importance, samples=len(prompts), gen_length=gen_length,
                 token_set="all", data=str(data_path), data_sha256=digest, checkpoint=str(model_path))
    click.echo(f"wrote {output}: {len(importance)} layers from {len(prompts)} samples")
    console.print(" ".join(f"{v:.3f}" for v in importance))


@main.command()
@click.option("--model", "model_path", default=None,
              help="Checkpoint folder or hub id (default: the shipped tiny model; 'random': a random checkpoint).")
@click.option("--haystack-tokens", type=int, default=None, help="Prompt length (default: the demo's 1536).")
@click.option("--gen-length", type=int, default=None, help="Tokens to generate (default: the model's answer length).")
@click.option("--steps", type=int, default=None, help="Denoising steps (default: the generation length).")
@click.option("--budget", type=int, default=None, help="MaskKV budget: prompt K/V pairs kept per KV head per layer.")
@click.option("--task", default="single", show_default=True, help="Task of the haystack: single or multikey.")
@click.option("--seed", type=int, default=0, show_default=True)
def demo(model_path: str | None, haystack_tokens: int | None, gen_length: int | None, steps: int | None,
         budget: int | None, task: str, seed: int) -> None:
    """Answer a needle-in-a-haystack prompt with the full cache and with MaskKV; report correctness and speed."""
    from .demo import run_demo

    options = {k: v for k, v in (("haystack_tokens", haystack_tokens), ("gen_length", gen_length),
                                 ("steps", steps), ("budget", budget)) if v is not None}
    try:
        with tempfile.TemporaryDirectory(prefix="maskkv-demo-") as tmp:
            run_demo(model_path, Path(tmp), task=task, seed=seed, console=Console(), **options)
    except (ValueError, OSError) as err:
        _fail(str(err))


def _register_subcommands() -> None:
    """Commands that live beside their subsystem (evaluation, benchmarks, training), when present."""
    import importlib

    for module_name, attribute in (
        ("maskkv.eval.cli", "eval_group"),
        ("maskkv.bench.cli", "bench"),
        ("maskkv.train.cli", "train_tiny"),
        ("maskkv.serve.cli", "serve"),
        ("maskkv.serve.cli", "inspect"),
        ("maskkv.lmeval.cli", "lm_eval_command"),
    ):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is None or not module_name.startswith(err.name):
                raise
            continue
        main.add_command(getattr(module, attribute))


_register_subcommands()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
