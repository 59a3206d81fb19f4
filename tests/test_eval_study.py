"""The eviction study (``maskkv eval study``) on the shipped tiny model: files, exactness, resume."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from maskkv.cli import main
from maskkv.eval.common import EvalError, read_rows
from maskkv.eval.study import FULL, StudyConfig, run_study


def _config(out, budgets=(8, 4096)) -> StudyConfig:
    from maskkv.demo import shipped_model_path

    return StudyConfig(model=str(shipped_model_path()), out_dir=out, methods=("maskkv", "snapkv"), budgets=budgets,
                       tasks=("single",), lengths=(256,), count=2, filler="synthetic")  # fmt: skip


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("study")
    yield out, run_study(_config(out), progress=False)
    torch.set_num_threads(before)


def test_study_writes_every_file_and_cell(study):
    out, document = study
    for name in ("predictions.jsonl", "study.json", "study.csv", "study_table.md", "study_curves.png"):
        assert (out / name).is_file(), name
    results = document["results"]
    assert len(results) == 1 + 2 * 2  # full + methods x budgets for the one (task, length) cell
    assert all(r["samples"] == 2 for r in results)
    assert json.loads((out / "study.json").read_text())["results"] == results
    table = (out / "study_table.md").read_text()
    assert "| maskkv |" in table and "| snapkv |" in table and "B=4096" in table


def test_budget_above_the_prompt_reproduces_the_full_cache(study):
    out, _ = study
    rows = read_rows(out / "predictions.jsonl")
    full = {r["index"]: r["prediction"] for r in rows if r["method"] == FULL}
    for row in rows:
        if row["budget"] == 4096:
            assert row["prediction"] == full[row["index"]], row
            assert row["kept_prompt_pairs"] is not None
    small = [r for r in rows if r["budget"] == 8]
    large = [r for r in rows if r["budget"] == 4096]
    assert all(s["kept_prompt_pairs"] < l["kept_prompt_pairs"] for s, l in zip(small, large, strict=True))


def test_study_resumes_and_refuses_another_sample_set(study):
    out, _ = study
    before = (out / "predictions.jsonl").read_text().splitlines()
    document = run_study(_config(out, budgets=(8, 16, 4096)), progress=False)
    after = (out / "predictions.jsonl").read_text().splitlines()
    assert after[: len(before)] == before  # nothing recomputed
    assert len(after) == len(before) + 2 * 2  # one new budget x two methods x two samples
    assert {r["budget"] for r in document["results"]} == {None, 8, 16, 4096}
    with pytest.raises(EvalError, match="another model or sample set"):
        run_study(StudyConfig(**{**_config(out).__dict__, "count": 3}), progress=False)


def test_study_cli_rejects_unknown_tasks_and_methods(tmp_path):
    result = CliRunner().invoke(main, ["eval", "study", "--out", str(tmp_path), "--tasks", "nosuch"])
    assert result.exit_code != 0 and "unknown task" in result.output
    result = CliRunner().invoke(main, ["eval", "study", "--out", str(tmp_path), "--methods", "nosuch", "--count", "1",
                                       "--lengths", "128", "--no-progress"])  # fmt: skip
    assert result.exit_code != 0 and "unknown press" in result.output
