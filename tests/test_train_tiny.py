"""A short smoke run of the tiny-model trainer: it trains, exports a loadable checkpoint, and resumes exactly."""

from __future__ import annotations

import json
import random

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import maskkv
from maskkv.train.data import (
    ANSWER_TOKENS,
    TASKS,
    SyntheticFiller,
    TaskBuilder,
    task_parts,
)
from maskkv.train.tokenizer import digit_strings

ARGS = ["--layers", "1", "--hidden", "32", "--heads", "2", "--mlp", "64", "--vocab", "3000", "--filler", "synthetic",
        "--stages", "96:3:2:64,160:3:2", "--warmup", "2", "--checkpoint-every", "2", "--eval-every", "0", "--quiet"]


def _run(out, *extra):
    from maskkv.cli import main

    result = CliRunner().invoke(main, ["train-tiny", "--out", str(out), *ARGS, *extra])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    _run(out)
    return out


def test_smoke_run_exports_a_loadable_llada_checkpoint(straight):
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["finished"] and summary["step"] == 6
    model = maskkv.load_model(str(straight / "model"))
    tokenizer = maskkv.load_tokenizer(str(straight / "model"))
    assert model.config.family == "llada" and model.config.hidden_size == 32
    assert tokenizer.mask_token_id == model.config.mask_token_id
    rows = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert rows and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if "loss" in r)
    ids = tokenizer("One of the special magic numbers", return_tensors="pt")["input_ids"]
    out = maskkv.generate(model, ids, gen_length=8, steps=8)
    assert out.sequences.shape == (1, ids.shape[1] + 8)


def test_interrupted_run_resumes_to_the_same_weights(straight, tmp_path):
    output = _run(tmp_path, "--stop-at-step", "4")
    assert "stopped early" in output
    assert json.loads((tmp_path / "summary.json").read_text())["step"] == 4
    _run(tmp_path)
    a = load_file(str(straight / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_another_configuration(straight):
    from maskkv.cli import main

    result = CliRunner().invoke(main, ["train-tiny", "--out", str(straight), *ARGS[:-1], "--lr", "0.01"])
    assert result.exit_code != 0 and "another configuration" in result.output


def test_tasks_and_tokenizer_invariants(straight):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(straight / "model" / "tokenizer.json"))
    assert all(len(tok.encode(s, add_special_tokens=False).ids) == 1 for s in digit_strings())
    builder = TaskBuilder(tok, SyntheticFiller())
    rng = random.Random(0)
    for task in TASKS:
        for _ in range(5):
            sample = builder.sample(task, 400, rng)
            assert sample.task == task and all(r in sample.answer and r in sample.content for r in sample.references)
            assert len(tok.encode(sample.content).ids) <= 400
            assert len(tok.encode(sample.answer, add_special_tokens=False).ids) < ANSWER_TOKENS
    with pytest.raises(ValueError, match="unknown task"):
        task_parts("nope", rng)
