"""``maskkv inspect``: the kept-token report (HTML + PNG) agrees with generate's answer and cache accounting."""

from __future__ import annotations

import html
import random
import re
import sys

import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("matplotlib")

import maskkv  # noqa: E402
from maskkv.cache import DLLMCache  # noqa: E402
from maskkv.cli import main  # noqa: E402
from maskkv.demo import shipped_model_path  # noqa: E402
from maskkv.presses import make_press  # noqa: E402
from maskkv.serve.inspect import kept_report  # noqa: E402
from maskkv.text import decode_answer, encode_prompt  # noqa: E402

MODEL = shipped_model_path()


@pytest.fixture(scope="module")
def needle():
    from maskkv.train.data import SyntheticFiller, TaskBuilder

    builder = TaskBuilder(maskkv.load_tokenizer(MODEL).backend_tokenizer, SyntheticFiller("heldout"))
    return builder.sample("single", 300, random.Random(3)).content


@pytest.mark.parametrize("press_name", ["maskkv", "snapkv"])
def test_kept_report_matches_generate_answer_and_kept_pairs(needle, one_torch_thread, press_name):
    model, tokenizer = maskkv.load_model(MODEL), maskkv.load_tokenizer(MODEL)
    press = make_press(press_name, 12)
    report = kept_report(model, tokenizer, needle, press=press, cache=DLLMCache())
    ids = encode_prompt(tokenizer, needle, chat=True)
    out = maskkv.generate(model, ids, gen_length=8, steps=8, cache=DLLMCache(), press=press)
    assert report["answer"] == decode_answer(tokenizer, out.sequences[0, ids.shape[1]:])
    counts = torch.tensor(report["counts"])  # [P, D]
    assert counts.shape == (ids.shape[1], model.config.num_layers) and len(report["tokens"]) == ids.shape[1]
    # the cache's own count of kept pairs (summed over layers and heads) is the report's
    assert int(counts.sum()) == out.cache_bytes["kept_prompt_pairs"]
    assert report["kept_prompt_share"] == pytest.approx(out.cache_bytes["kept_prompt_pairs"] / out.cache_bytes["prompt_pairs"])


def test_inspect_cli_writes_html_and_png(needle, tmp_path):
    document, question = needle.rsplit("\n\n", 1)
    prompt = tmp_path / "doc.txt"
    prompt.write_text(document, encoding="utf-8")
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["inspect", "--model", str(MODEL), "--prompt-file", str(prompt), "--question",
                                       question, "--press", "maskkv", "--budget", "16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    spans = re.findall(r'<span class="tok (kept|evicted)"[^>]*title="([^"]*)">([^<]*)</span>', page)
    tokenizer = maskkv.load_tokenizer(MODEL)
    assert len(spans) == encode_prompt(tokenizer, needle, chat=True).shape[1]
    assert document[:100] in html.unescape("".join(s[2] for s in spans))
    assert 0 < sum(s[0] == "kept" for s in spans) < len(spans)
    assert spans[0][1].startswith("layer 0: ") and "<script" not in page and "http" not in page
    answer = re.search(r'<div class="answer">([^<]*)</div>', page).group(1)
    assert f"answer: {answer!r}" in result.output
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = CliRunner().invoke(main, ["inspect", "--model", str(MODEL), "--prompt-file", str(prompt), "--press", "nope",
                                    "--budget", "4", "--out", str(out)])
    assert bad.exit_code != 0 and "unknown press 'nope'" in bad.output and "Traceback" not in bad.output


def _small_report() -> dict:
    counts = [[layer + (i % 3) for layer in range(2)] for i in range(40)]  # [P, D], heads per layer kept
    return {"tokens": [f"t{i}" for i in range(40)], "counts": counts, "layers": 2, "heads": 4, "answer": "42",
            "kept_prompt_share": sum(map(sum, counts)) / (2 * 4 * 40), "nfe": 8, "seconds": 0.1, "press": "p"}


def test_png_is_drawn_without_pyplot(tmp_path, monkeypatch):
    """The object API on the Agg canvas: with pyplot unimportable the heat map is still written."""
    from matplotlib.image import imread

    from maskkv.serve.inspect import render_png

    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # `import matplotlib.pyplot` now fails
    path = tmp_path / "kept.png"
    render_png(_small_report(), path)
    pixels = imread(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and float(pixels.std()) > 0


def test_png_without_matplotlib_names_the_missing_figure(tmp_path, monkeypatch):
    from maskkv.eval.common import EvalError
    from maskkv.serve.inspect import render_png

    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(EvalError, match=r"no heat map kept\.png; `pip install matplotlib`"):
        render_png(_small_report(), tmp_path / "kept.png")
    assert not (tmp_path / "kept.png").exists()
