"""The command line: help, generate on a tiny checkpoint, clear errors, the demo."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from maskkv.cli import main
from maskkv.models.tiny import write_tiny_checkpoint


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("cli-llada"), "llada", seed=3)


def test_generate_help_documents_every_flag():
    result = CliRunner().invoke(main, ["generate", "--help"])
    assert result.exit_code == 0
    for flag in ("--model", "--prompt", "--prompt-file", "--chat", "--gen-length", "--steps", "--block-length",
                 "--temperature", "--remasking", "--cfg-scale", "--threshold", "--cache", "--seed", "--device"):
        assert flag in result.output


@pytest.mark.parametrize("extra", [[], ["--chat"], ["--cache", "dllm"], ["--cache", "fast-dual", "--block-length", "4"], ["--block-length", "4", "--threshold", "0.9"]])
def test_generate_prints_an_answer(llada_dir, extra):
    args = ["generate", "--model", str(llada_dir), "--prompt", "The sky is", "--gen-length", "8", "--steps", "8"]
    result = CliRunner().invoke(main, args + extra)
    assert result.exit_code == 0, result.output
    assert "forward passes" in result.output


def test_generate_reads_a_prompt_file(llada_dir, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Rivers run down from the hills.")
    result = CliRunner().invoke(main, ["generate", "--model", str(llada_dir), "--prompt-file", str(prompt),
                                       "--gen-length", "4", "--steps", "4"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["--prompt", "hi", "--gen-length", "6", "--block-length", "4"], "divisible"),
        (["--prompt", "hi", "--gen-length", "8", "--steps", "3", "--block-length", "4"], "divisible"),
        (["--prompt", ""], "empty"),
        ([], "exactly one of"),
        (["--prompt", "hi", "--remasking", "entropy"], "remasking"),
    ],
)
def test_generate_errors_are_clear(llada_dir, args, message):
    result = CliRunner().invoke(main, ["generate", "--model", str(llada_dir), *args])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_generate_missing_model_folder(tmp_path):
    result = CliRunner().invoke(main, ["generate", "--model", str(tmp_path / "none"), "--prompt", "hi"])
    assert result.exit_code != 0 and "does not exist" in result.output


def test_demo_runs_on_a_random_checkpoint_and_says_so():
    result = CliRunner().invoke(main, ["demo", "--model", "random", "--haystack-tokens", "128", "--gen-length", "8",
                                       "--budget", "4"])
    assert result.exit_code == 0, result.output
    assert "RANDOM" in result.output
    assert "full cache" in result.output and "MaskKV" in result.output
