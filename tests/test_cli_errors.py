"""Every user error of every subcommand ends in one named ``Error:`` line, never a traceback.

``CliRunner`` swallows an unhandled exception into ``result.exception`` (exit code 1, no traceback in the
output), so each case also asserts that the command left through ``SystemExit``: that is what the real
console script does only when the error was handled.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import maskkv
from maskkv.cli import main
from maskkv.models.tiny import write_tiny_checkpoint

SRC = Path(maskkv.__file__).resolve().parents[1]  # the maskkv under test, also in the subprocess


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A good tiny Dream checkpoint and broken copies of it."""
    root = tmp_path_factory.mktemp("cli-errors")
    good = write_tiny_checkpoint(root / "good", "dream", seed=5)
    out = {"good": good}
    out["truncated"] = shutil.copytree(good, root / "truncated")
    weights = out["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out["garbage"] = shutil.copytree(good, root / "garbage")
    (out["garbage"] / "model.safetensors").write_bytes(b"not a safetensors file" * 4)
    out["bad_json"] = shutil.copytree(good, root / "bad_json")
    (out["bad_json"] / "config.json").write_text('{"model_type": "Dream", ')
    out["mismatched"] = shutil.copytree(good, root / "mismatched")
    config = json.loads((good / "config.json").read_text())
    config["intermediate_size"] = config["intermediate_size"] * 2
    (out["mismatched"] / "config.json").write_text(json.dumps(config))
    out["pickled"] = root / "pickled"
    out["pickled"].mkdir()
    shutil.copy(good / "config.json", out["pickled"] / "config.json")
    (out["pickled"] / "pytorch_model.bin").write_bytes(b"\x80\x04")
    out["missing"] = root / "missing"
    out["calib_bad"] = root / "calib_bad.jsonl"
    out["calib_bad"].write_text('{"prompt": "fine"}\n{"prompt": \n')
    out["calib_list"] = root / "calib_list.jsonl"
    out["calib_list"].write_text('["a list"]\n')
    out["calib_good"] = root / "calib_good.jsonl"
    out["calib_good"].write_text('{"prompt": "The river runs."}\n')
    out["root"] = root
    return out


def _run(args: list[str], env: dict[str, str] | None = None):
    return CliRunner().invoke(main, args, env=env)


def _assert_clean_error(result, exit_code: int, *messages: str) -> None:
    assert isinstance(result.exception, SystemExit), f"unhandled {result.exception!r}\n{result.output}"
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    assert "Error:" in result.output
    for message in messages:
        assert message in result.output, result.output


# (arguments after `generate --model GOOD --prompt hi --gen-length 4 --steps 4`, the flag the message names)
BAD_FLOATS = [
    (["--temperature", "nan"], "--temperature must be >= 0 and finite, got nan"),
    (["--temperature", "inf"], "--temperature must be >= 0 and finite, got inf"),
    (["--temperature", "-1"], "--temperature must be >= 0"),
    (["--cfg-scale", "nan"], "--cfg-scale must be >= 0 and finite"),
    (["--cfg-scale", "-inf"], "--cfg-scale must be >= 0 and finite"),
    (["--threshold", "nan"], "--threshold must be in (0, 1], got nan"),
    (["--threshold", "1.5"], "--threshold must be in (0, 1]"),
    (["--top-p", "nan"], "--top-p must be in (0, 1]"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-k", "-1"], "--top-k must be an integer >= 0"),
    (["--alg-temp", "inf"], "--alg-temp must be >= 0 and finite"),
    (["--alg-temp", "nan"], "--alg-temp must be >= 0 and finite"),
    (["--transfer-ratio", "nan"], "--transfer-ratio must be in [0, 1]"),
    (["--transfer-ratio", "1.5"], "--transfer-ratio must be in [0, 1]"),
    (["--rope-scaling-factor", "0"], "--rope-scaling-factor must be > 0"),
    (["--rope-scaling-factor", "nan"], "--rope-scaling-factor must be > 0 and finite"),
]


@pytest.mark.parametrize("extra, message", BAD_FLOATS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_generate_rejects_bad_float_options_before_loading(folders, extra, message):
    # The model folder does not exist: the option must be rejected before anything is loaded.
    args = ["generate", "--model", str(folders["missing"]), "--prompt", "hi", "--gen-length", "4", "--steps", "4"]
    _assert_clean_error(_run(args + extra), 2, message)


@pytest.mark.parametrize(
    "model, extra, messages",
    [
        ("truncated", [], ["model.safetensors is not a valid safetensors file", "download or copy it again"]),
        ("garbage", [], ["model.safetensors is not a valid safetensors file"]),
        ("bad_json", [], ["config.json is not valid JSON"]),
        ("mismatched", [], ["do not belong together"]),
        ("pickled", [], ["only pickled weights", "model.safetensors"]),
        ("missing", [], ["does not exist"]),
        ("good", ["--remasking", "random"], ["remasking='random' is not valid for a Dream model"]),
        ("good", ["--cfg-scale", "1.0"], ["cfg_scale apply to LLaDA models only"]),
        ("good", ["--press", "nosuch"], ["unknown press 'nosuch'"]),
        ("good", ["--press", "snapkv", "--budget", "0"], ["budget must be a positive int"]),
        ("good", ["--profile", "README.md"], ["--profile needs --press maskkv"]),
    ],
)
def test_generate_file_and_value_errors(folders, model, extra, messages):
    args = ["generate", "--model", str(folders[model]), "--prompt", "hi", "--gen-length", "4", "--steps", "4"]
    _assert_clean_error(_run(args + extra), 1, *messages)


def test_generate_missing_prompt_file(folders):
    result = _run(["generate", "--model", str(folders["good"]), "--prompt-file", str(folders["root"] / "none.txt")])
    _assert_clean_error(result, 2, "none.txt", "does not exist")


@pytest.mark.parametrize(
    "model, data, messages",
    [
        ("good", "calib_bad", ["calib_bad.jsonl:2: not a JSON object line"]),
        ("good", "calib_list", ["calib_list.jsonl:1: expected a JSON object"]),
        ("truncated", "calib_good", ["model.safetensors is not a valid safetensors file"]),
        ("missing", "calib_good", ["does not exist"]),
    ],
)
def test_calibrate_errors(folders, model, data, messages):
    args = ["calibrate", "--model", str(folders[model]), "--data", str(folders[data]), "-o",
            str(folders["root"] / "profile.json")]
    _assert_clean_error(_run(args), 1, *messages)


def test_demo_errors(folders):
    _assert_clean_error(_run(["demo", "--model", str(folders["truncated"])]), 1, "not a valid safetensors file")
    _assert_clean_error(_run(["demo", "--model", str(folders["missing"])]), 1, "does not exist")


@pytest.mark.parametrize("command", ["niah", "ruler"])
@pytest.mark.parametrize(
    "extra, code, messages",
    [
        (["--temperature", "nan"], 2, ["--temperature must be >= 0 and finite, got nan"]),
        (["--transfer-ratio", "inf"], 2, ["--transfer-ratio must be in [0, 1], got inf"]),
        (["--merge-timeout", "nan"], 2, ["--merge-timeout must be > 0 and finite, got nan"]),
        (["--rope-scaling-factor", "0"], 2, ["--rope-scaling-factor must be > 0 and finite, got 0"]),
        (["--press", "maskkv", "--budget", "8", "--press-option", "alpha=NaN"], 1,
         ["alpha must be in [0, 1], got nan"]),
        (["--press", "snapkv", "--budget", "8", "--press-option", "alhpa=0.1"], 1, ["has no option alhpa"]),
        (["--press", "snapkv", "--budget", "8", "--press-option", "squeeze_fraction=\"x\""], 1,
         ["squeeze_fraction must be in [0, 1], got 'x'"]),
    ],
)
def test_eval_option_errors(folders, command, extra, code, messages):
    if command == "niah" and "--press" in extra:
        extra = ["--methods", extra[extra.index("--press") + 1]] + [a for i, a in enumerate(extra)
                                                                  if a != "--press" and extra[i - 1] != "--press"]
    args = ["eval", command, "--model", str(folders["good"]), "--out", str(folders["root"] / "eval"), *extra]
    _assert_clean_error(_run(args), code, *messages)


def test_eval_generation_config_checks_its_values():
    """The library side of the eval options (the runs' recorded configuration)."""
    from maskkv.eval.common import GenerationConfig

    for kwargs, message in [
        (dict(temperature=float("nan")), "temperature must be >= 0 and finite, got nan"),
        (dict(transfer_ratio=float("inf")), "DLLMCache.transfer_ratio must be in [0, 1], got inf"),
        (dict(press="maskkv", budget=8, press_options={"beta": float("nan")}), "MaskKVPress.beta must be in [0, 1]"),
    ]:
        with pytest.raises(ValueError) as caught:
            GenerationConfig(**kwargs)
        assert message in str(caught.value)


def test_eval_broken_checkpoint(folders):
    args = ["eval", "ruler", "--model", str(folders["truncated"]), "--out", str(folders["root"] / "eval-bad"),
            "--tasks", "niah_single_1", "--lengths", "256", "--num-samples", "1", "--haystack", "noise",
            "--no-progress"]
    _assert_clean_error(_run(args), 1, "not a valid safetensors file")


def test_bench_and_train_tiny_option_errors(folders):
    _assert_clean_error(_run(["bench", "--timeout", "nan"]), 1, "--timeout must be > 0 and finite, got nan")
    _assert_clean_error(_run(["bench", "--lengths", "abc"]), 1, "--lengths: 'abc' is not a whole number")
    _assert_clean_error(_run(["bench", "--arch", "nosuch"]), 1, "unknown --arch 'nosuch'")
    out = str(folders["root"] / "train")
    _assert_clean_error(_run(["train-tiny", "--out", out, "--lr", "nan"]), 2, "--lr must be > 0 and finite")
    _assert_clean_error(_run(["train-tiny", "--out", out, "--t-min", "2"]), 2, "--t-min must be in (0, 1)")


def test_debug_flag_and_environment_show_the_traceback(folders):
    args = ["generate", "--model", str(folders["truncated"]), "--prompt", "hi"]
    quiet = _run(args)
    _assert_clean_error(quiet, 1, "not a valid safetensors file")
    for result in (_run(["--debug", *args]), _run(args, env={"MASKKV_DEBUG": "1"})):
        assert isinstance(result.exception, SystemExit) and result.exit_code == 1
        assert "Traceback" in result.output and "SafetensorError" in result.output
        assert "not a valid safetensors file" in result.output


def test_an_internal_error_is_labelled_and_has_no_traceback(folders, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(maskkv, "load_model", broken)
    args = ["generate", "--model", str(folders["good"]), "--prompt", "hi"]
    _assert_clean_error(_run(args), 1, "internal error (RuntimeError: boom)", "--debug")
    assert "Traceback" in _run(["--debug", *args]).output


def test_out_of_memory_says_what_to_do(folders, monkeypatch):
    import torch

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(maskkv, "load_model", oom)
    result = _run(["generate", "--model", str(folders["good"]), "--prompt", "hi"])
    _assert_clean_error(result, 1, "out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)", "another device")


def test_the_console_script_prints_no_traceback(folders):
    """The real process: stderr has the one error line, the exit status is 1."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    env.pop("MASKKV_DEBUG", None)
    done = subprocess.run(
        [sys.executable, "-m", "maskkv.cli", "generate", "--model", str(folders["truncated"]), "--prompt", "hi"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert "Error: " in done.stderr and "model.safetensors is not a valid safetensors file" in done.stderr


def test_bench_worker_errors_are_one_line(folders):
    """An isolated measuring process reports a broken checkpoint as one line in its error row, no traceback."""
    out = folders["root"] / "bench"
    result = _run(["bench", "--model", str(folders["truncated"]), "--lengths", "32", "--systems", "vanilla",
                   "--gen-length", "4", "--steps", "4", "--block-length", "4", "--threads", "1", "--isolate",
                   "--out", str(out)])
    _assert_clean_error(result, 1, "1 configuration(s) failed")
    assert 'File "' not in result.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == 1 and "Traceback" not in rows[0]["error"] and 'File "' not in rows[0]["error"]
    assert "CheckpointError: " in rows[0]["error"] and "not a valid safetensors file" in rows[0]["error"]
