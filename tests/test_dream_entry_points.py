"""Every entry point that decodes with a Dream model uses the reference's effective defaults (top-k 50).

``test_sampling_reference.py`` shows that ``maskkv.generate``'s default call equals the reference's default
call; here a spy on the top-k filter records the ``k`` each entry point's sampler applies.
"""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from maskkv.models import load_model
from maskkv.models.tiny import write_tiny_checkpoint
from maskkv.sampling import confidence, generate
from maskkv.sampling.generate import REFERENCE_DEFAULTS


@pytest.fixture(scope="module")
def dream_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("dream-entry"), "dream", seed=9)


@pytest.fixture
def top_k_seen(monkeypatch):
    """The ``k`` of every top-k filter the Dream sampler applies (the spy wraps the real filter)."""
    seen: list[int] = []
    real = confidence.top_k_logits

    def spy(logits: torch.Tensor, top_k: int) -> torch.Tensor:
        seen.append(top_k)
        return real(logits, top_k)

    monkeypatch.setattr(confidence, "top_k_logits", spy)
    return seen


def _ids(seed: int = 0, length: int = 12) -> torch.Tensor:
    return torch.randint(0, 400, (1, length), generator=torch.Generator().manual_seed(seed))


def test_the_documented_reference_defaults():
    assert REFERENCE_DEFAULTS == {"llada": {"temperature": 0.0},
                                  "dream": {"temperature": 1.0, "top_p": 1.0, "top_k": 50}}


def test_library_default_and_switch_off(dream_dir, top_k_seen):
    model = load_model(dream_dir)
    generate(model, _ids(), gen_length=4, steps=4, remasking="entropy")
    assert top_k_seen and set(top_k_seen) == {50}
    top_k_seen.clear()
    generate(model, _ids(), gen_length=4, steps=4, remasking="entropy", top_k=0)
    assert top_k_seen == []
    generate(model, _ids(), gen_length=4, steps=4, remasking="entropy", top_k=7)
    assert set(top_k_seen) == {7}


@pytest.mark.parametrize("extra, expected", [([], {50}), (["--top-k", "0"], set()), (["--top-k", "5"], {5})])
def test_cli_generate(dream_dir, top_k_seen, extra, expected):
    from maskkv.cli import main

    args = ["generate", "--model", str(dream_dir), "--prompt", "The river", "--gen-length", "4", "--steps", "4",
            "--remasking", "entropy", *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert set(top_k_seen) == expected


@pytest.mark.parametrize("cache", ["none", "dllm"])
def test_eval_generation(dream_dir, top_k_seen, cache):
    from maskkv.eval.common import GenerationConfig, ModelHandle, generate_text

    handle = ModelHandle(path=str(dream_dir))
    generate_text(handle, GenerationConfig(cache=cache, block_length=4, remasking="entropy"), _ids(), 4, 3)
    assert top_k_seen and set(top_k_seen) == {50}


def test_bench_run(dream_dir, top_k_seen):
    from maskkv.bench.runner import BenchConfig, load_bench_model, run_once

    config = BenchConfig(system="vanilla", prompt_length=12, gen_length=4, steps=4, block_length=4,
                         model_path=str(dream_dir))
    run_once(load_bench_model(config), config, _ids())
    assert top_k_seen and set(top_k_seen) == {50}


def test_demo(dream_dir, top_k_seen, tmp_path):
    from rich.console import Console

    from maskkv.demo import run_demo

    run_demo(str(dream_dir), tmp_path, haystack_tokens=96, gen_length=4, steps=4, budget=16,
             console=Console(quiet=True))
    assert top_k_seen and set(top_k_seen) == {50}


def test_eval_runs_record_dreams_sampler_filters_and_refuse_an_unfiltered_run(dream_dir, tmp_path):
    """A Dream run's configuration names the filters ``generate`` applies by default; a run recorded before them
    (same settings, no filters) is not resumed into a mix of unfiltered and top-50 predictions."""
    from maskkv.eval.common import EvalError, GenerationConfig, ModelHandle, RunContext, prepare_run_dir
    from maskkv.models.tiny import write_tiny_checkpoint

    record = ModelHandle(path=str(dream_dir)).record()
    assert record["sampler_filters"] == {"top_k": 50, "top_p": 1.0}
    llada = ModelHandle(path=str(write_tiny_checkpoint(tmp_path / "llada", "llada", seed=1))).record()
    assert "sampler_filters" not in llada  # LLaDA's reference has no hidden defaults: its run hashes are unchanged

    config = {"model": record, "generation": GenerationConfig(remasking="entropy").record()}
    older = {**config, "model": {k: v for k, v in record.items() if k != "sampler_filters"}}
    prepare_run_dir(RunContext(run_dir=tmp_path / "run", config=older, progress=False), overwrite=False)
    with pytest.raises(EvalError, match="model.sampler_filters"):
        prepare_run_dir(RunContext(run_dir=tmp_path / "run", config=config, progress=False), overwrite=False)
    prepare_run_dir(RunContext(run_dir=tmp_path / "fresh", config=config, progress=False), overwrite=False)
    prepare_run_dir(RunContext(run_dir=tmp_path / "fresh", config=config, progress=False), overwrite=False)
