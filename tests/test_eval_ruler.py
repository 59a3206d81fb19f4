"""RULER-style tasks: deterministic generators at a target token length, RULER scoring, a killed run that resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from maskkv.cli import main
from maskkv.eval import ruler
from maskkv.eval.common import read_rows, strip_volatile
from maskkv.eval.words import Haystack, word_lists
from maskkv.models.tiny import write_tiny_checkpoint
from maskkv.models.tokenizer import load_tokenizer


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ruler-llada"), "llada", seed=2)


@pytest.fixture(scope="module")
def data(llada_dir):
    essay = Haystack(text=" ".join(f"Sentence number {i} talks about rivers and bread." for i in range(3000)),
                     source="test", files=())
    return ruler.RulerData(tokenizer=load_tokenizer(llada_dir), words=word_lists("builtin"), essay=essay, seed=42)


@pytest.mark.parametrize("task", ["niah_single_1", "niah_single_2", "niah_multikey_2", "niah_multikey_3",
                                  "niah_multivalue", "niah_multiquery", "vt", "fwe"])
def test_generators_fit_the_length_and_are_deterministic(data, task):
    spec = ruler.RULER_TASKS[task]
    length, gen = 1500, 16
    size = ruler.fit_size(spec, data, length, length - gen)
    sample, tokens = ruler.build_sample(spec, data, length, size, 3, gen)
    again, _ = ruler.build_sample(spec, data, length, size, 3, gen)
    other, _ = ruler.build_sample(spec, data, length, size, 4, gen)
    assert sample == again and sample != other
    assert tokens == data.count(sample.input + sample.answer_prefix) <= length - gen
    assert tokens > 0.6 * (length - gen)  # filled up to the target, not just valid
    for answer in sample.outputs:
        assert answer in sample.input
    if spec.kind == "niah" and spec.num_q * spec.num_v == 1:
        assert "What is the special magic" in sample.input


def test_niah_templates_and_answers(data):
    single, _ = ruler.build_sample(ruler.RULER_TASKS["niah_single_1"], data, 1000, 5, 0, 16)
    assert single.input.startswith("A special magic number is hidden within the following text.")
    assert single.answer_prefix.endswith("mentioned in the provided text is")
    assert len(single.outputs) == 1 and single.outputs[0].isdigit() and len(single.outputs[0]) == 7
    multi, _ = ruler.build_sample(ruler.RULER_TASKS["niah_multivalue"], data, 1500, 50, 0, 16)
    assert multi.input.startswith("Some special magic numbers are hidden") and len(multi.outputs) == 4
    uuids, _ = ruler.build_sample(ruler.RULER_TASKS["niah_multikey_3"], data, 1500, 5, 0, 16)
    assert len(uuids.outputs[0]) == 36 and uuids.outputs[0][14] == "4"
    vt, _ = ruler.build_sample(ruler.RULER_TASKS["vt"], data, 1500, 4, 0, 16)
    assert "5 variables are assgined the value" in vt.answer_prefix and len(vt.outputs) == 5
    assert vt.input.count("Memorize and track") == 2  # the solved example, then the question


def test_ruler_scoring():
    assert ruler.postprocess("  a\x07b \n") == "a\nb"
    assert ruler.postprocess("a\x07b", "delete") == "ab"
    assert ruler.string_match_all("The numbers are 123 and 456.", ["123", "456", "789"]) == pytest.approx(2 / 3)
    assert ruler.string_match_part("PARIS, France", ["paris", "rome"]) == 1.0
    scored = ruler.score_ruler("niah_multivalue", ["1 2", "", None], [["1", "2"], ["3"], ["4"]])
    assert scored["score"] == round(100 * (1 + 0 + 0) / 3, 2) and scored["nulls"] == 2
    assert ruler.score_ruler("qa_1", ["it was rome"], [["Paris", "Rome"]])["score"] == 100.0


def test_word_lists_sources():
    builtin = word_lists("builtin")
    assert builtin.source == "builtin" and len(builtin.nouns) > 300 and len(builtin.adjectives) > 200
    assert list(builtin.nouns) == sorted(set(builtin.nouns))
    auto = word_lists("auto")
    if auto.source.startswith("wonderwords"):  # installed: RULER's lists, much larger
        assert len(auto.nouns) > len(builtin.nouns) and auto.record()["source"] == auto.source
    else:
        assert auto == builtin


def test_unknown_ruler_task(llada_dir, tmp_path):
    result = CliRunner().invoke(main, ["eval", "ruler", "--model", str(llada_dir), "--tasks", "niah_single_9",
                                       "--out", str(tmp_path)])
    assert result.exit_code != 0 and "unknown RULER task 'niah_single_9'" in result.output
    assert "niah_multikey_2" in result.output


# ----------------------------------------------------------------------------------------------------------
# a real kill in the middle of a run, then a resume


def _args(model: Path, out: Path) -> list[str]:
    return ["eval", "ruler", "--model", str(model), "--tasks", "niah_single_1,vt", "--lengths", "700",
            "--num-samples", "10", "--gen-length", "8", "--cache", "none", "--press", "streaming", "--budget", "64",
            "--words", "builtin", "--out", str(out), "--run-name", "run", "--no-progress"]


def test_killed_synthetic_run_resumes_to_the_same_files(llada_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "maskkv.cli", *_args(llada_dir, tmp_path / "killed")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pred = tmp_path / "killed" / "run" / "pred" / "niah_single_1-700.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if pred.exists() and pred.read_bytes().count(b"\n") >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    if proc.returncode == 0:
        pytest.fail("the run finished before it could be killed; make it longer")
    assert proc.returncode == -signal.SIGKILL
    killed_rows = read_rows(pred)
    assert 2 <= len(killed_rows) < 10
    assert not (tmp_path / "killed" / "run" / "result.json").exists()
    # the kill may also have cut a line: add a torn line the way a kill mid-write leaves one
    with pred.open("ab") as handle:
        handle.write(b'{"pred": "torn')

    resumed = CliRunner().invoke(main, _args(llada_dir, tmp_path / "killed"), catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    straight = CliRunner().invoke(main, _args(llada_dir, tmp_path / "straight"), catch_exceptions=False)
    assert straight.exit_code == 0, straight.output
    a, b = tmp_path / "straight" / "run", tmp_path / "killed" / "run"
    for task in ("niah_single_1-700", "vt-700"):
        rows_a = [strip_volatile(r) for r in read_rows(a / "pred" / f"{task}.jsonl")]
        rows_b = [strip_volatile(r) for r in read_rows(b / "pred" / f"{task}.jsonl")]
        assert len(rows_a) == 10 and rows_a == rows_b
    assert read_rows(pred)[: len(killed_rows)] == killed_rows  # finished rows kept, not redone
    assert (a / "result.json").read_text() == (b / "result.json").read_text()
    assert (a / "result.csv").read_text() == (b / "result.csv").read_text()
    result = json.loads((a / "result.json").read_text())
    assert set(result["scores"]) == {"niah_single_1", "vt"} and result["details"]["vt-700"]["samples"] == 10
    assert result["config"]["data"]["words"]["source"] == "builtin"


def test_fast_dllm_cache_in_an_eval_run(llada_dir, tmp_path):
    args = ["eval", "ruler", "--model", str(llada_dir), "--tasks", "niah_single_1", "--lengths", "600",
            "--num-samples", "2", "--gen-length", "8", "--words", "builtin", "--run-name", "run", "--no-progress"]
    result = CliRunner().invoke(main, [*args, "--cache", "fast-dual", "--out", str(tmp_path / "fast")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "fast" / "run" / "run_config.json").read_text())
    assert record["config"]["generation"]["cache_repr"] == "FastDLLMCache(mode='dual')"
    result = CliRunner().invoke(main, [*args, "--cache", "fast-prefix", "--press", "snapkv", "--budget", "16",
                                       "--out", str(tmp_path / "bad")])
    assert result.exit_code != 0 and "does not evict" in result.output
