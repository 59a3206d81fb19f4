"""``maskkv serve`` (the OpenAI-compatible server) and ``maskkv inspect`` (the kept-token report)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import click

from ..models.loading import WEIGHT_DTYPES
from ..validation import click_check



def _parse_profiles(values: tuple[str, ...]) -> dict[str, str]:
    """``NAME=PATH`` or ``PATH`` (named after the file stem) -> {name: path}; the files must exist."""
    profiles: dict[str, str] = {}
    for value in values:
        name, _, path = value.partition("=") if "=" in value else (Path(value).stem, "=", value)
        if not name or not Path(path).is_file():
            raise click.BadParameter(f"{value!r}: give NAME=PATH or PATH of an existing profile JSON",
                                     param_hint="--profile")
        if name in profiles:
            raise click.BadParameter(f"profile name {name!r} given twice", param_hint="--profile")
        profiles[name] = path
    return profiles


_positive = click_check(low=1, integer=True)


def _generation_config(cache_kind: str, press_name: str | None, budget: int, profile: str | None = None) -> Any:
    """The cache and press settings as the evaluations' ``GenerationConfig`` (the one place that checks and
    builds them); a value it refuses is a click error naming the flag."""
    from ..eval.common import EvalError, GenerationConfig

    try:
        return GenerationConfig(cache=cache_kind, press=press_name, budget=budget,
                                press_options={"profile": profile} if profile else {})
    except EvalError as err:
        raise click.BadParameter(str(err), param_hint=f"--{(err.field or 'press').replace('_', '-')}") from None


@click.command("serve")
@click.option("--model", "model_path", required=True, help="Checkpoint folder or hub id (LLaDA or Dream).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--served-model-name", default=None, help="The `model` clients send (default: the folder name).")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")
@click.option("--dtype", type=click.Choice(sorted(WEIGHT_DTYPES)), default=None,
              help="Weights dtype (default: float32 on CPU, bfloat16 elsewhere).")
@click.option("--cache", "cache_kind", type=click.Choice(["dllm", "fast-prefix", "fast-dual", "none"]),
              default="dllm", show_default=True, help="Default cache of a request.")
@click.option("--press", "press_name", default=None, help="Default press (e.g. maskkv); requests may override it.")
@click.option("--budget", type=int, default=256, show_default=True, callback=_positive,
              help="Default press budget: prompt K/V pairs kept per KV head per layer.")
@click.option("--profile", "profiles", multiple=True,
              help="MaskKV layer profile NAME=PATH (or PATH, named by its stem); repeatable. Requests name one "
                   "with maskkv.profile; the first is the default of the maskkv press.")
@click.option("--max-tokens", type=int, default=64, show_default=True, callback=_positive,
              help="Generation length when a request gives no max_tokens.")
@click.option("--block-length", type=int, default=32, show_default=True, callback=_positive,
              help="Default block length; the generation length is rounded up to a multiple of it.")
@click.option("--steps", type=int, default=None, callback=_positive,
              help="Default denoising steps (default: one per generated token).")
@click.option("--max-batch-size", type=int, default=8, show_default=True, callback=_positive,
              help="Most requests decoded together in one batch.")
@click.option("--max-batch-tokens", type=int, default=None, callback=_positive,
              help="Most rows x padded prompt tokens in one batch (default: no limit).")
@click.option("--max-queue", type=int, default=256, show_default=True, callback=_positive,
              help="Queued requests beyond this are refused with 503.")
@click.option("--max-prompt-tokens", type=int, default=None, callback=_positive,
              help="Refuse longer prompts with 400 (default: no limit).")
@click.option("--batch-wait-ms", type=float, default=10.0, show_default=True, callback=click_check(low=0.0),
              help="How long the worker waits for more requests with the same settings before decoding.")
@click.option("--sse-keepalive-s", type=float, default=10.0, show_default=True,
              callback=click_check(low=0.0, low_open=True),
              help="Seconds between SSE keep-alive comments while no block is ready.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def serve(model_path: str, host: str, port: int, served_model_name: str | None, device: str, dtype: str | None,
          cache_kind: str, press_name: str | None, budget: int, profiles: tuple[str, ...], max_tokens: int,
          block_length: int, steps: int | None, max_batch_size: int, max_batch_tokens: int | None, max_queue: int,
          max_prompt_tokens: int | None, batch_wait_ms: float, sse_keepalive_s: float, log_level: str) -> None:
    """Serve a LLaDA or Dream checkpoint with an OpenAI-compatible API (chat, completions, streaming)."""
    try:
        import uvicorn

        from .app import ServerConfig, create_app
        from .worker import WorkerSettings
    except ModuleNotFoundError as err:
        raise click.ClickException(f"maskkv serve needs the 'serve' extra ({err.name} is missing): "
                                   "pip install 'maskkv[serve]'") from None
    named = _parse_profiles(profiles)
    _generation_config(cache_kind, press_name, budget)  # the requests' defaults, checked before the model loads
    local = Path(model_path)
    if model_path and not local.exists() and model_path.startswith((".", "/")):
        raise click.BadParameter(f"{model_path} does not exist", param_hint="--model")
    name = served_model_name or (local.name if local.exists() else model_path)
    worker = WorkerSettings(model_path=model_path, device=device, dtype=WEIGHT_DTYPES[dtype] if dtype else None,
                            max_batch_size=max_batch_size, max_queue=max_queue, batch_wait_ms=batch_wait_ms,
                            max_batch_tokens=max_batch_tokens, profiles=named)
    config = ServerConfig(worker=worker, served_model_name=name, cache=cache_kind, press=press_name, budget=budget,
                          profile=next(iter(named), None), max_tokens=max_tokens, block_length=block_length,
                          steps=steps, max_prompt_tokens=max_prompt_tokens, keepalive_s=sse_keepalive_s)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(config)
    click.echo(f"maskkv serve: {name} on http://{host}:{port} (playground at /, OpenAI API at /v1)", err=True)
    # uvicorn handles SIGTERM/SIGINT (stop accepting, finish the running requests, shut the worker down) and then
    # re-raises the signal to the handler found at start: make that a clean exit with status 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=60)
    click.echo("maskkv serve: shut down", err=True)


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


@click.command("inspect")
@click.option("--model", "model_path", required=True, help="Checkpoint folder or hub id.")
@click.option("--prompt-file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="UTF-8 document (the prompt).")
@click.option("--question", default=None, help="Appended to the document after a blank line.")
@click.option("--chat/--no-chat", default=True, show_default=True, help="Wrap the prompt in the chat template.")
@click.option("--press", "press_name", default="maskkv", show_default=True, help="The press whose choice is shown.")
@click.option("--budget", type=int, required=True, callback=_positive,
              help="Prompt K/V pairs kept per KV head per layer.")
@click.option("--profile", "profile_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="MaskKV layer profile (default: maskkv_profile.json beside the checkpoint, if any).")
@click.option("--gen-length", type=int, default=8, show_default=True, callback=_positive)
@click.option("--block-length", type=int, default=None, callback=_positive, help="Default: one block.")
@click.option("--cache", "cache_kind", type=click.Choice(["dllm", "none"]), default="dllm", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The HTML report; the PNG goes beside it (same name, .png).")
def inspect(model_path: str, prompt_file: Path, question: str | None, chat: bool, press_name: str, budget: int,
            profile_path: str | None, gen_length: int, block_length: int | None, cache_kind: str, device: str,
            out_path: Path) -> None:
    """Show which prompt tokens a press keeps: a standalone HTML report and a PNG heat map."""
    from .. import load_model, load_tokenizer
    from .inspect import kept_report, render_html, render_png

    if block_length is not None and gen_length % block_length:
        raise click.BadParameter(f"{block_length} does not divide --gen-length {gen_length}",
                                 param_hint="--block-length")
    text = prompt_file.read_text(encoding="utf-8").strip()
    if question:
        text = f"{text}\n\n{question.strip()}"
    if profile_path is None and press_name == "maskkv" and (Path(model_path) / "maskkv_profile.json").is_file():
        profile_path = str(Path(model_path) / "maskkv_profile.json")
    try:
        gen = _generation_config(cache_kind, press_name, budget, profile_path)
        model = load_model(model_path, device=device)
        tokenizer = load_tokenizer(model_path)
        report = kept_report(model, tokenizer, text, press=gen.make_press(), chat=chat, gen_length=gen_length,
                             block_length=block_length, cache=gen.make_cache())
        out_path.write_text(render_html(report, title=f"maskkv inspect: {prompt_file.name}"), encoding="utf-8")
        png = out_path.with_suffix(".png")
        render_png(report, png)
    except (ValueError, OSError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"answer: {report['answer']!r}; {100 * report['kept_prompt_share']:.1f}% of the prompt K/V kept; "
               f"wrote {out_path} and {png}")
