"""``maskkv lm-eval ARGS...``: lm-eval's own command line with the ``maskkv`` model registered."""

from __future__ import annotations

import sys
import textwrap

import click

_USAGE = """maskkv lm-eval: lm-eval's command line with the model `maskkv` registered; every lm-eval flag works.

  maskkv lm-eval --model maskkv --model_args pretrained=GSAI-ML/LLaDA-8B-Instruct,press=maskkv,budget=256 \\
      --tasks longbench_hotpotqa --apply_chat_template --batch_size 4 --output_path results/

model_args (key=value, comma separated), plus press_<field>=value for any press field (docs/evaluation.md):
"""


def _usage() -> str:
    from .model_args import MODEL_ARGS

    indent = " " * 23
    keys = "\n".join(textwrap.fill(meaning, width=110, initial_indent=f"  {key:<20} ", subsequent_indent=indent)
                     for key, meaning in MODEL_ARGS.items())
    return f"{_USAGE}{keys}\n\nlm-eval's own help follows ('maskkv lm-eval run --help' for the run flags).\n"


@click.command("lm-eval", add_help_option=False,
               context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def lm_eval_command(ctx: click.Context) -> None:
    """Run lm-evaluation-harness (all its flags) with the `maskkv` model; needs maskkv[lmeval]."""
    try:
        from lm_eval.__main__ import cli_evaluate

        from . import model  # noqa: F401  (registers "maskkv")
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] == "lm_eval":
            raise click.ClickException("lm-eval is not installed: pip install 'maskkv[lmeval]'") from err
        raise
    from ..eval.common import EvalError

    args = list(ctx.args)
    if not args or "-h" in args or "--help" in args:
        click.echo(_usage(), err=True)
    previous = sys.argv
    sys.argv = ["lm-eval", *args]
    try:
        cli_evaluate()
    except EvalError as err:  # a bad --model_args value or an over-long prompt: a message, not a traceback
        raise click.ClickException(str(err)) from err
    finally:
        sys.argv = previous
