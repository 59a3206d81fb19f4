"""Figures after the plain install: matplotlib is a core dependency, every plotting path writes a valid PNG, and a
missing matplotlib (a broken install) is reported, never skipped in silence."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from maskkv.bench.report import machine_info, write_outputs
from maskkv.cli import main
from maskkv.eval.common import EvalError
from maskkv.eval.plots import HeatmapPanel, budget_curves, niah_heatmap
from maskkv.models.tiny import write_tiny_checkpoint

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].strip().lower() for r in requirements}


def _valid_png(path: Path) -> tuple[int, int]:
    """Decodes ``path`` with matplotlib (no importorskip: it is a core dependency); returns (width, height)."""
    from matplotlib.image import imread

    assert path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4) and float(pixels.std()) > 0  # not a blank canvas
    return pixels.shape[1], pixels.shape[0]


def _project_table() -> dict:
    try:
        import tomllib  # Python >= 3.11
    except ImportError:  # Python 3.10: the [project] table's two lists, read as TOML arrays of strings
        text = PYPROJECT.read_text()
        deps = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
        extras = re.search(r"^\[project\.optional-dependencies\]\n(.*?)^\[", text, re.S | re.M).group(1)
        return {"dependencies": re.findall(r'"([^"]+)"', deps),
                "optional-dependencies": {m.group(1): re.findall(r'"([^"]+)"', m.group(2))
                                          for m in re.finditer(r"^(\w+) = \[(.*?)\]", extras, re.M)}}
    return tomllib.loads(PYPROJECT.read_text())["project"]


def test_matplotlib_is_a_core_dependency():
    project = _project_table()
    assert "matplotlib" in _requirement_names(project["dependencies"])
    for extra, requirements in project.get("optional-dependencies", {}).items():
        assert "matplotlib" not in _requirement_names(requirements), f"extra {extra!r} repeats a core dependency"


def _bench_document() -> dict:
    rows = []
    for system, label, speed in (("vanilla", "LLaDA", 40.0), ("maskkv", "MaskKV", 90.0)):
        for length in (64, 128, 256):
            rows.append({
                "config": {"system": system, "prompt_length": length, "dtype": "float32", "gen_length": 8,
                           "steps": 8, "block_length": 8, "budget": 16},
                "system_label": label, "model": {"name": "llada-tiny", "parameters": 1000},
                "tokens_per_s": speed * 64 / length, "peak_memory_bytes": 2**20 * length,
                "decode_step_mean_s": 0.001 * length / 64, "model_memory_bytes": 2**20, "extrapolated": False,
                "threads": 1,
            })  # fmt: skip
    return {"machine": machine_info("cpu"), "rows": rows}


def test_bench_figure_is_a_valid_png(tmp_path):
    paths = write_outputs(_bench_document(), tmp_path)
    assert paths["png"] == tmp_path / "figure.png"
    width, height = _valid_png(paths["png"])
    assert width > 2 * height > 400  # three panels side by side


def test_eval_figures_are_valid_pngs(tmp_path):
    panels = [HeatmapPanel(label=name, lengths=[500, 1000, 1500], depths=[0, 50, 100],
                           scores=[[1.0, 0.5, None], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]) for name in ("Full", "maskkv")]
    heatmap = niah_heatmap(panels, tmp_path / "niah" / "heatmap.png", title="tiny", trained_length=1000)
    width, height = _valid_png(heatmap)
    assert width > height > 100
    curves = {"single @ 1024": {"maskkv": [(16, 97.5), (32, 97.5)], "snapkv": [(16, 2.5), (32, 10.0)]},
              "multikey @ 1024": {"maskkv": [(16, 72.5), (32, 72.5)]}}
    path = budget_curves(curves, {"single @ 1024": 97.5}, tmp_path / "curves.png", title="accuracy")
    width, height = _valid_png(path)
    assert width > height > 100


@pytest.fixture
def no_matplotlib(monkeypatch):
    """Make every ``import matplotlib...`` fail, as in an install that lost the dependency."""
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_a_missing_matplotlib_is_reported_not_skipped(no_matplotlib, tmp_path, caplog):
    panel = HeatmapPanel(label="Full", lengths=[500], depths=[0], scores=[[1.0]])
    with pytest.raises(EvalError, match=r"matplotlib, a dependency of maskkv, cannot be imported .*no heat map "
                                        r"h\.png; `pip install matplotlib`"):
        niah_heatmap([panel], tmp_path / "h.png")
    with pytest.raises(EvalError, match=r"no curves c\.png"):
        budget_curves({"t": {"m": [(16, 1.0)]}}, {}, tmp_path / "c.png")
    with caplog.at_level(logging.WARNING, logger="maskkv.bench.report"):
        paths = write_outputs(_bench_document(), tmp_path / "bench")
    assert "png" not in paths and not (tmp_path / "bench" / "figure.png").exists()
    assert (tmp_path / "bench" / "results.json").is_file()
    assert "matplotlib, a dependency of maskkv, cannot be imported" in caplog.text and "figure.png" in caplog.text


def test_niah_without_matplotlib_keeps_its_numbers_and_says_why(no_matplotlib, tmp_path):
    """The old failure: every cell decoded, then a ModuleNotFoundError traceback at the heat map."""
    model = write_tiny_checkpoint(tmp_path / "m", "llada", seed=6)
    hay = tmp_path / "hay.txt"
    hay.write_text("The baker opened her shop before the sun came up. " * 40)
    args = ["eval", "niah", "--model", str(model), "--haystack", str(hay), "--lengths", "300", "--num-depths", "2",
            "--length-buffer", "100", "--gen-length", "4", "--out", str(tmp_path / "out"), "--run-name", "r",
            "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "no heat map" in result.output
    assert "pip install matplotlib" in " ".join(result.output.split())
    summary = json.loads((tmp_path / "out" / "r" / "niah_summary.json").read_text())
    assert summary["heatmap"] is None and "matplotlib" in summary["heatmap_error"]
    assert (tmp_path / "out" / "r" / "full" / "pivot.csv").is_file()
