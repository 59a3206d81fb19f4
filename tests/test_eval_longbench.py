"""LongBench harness: data layouts, prompts and truncation, protocol variants, resumable end-to-end runs, errors."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from maskkv.cli import main
from maskkv.eval import longbench as lb
from maskkv.eval.common import read_rows, strip_volatile
from maskkv.eval.metrics import score_task as metrics_score_task
from maskkv.models.tiny import write_tiny_checkpoint

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "longbench"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("lb-llada"), "llada", seed=5)


@pytest.fixture(scope="module")
def no_template_dir(tmp_path_factory):
    folder = write_tiny_checkpoint(tmp_path_factory.mktemp("lb-plain"), "llada", seed=5)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    return folder


def _record(i: int, task: str = "multi_news", **extra) -> dict:
    row = {"input": "", "context": f"Passage {i}: the river runs to the sea near town number {i}. " * 20,
           "answers": [f"summary {i}"], "length": 100 + i, "dataset": task, "language": "en",
           "all_classes": None, "_id": f"{i:048x}"}
    row.update(extra)
    return row


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _invoke(args: list[str]):
    return CliRunner().invoke(main, ["eval", *args], catch_exceptions=False)


# ----------------------------------------------------------------------------------------------------------
# configuration, data, prompts


def test_score_task_is_reexported():
    assert lb.score_task is metrics_score_task
    assert lb.score_task("trec", ["Location"], [["Location"]], ["Location", "Person"]) == 100.0


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/longbench is not present")
def test_packaged_prompt_config_equals_the_official_files():
    from maskkv.eval.longbench_config import DATASET2MAXLEN, DATASET2PROMPT

    assert DATASET2PROMPT == json.loads((SHARED / "dataset2prompt.json").read_text(encoding="utf-8"))
    assert DATASET2MAXLEN == json.loads((SHARED / "dataset2maxlen.json").read_text(encoding="utf-8"))


def test_data_layouts_flat_subfolder_and_zip(tmp_path):
    rows = [_record(i) for i in range(3)]
    _write_jsonl(tmp_path / "flat" / "multi_news.jsonl", rows)
    _write_jsonl(tmp_path / "unzipped" / "data" / "multi_news.jsonl", rows)
    with zipfile.ZipFile(tmp_path / "data.zip", "w") as archive:
        archive.writestr("data/multi_news.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    for source in (tmp_path / "flat", tmp_path / "unzipped", tmp_path / "data.zip"):
        records, _ = lb.load_task(source, "multi_news")
        assert [r["_id"] for r in records] == [r["_id"] for r in rows]
        assert [r["index"] for r in records] == [0, 1, 2]
    prompts, maxlen, origin = lb.load_prompt_config(tmp_path / "flat")
    assert origin.startswith("packaged") and maxlen["multi_news"] == 512 and "{context}" in prompts["multi_news"]


def test_invalid_rows_are_named(tmp_path):
    bad = _record(0)
    del bad["answers"]
    _write_jsonl(tmp_path / "multi_news.jsonl", [_record(1), bad])
    with pytest.raises(lb.EvalError, match=r"multi_news.jsonl:2: missing field\(s\) answers"):
        lb.load_task(tmp_path, "multi_news")


def test_middle_truncation_and_chat_policy(llada_dir):
    from maskkv.models.tokenizer import load_tokenizer

    tok = load_tokenizer(llada_dir)
    record = _record(7)
    template = lb.load_prompt_config(None)[0]["multi_news"]
    full = template.format(**{k: v for k, v in record.items() if k in lb._FIELDS})
    full_ids = tok(full, add_special_tokens=True)["input_ids"]
    protocol = lb.Protocol(max_length=101)
    built = lb.build_prompt(tok, template, record, protocol, chat=False)
    half = 50  # floor(101 / 2): an odd limit keeps 2 * half tokens
    expected = tok.decode(full_ids[:half], skip_special_tokens=True) + tok.decode(full_ids[-half:],
                                                                                 skip_special_tokens=True)
    assert built.truncated
    assert built.ids[0].tolist() == tok(expected, add_special_tokens=True)["input_ids"]
    short = lb.build_prompt(tok, template, record, lb.Protocol(max_length=len(full_ids)), chat=False)
    assert not short.truncated and short.ids.shape[1] == len(full_ids)
    chat = lb.build_prompt(tok, template, record, protocol, chat=True)
    assert chat.ids.shape[1] > built.ids.shape[1]  # template tokens are not counted against max_length
    official = lb.PROTOCOLS["official"]
    assert not official.uses_chat("trec") and not official.uses_chat("lcc") and official.uses_chat("multi_news")
    assert lb.PROTOCOLS["lmeval"].uses_chat("trec")


def test_lmeval_protocol_edits_prompts_and_predictions():
    prompts = lb.load_prompt_config(None)[0]
    official, lmeval = lb.PROTOCOLS["official"], lb.PROTOCOLS["lmeval"]
    assert official.template("lcc", prompts).endswith("Next line of code:\n")
    assert lmeval.template("lcc", prompts).endswith("Next line of code:")
    assert lmeval.template("passage_count", prompts).endswith("The final answer is:")
    assert "{context}\n{input}" in lmeval.template("samsum", prompts)
    assert official.postprocess("trec", "\nLocation\nx") == "\nLocation\nx"  # the scorer applies the official rule
    assert lmeval.postprocess("trec", "\nLocation\nx") == ""  # until "\n": a leading newline empties it
    assert lmeval.postprocess("hotpotqa", "  Paris \n") == "Paris"
    assert lmeval.postprocess("lcc", "\n   \nx = 1\n") == "x = 1"
    rows = [{"pred": "\nLocation", "answers": ["Location"], "all_classes": ["Location", "Person"], "length": 10}]
    assert lb.score_predictions("trec", rows, official)["score"] == 100.0
    assert lb.score_predictions("trec", rows, lmeval)["score"] == 0.0


# ----------------------------------------------------------------------------------------------------------
# end to end


def _lb_args(model: Path, data: Path, out: Path, limit: int, *extra: str) -> list[str]:
    return ["longbench", "--model", str(model), "--tasks", "multi_news", "--data", str(data), "--limit", str(limit),
            "--max-prompt-tokens", "200", "--gen-length", "8", "--press", "snapkv", "--budget", "64", "--out",
            str(out), "--run-name", "run", "--no-progress", *extra]


def _same_run(a: Path, b: Path, tasks: list[str]) -> None:
    for task in tasks:
        rows_a = [strip_volatile(r) for r in read_rows(a / "pred" / f"{task}.jsonl")]
        rows_b = [strip_volatile(r) for r in read_rows(b / "pred" / f"{task}.jsonl")]
        assert rows_a == rows_b and rows_a
        assert (b / "pred" / f"{task}.jsonl").read_bytes().endswith(b"\n")
    assert (a / "result.json").read_text() == (b / "result.json").read_text()
    assert (a / "result.csv").read_text() == (b / "result.csv").read_text()
    assert sorted(p.name for p in (a / "pred").iterdir()) == sorted(p.name for p in (b / "pred").iterdir())


@pytest.mark.skipif(not (SHARED / "multi_news.jsonl").is_file(), reason="../shared/data/longbench is not present")
def test_longbench_multi_news_interrupted_run_resumes_to_the_same_files(llada_dir, tmp_path):
    straight = _invoke(_lb_args(llada_dir, SHARED, tmp_path / "a", 4))
    assert straight.exit_code == 0, straight.output
    assert "multi_news" in straight.output and "average" in straight.output
    # an interrupted run: two rows written, then a kill in the middle of the third line
    first = _invoke(_lb_args(llada_dir, SHARED, tmp_path / "b", 2))
    assert first.exit_code == 0, first.output
    pred = tmp_path / "b" / "run" / "pred" / "multi_news.jsonl"
    third = json.dumps(read_rows(tmp_path / "a" / "run" / "pred" / "multi_news.jsonl")[2])
    with pred.open("a", encoding="utf-8") as handle:
        handle.write(third[: len(third) // 2])
    (tmp_path / "b" / "run" / "result.json").unlink()
    resumed = _invoke(_lb_args(llada_dir, SHARED, tmp_path / "b", 4))
    assert resumed.exit_code == 0, resumed.output
    _same_run(tmp_path / "a" / "run", tmp_path / "b" / "run", ["multi_news"])
    # the finished rows were not generated again: their timings are the first run's
    before = read_rows(tmp_path / "b" / "run" / "pred" / "multi_news.jsonl")
    again = _invoke(_lb_args(llada_dir, SHARED, tmp_path / "b", 4))
    assert again.exit_code == 0
    assert read_rows(tmp_path / "b" / "run" / "pred" / "multi_news.jsonl") == before
    result = json.loads((tmp_path / "a" / "run" / "result.json").read_text())
    config = result["config"]
    assert config["generation"]["press_repr"].startswith("SnapKVPress(budget=64")
    assert config["generation"]["block_length"] == 8 and config["generation"]["cache"] == "dllm"
    assert config["protocol"]["name"] == "official" and config["protocol"]["max_length"] == 200
    assert result["samples"] == {"multi_news": 4} and set(result["scores"]) == {"multi_news"}
    rows = read_rows(tmp_path / "a" / "run" / "pred" / "multi_news.jsonl")
    assert list(rows[0])[:4] == ["pred", "answers", "all_classes", "length"]  # LongBench/eval.py-compatible
    assert all(r["truncated"] and r["chat"] for r in rows)


def test_changed_configuration_is_refused(llada_dir, tmp_path):
    _write_jsonl(tmp_path / "data" / "multi_news.jsonl", [_record(i) for i in range(2)])
    first = _invoke(_lb_args(llada_dir, tmp_path / "data", tmp_path / "out", 1))
    assert first.exit_code == 0, first.output
    other = CliRunner().invoke(main, ["eval", *_lb_args(llada_dir, tmp_path / "data", tmp_path / "out", 1),
                                      "--budget", "32"])
    assert other.exit_code != 0 and "--overwrite" in other.output and "generation.budget" in other.output
    fresh = _invoke([*_lb_args(llada_dir, tmp_path / "data", tmp_path / "out", 1), "--budget", "32", "--overwrite"])
    assert fresh.exit_code == 0, fresh.output


# ----------------------------------------------------------------------------------------------------------
# errors


def test_error_missing_data_folder(llada_dir, tmp_path):
    result = CliRunner().invoke(main, ["eval", *_lb_args(llada_dir, tmp_path / "nowhere", tmp_path / "o", 1)])
    assert result.exit_code != 0
    assert "nowhere" in result.output and "data.zip" in result.output and "--hf" in result.output
    assert "Traceback" not in result.output


def test_error_missing_task_file_names_it(llada_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["eval", *_lb_args(llada_dir, tmp_path / "empty", tmp_path / "o", 1)])
    assert result.exit_code != 0 and "multi_news.jsonl" in result.output and "huggingface" in result.output


def test_error_unknown_task_lists_valid_ones(llada_dir, tmp_path):
    _write_jsonl(tmp_path / "data" / "multi_news.jsonl", [_record(0)])
    args = _lb_args(llada_dir, tmp_path / "data", tmp_path / "o", 1)
    args[args.index("multi_news")] = "multi_newz"
    result = CliRunner().invoke(main, ["eval", *args])
    assert result.exit_code != 0
    assert "unknown LongBench task 'multi_newz'" in result.output and "narrativeqa" in result.output


def test_error_chat_without_template(no_template_dir, tmp_path):
    _write_jsonl(tmp_path / "data" / "multi_news.jsonl", [_record(0)])
    result = CliRunner().invoke(main, ["eval", *_lb_args(no_template_dir, tmp_path / "data", tmp_path / "o", 1),
                                       "--chat"])
    assert result.exit_code != 0 and "no chat template" in result.output and "--no-chat" in result.output
    # without --chat the run proceeds on raw text and records it
    plain = _invoke(_lb_args(no_template_dir, tmp_path / "data", tmp_path / "o", 1))
    assert plain.exit_code == 0, plain.output
    config = json.loads((tmp_path / "o" / "run" / "run_config.json").read_text())["config"]
    assert config["protocol"]["chat"] == "none"


def test_longbench_e_buckets_and_lmeval_preset(llada_dir, tmp_path):
    rows = [_record(i, length=length) for i, length in enumerate((1000, 5000, 3000))]  # no 8k+ row
    _write_jsonl(tmp_path / "data" / "multi_news_e.jsonl", rows)
    args = [*_lb_args(llada_dir, tmp_path / "data", tmp_path / "o", 3), "--longbench-e", "--protocol", "lmeval"]
    with pytest.warns(UserWarning, match="8k\\+ is empty"):
        result = _invoke(args)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "o" / "run" / "result.json").read_text())
    assert saved["benchmark"] == "longbench-e" and saved["samples"] == {"multi_news_e": 3}
    buckets = saved["buckets"]["multi_news"]
    assert set(buckets) == {"0-4k", "4-8k", "8k+"} and buckets["8k+"] is None
    protocol = saved["config"]["protocol"]
    assert protocol["name"] == "lmeval" and protocol["truncation"] == "none" and protocol["max_length"] is None
    assert (tmp_path / "o" / "run" / "pred" / "multi_news_e.jsonl").is_file()
