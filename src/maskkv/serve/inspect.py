"""``maskkv inspect``: which prompt tokens a press kept, as a standalone HTML page and a PNG.

The offline twin of the playground: one prompt is answered with :func:`maskkv.generate`, the press's kept
positions after the first pass are read through :class:`~maskkv.serve.observe.StepHook`, and every prompt token
is coloured by how many layers x KV heads kept it (hover for the per-layer counts).
"""

from __future__ import annotations

import html
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .observe import StepHook, kept_counts


def kept_report(model: Any, tokenizer: Any, text: str, *, press: Any, chat: bool = True, gen_length: int = 8,
                steps: int | None = None, block_length: int | None = None, cache: Any = None) -> dict[str, Any]:
    """Answer ``text`` and record per prompt token the KV heads of each layer that kept it after the first pass.

    Returns ``tokens`` (decoded one by one), ``counts`` ``[P][D]``, ``layers``, ``heads``, ``answer``,
    ``kept_prompt_share``, ``nfe``, ``seconds``, ``press`` (its repr).
    """
    from .. import generate
    from ..text import decode_answer, encode_prompt

    ids = encode_prompt(tokenizer, text, chat=chat).to(model.embed_tokens.weight.device)
    config = model.config
    plans: list[Any] = []
    hook = StepHook(cache, lambda canvas: None, plans.append)
    out = generate(model, ids, gen_length=gen_length, steps=steps or gen_length, block_length=block_length,
                   cache=hook, press=press)
    length = ids.shape[1]
    counts = kept_counts(plans[0] if plans else None, length, config.num_layers, config.num_kv_heads, 1,
                         torch.ones(1, length, dtype=torch.bool))[0]  # [D, P]
    return {
        "tokens": tokenizer.batch_decode([[t] for t in ids[0].tolist()]),
        "counts": counts.T.tolist(),
        "layers": config.num_layers,
        "heads": config.num_kv_heads,
        "answer": decode_answer(tokenizer, out.sequences[0, length:]),
        "kept_prompt_share": float(counts.sum()) / (config.num_layers * config.num_kv_heads * length),
        "nfe": out.nfe,
        "seconds": out.seconds,
        "press": repr(press),
    }


def kept_colour(share: float) -> str:
    """Background of a token kept by ``share`` of the layers x heads (the playground's ``keptColour``)."""
    return "transparent" if share <= 0 else f"rgba(230, 110, 0, {0.12 + 0.8 * share:.3f})"


def render_html(report: dict[str, Any], title: str = "maskkv inspect") -> str:
    """A standalone page (inline CSS, no scripts, no network) of the answer and the coloured prompt tokens."""
    css = (resources.files("maskkv.serve") / "static" / "playground.css").read_text(encoding="utf-8")
    total = report["layers"] * report["heads"]
    spans = []
    for token, counts in zip(report["tokens"], report["counts"]):
        kept = sum(counts)
        hover = "&#10;".join(f"layer {layer}: {c}/{report['heads']} heads" for layer, c in enumerate(counts))
        spans.append(f'<span class="tok {"kept" if kept else "evicted"}" style="background: {kept_colour(kept / total)}" '
                     f'title="{hover}">{html.escape(token)}</span>')
    legend = "".join(f'<span class="swatch" style="background: {kept_colour(s)}">{round(100 * s)}%</span>'
                     for s in (0, 0.25, 0.5, 0.75, 1))
    stats = (f"{100 * report['kept_prompt_share']:.1f}% of the prompt K/V kept by {html.escape(report['press'])}; "
             f"{len(report['tokens'])} prompt tokens, {report['layers']} layers x {report['heads']} KV heads, "
             f"{report['nfe']} forward passes, {report['seconds']:.2f} s")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{css}
main {{ display: block; }}</style></head>
<body><header><h1>{html.escape(title)}</h1></header><main>
<h2>Answer</h2><div class="answer">{html.escape(report['answer']) or '(empty answer)'}</div>
<p class="muted">{stats}</p>
<h2>Prompt tokens the press kept</h2>
<div class="legend">kept by {legend} of the layers x heads (hover a token for its per-layer counts)</div>
<div class="tokens">{''.join(spans)}</div>
</main></body></html>
"""


def render_png(report: dict[str, Any], path: Path) -> None:
    """Heat map of kept heads per layer (rows) and prompt token (columns), with the all-layer share below.

    matplotlib's object API on the Agg canvas (:func:`maskkv.eval.plots.figure_api`): no pyplot state.
    """
    from ..eval.plots import figure_api

    Figure, Canvas = figure_api(f"heat map {path.name}")
    counts = torch.tensor(report["counts"], dtype=torch.float32).T  # [D, P]
    share = counts.sum(0) / (report["layers"] * report["heads"])
    fig = Figure(figsize=(12, 1.2 + 0.35 * report["layers"] + 1.6), layout="constrained")
    Canvas(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [max(report["layers"], 2), 2]})
    image = top.imshow(counts.numpy(), aspect="auto", cmap="Oranges", vmin=0, vmax=report["heads"],
                       interpolation="nearest")
    top.set_ylabel("layer")
    top.set_yticks(range(report["layers"]))
    top.set_title(f"KV heads keeping each prompt token (answer: {report['answer']!r}, "
                  f"{100 * report['kept_prompt_share']:.1f}% of the prompt K/V kept)")
    fig.colorbar(image, ax=(top, bottom), label="heads of the layer", pad=0.01)
    bottom.plot(share.numpy(), color="tab:orange", linewidth=0.8)
    bottom.set_ylim(0, 1.05)
    bottom.set_ylabel("share kept")
    bottom.set_xlabel("prompt position")
    fig.savefig(path, dpi=120)
