"""``maskkv bench``: the quick grid end to end, its files, the cache-byte arithmetic, and the pieces."""

from __future__ import annotations

import csv
import json
import statistics

import pytest
import torch
from click.testing import CliRunner

import maskkv
from maskkv.bench.architectures import ARCHITECTURES, architecture_config, build_random_model, parameter_count
from maskkv.models.transformer import PackedLMHead
from maskkv.bench.cli import parse_lengths
from maskkv.bench.runner import BenchConfig, random_prompt, run_once
from maskkv.bench.systems import DEFAULT_SYSTEMS, SYSTEMS, resolve_systems
from maskkv.cache import DLLMCache
from maskkv.cli import main
from maskkv.presses import make_press

ROW_FIELDS = (
    "config", "system_label", "model", "seconds", "tokens_per_s", "extrapolated", "timed_passes", "first_pass_s",
    "decode_step_mean_s", "decode_step_median_s", "nfe", "sampler_overhead_s", "seconds_per_repeat",
    "pass_seconds", "cache_bytes", "cache_bytes_analytic", "cache_bytes_match", "prompt_kv_logical_bytes",
    "prompt_kv_padding_bytes", "peak_memory_bytes", "model_memory_bytes", "runtime_memory_bytes",
    "peak_increment_bytes", "tensor_peak_bytes", "memory_measure", "cpu_seconds", "threads", "cpu_utilisation",
    "attempts", "contended",
    "loadavg_1m", "error", "ops_per_step", "first_pass_peak_bytes", "first_pass_step_peak_bytes",
    "first_pass_increment_bytes", "captured", "capture_failure",
)  # fmt: skip
CONFIG_FIELDS = ("system", "prompt_length", "gen_length", "steps", "block_length", "budget", "batch", "arch",
                 "device", "dtype", "seed", "warmup", "repeats", "max_passes")  # fmt: skip
CACHE_KINDS = ("prompt_kv", "response_kv", "response_features", "prompt_features", "total", "peak",
               "kept_prompt_pairs", "prompt_pairs")  # fmt: skip
MACHINE_FIELDS = ("cpu", "cpu_cores", "torch", "python", "maskkv", "device", "git")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = CliRunner().invoke(main, ["bench", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "results.json").read_text()), result.output


def _rows(document, system):
    return [r for r in document["rows"] if r["config"]["system"] == system]


def test_quick_json_has_every_field(quick):
    _, document, output = quick
    assert {"schema", "created", "command", "machine", "settings", "rows", "targets"} <= set(document)
    assert document["complete"] is True
    assert set(MACHINE_FIELDS) <= set(document["machine"])
    assert document["machine"]["device"] == "cpu"
    lengths = document["settings"]["lengths"]
    assert lengths == [128, 256]
    assert [(r["config"]["prompt_length"], r["config"]["system"]) for r in document["rows"]] == [
        (length, system) for length in lengths for system in DEFAULT_SYSTEMS
    ]
    for row in document["rows"]:
        assert row["error"] is None
        assert row["threads"] == 1 and row["attempts"] >= 1  # --quick measures with one thread
        assert set(ROW_FIELDS) <= set(row), set(ROW_FIELDS) - set(row)
        assert set(CONFIG_FIELDS) <= set(row["config"])
        assert row["tokens_per_s"] > 0 and row["first_pass_s"] > 0 and row["decode_step_mean_s"] > 0
        assert row["peak_memory_bytes"] >= row["model_memory_bytes"] > 0  # fresh process per configuration
        assert row["tensor_peak_bytes"] == row["peak_memory_bytes"] - row["runtime_memory_bytes"] > 0
        system = SYSTEMS[row["config"]["system"]]
        cached = system.cache is not None or system.fast_dllm is not None
        assert (row["cache_bytes"] is not None) == cached
        if cached:
            assert set(CACHE_KINDS) <= set(row["cache_bytes"])
            assert row["cache_bytes_match"] is True
        # issue 23: ops and syncs per decode step, the first pass's memory, nothing captured on a CPU
        ops = row["ops_per_step"]
        assert ops["steady_steps"] >= 4 and ops["syncs_per_step_max"] == 0, ops
        assert 0 < ops["ops_per_layer_per_step"] <= ops["ops_per_layer_per_step_max"]
        assert row["first_pass_step_peak_bytes"] >= row["first_pass_peak_bytes"] > 0
        assert row["first_pass_increment_bytes"] == row["first_pass_step_peak_bytes"] - row["model_memory_bytes"]
        assert row["captured"] is False and row["capture_failure"] is None
        if row["config"]["system"] == "vanilla-ref":  # timed over --ref-steps passes, then extrapolated
            assert row["extrapolated"] and row["timed_passes"] == 2
        else:
            assert not row["extrapolated"] and row["nfe"] == row["config"]["steps"] == row["timed_passes"]
    assert "maskkv_speedup_vs_vanilla" in document["targets"]
    assert document["targets"]["maskkv_offline_speedup_vs_vanilla"]["value"] > 0
    assert "maskkv" in output and "targets" in output


def test_an_interrupted_run_keeps_the_rows_it_measured(tmp_path, monkeypatch):
    import maskkv.bench.cli as bench_cli

    real, calls = bench_cli._measure, []

    def measure_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bench_cli, "_measure", measure_then_die)
    result = CliRunner().invoke(main, ["bench", "--quick", "--lengths", "128", "--systems", "vanilla,maskkv",
                                       "--out", str(tmp_path)])  # fmt: skip
    assert result.exit_code != 0 and len(calls) == 2
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["complete"] is False
    assert [r["config"]["system"] for r in document["rows"]] == ["vanilla"] and document["rows"][0]["error"] is None
    assert (tmp_path / "results.csv").is_file() and not (tmp_path / "results.json.tmp").exists()


def test_maskkv_cache_bytes_equal_the_analytic_value(quick):
    _, document, _ = quick
    for row in _rows(document, "maskkv"):
        c, m = row["config"], row["model"]
        layers, heads, hd, d, e = m["layers"], m["kv_heads"], m["head_dim"], m["hidden_size"], m["element_size"]
        g, budget, p = c["gen_length"], c["budget"], c["prompt_length"]
        assert p > budget  # the quick grid really evicts
        cache = row["cache_bytes"]
        kept = [[n for sample in layer for n in sample] for layer in row["kept_pairs_per_layer"]]
        # budgets sum exactly (MaskKV D2 b): layers * heads * B pairs in all
        assert sum(map(sum, kept)) == cache["kept_prompt_pairs"] == layers * heads * budget
        assert cache["prompt_pairs"] == layers * heads * p
        logical = layers * heads * budget * hd * 2 * e  # sum over layers/heads of kept pairs * hd * (K, V) * bytes
        assert row["prompt_kv_logical_bytes"] == logical
        # storage: exactly the kept pairs (equal heads share one buffer, unequal ones are flattened: D10 b)
        assert row["prompt_slots_per_layer"] == [max(layer) for layer in kept]
        assert row["stored_prompt_pairs_per_layer"] == [sum(layer) for layer in kept]
        assert cache["prompt_kv"] == logical and row["prompt_kv_padding_bytes"] == 0
        assert cache["response_kv"] == layers * g * 2 * heads * hd * e
        assert cache["response_features"] == layers * g * 2 * d * e
        assert cache["prompt_features"] == 0
        assert cache["total"] == cache["prompt_kv"] + cache["response_kv"] + cache["response_features"]
    for row in _rows(document, "dllm-cache"):  # no eviction: every prompt pair
        m, p = row["model"], row["config"]["prompt_length"]
        assert row["cache_bytes"]["prompt_kv"] == m["layers"] * p * 2 * m["kv_heads"] * m["head_dim"] * m["element_size"]
    for mode in ("prefix", "dual"):  # one block: the prompt's K/V, plus (dual) the block's own
        for row in _rows(document, f"fast-dllm-{mode}"):
            m, c = row["model"], row["config"]
            assert c["block_length"] == c["gen_length"]
            per_position = m["layers"] * 2 * m["kv_heads"] * m["head_dim"] * m["element_size"]
            cache = row["cache_bytes"]
            assert cache["prompt_kv"] == c["prompt_length"] * per_position
            assert cache["response_kv"] == (c["gen_length"] if mode == "dual" else 0) * per_position
            assert cache["response_features"] == cache["prompt_features"] == 0


def test_quick_csv_and_png(quick):
    out, document, _ = quick
    with (out / "results.csv").open() as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == len(document["rows"])
    assert {"cpu", "torch", "git_commit", "system", "prompt_length", "tokens_per_s", "cache_total"} <= set(lines[0])
    from matplotlib.image import imread  # a core dependency: the figure is part of the output, no skip

    png = out / "figure.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(png)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 600


def test_timed_run_matches_the_library_generate():
    config = BenchConfig(system="maskkv", prompt_length=96, gen_length=8, steps=8, block_length=4, budget=16,
                         arch="llada-tiny")  # fmt: skip
    model = build_random_model(architecture_config("llada-tiny"), seed=1)
    prompt = random_prompt(model.config, 1, 96, 0, "cpu")
    record = run_once(model, config, prompt)
    torch.manual_seed(config.seed)
    expected = maskkv.generate(model, prompt, gen_length=8, steps=8, block_length=4, cache=DLLMCache(),
                               press=make_press("maskkv", 16))  # fmt: skip
    assert torch.equal(record.sequences, expected.sequences)
    assert record.nfe == expected.nfe == len(record.pass_seconds) == 8
    assert record.cache.stats.as_dict() == expected.cache_bytes


def test_extrapolated_run_times_the_first_passes_only():
    config = BenchConfig(system="vanilla", prompt_length=32, gen_length=8, steps=8, block_length=8, arch="llada-tiny")
    model = build_random_model(architecture_config("llada-tiny"))
    record = run_once(model, config, random_prompt(model.config, 1, 32, 0, "cpu"), max_passes=3)
    assert record.extrapolated and len(record.pass_seconds) == 3 and record.nfe == 8
    first, *rest = record.pass_seconds
    assert record.seconds == pytest.approx(first + statistics.fmean(rest) * 7)


def test_architectures():
    assert set(ARCHITECTURES) >= {"llada-8b", "llada-mini", "llada-tiny"}
    big = architecture_config("llada-8b")
    assert (big.num_layers, big.hidden_size, big.num_heads, big.num_kv_heads, big.head_dim) == (32, 4096, 32, 32, 128)
    assert (big.intermediate_size, big.vocab_size, big.mask_token_id, big.eos_token_id) == (12288, 126464, 126336, 126081)
    assert 8.0e9 < parameter_count(big) < 8.03e9
    mini = architecture_config("llada-mini")
    assert mini.vocab_size == 126464 and mini.rope_theta == 5e5 and mini.rope_in_fp32 and not mini.logits_shift
    model = build_random_model(architecture_config("llada-tiny"), seed=3)
    assert isinstance(model.lm_head, PackedLMHead)  # untied fp32 CPU head: packed, no dense parameter
    head = model.lm_head.out_features * model.lm_head.in_features
    assert sum(p.numel() for p in model.parameters()) + head == parameter_count(model.config)
    assert torch.equal(model.final_norm.weight, torch.ones_like(model.final_norm.weight))
    assert 0.015 < model.lm_head.weight.std().item() < 0.025
    assert 0.015 < model.embed_tokens.weight.std().item() < 0.025
    again = build_random_model(architecture_config("llada-tiny"), seed=3)
    assert torch.equal(model.embed_tokens.weight, again.embed_tokens.weight)
    assert torch.equal(model.lm_head.weight, again.lm_head.weight)
    assert torch.isfinite(model.inv_freq).all() and torch.equal(model.inv_freq, again.inv_freq)
    with pytest.raises(ValueError, match="llada-mini"):
        architecture_config("llada-9b")


def test_parse_lengths_and_systems():
    assert parse_lengths("512 1024,2k 4K") == [512, 1024, 2048, 4096]
    assert parse_lengths("512 512") == [512]
    for bad in ("", "abc", "0", "-5", "1.5k"):
        with pytest.raises(ValueError, match="--lengths"):
            parse_lengths(bad)
    assert resolve_systems("default") == list(DEFAULT_SYSTEMS)
    assert resolve_systems("maskkv,baselines")[:2] == ["maskkv", "snapkv"]
    with pytest.raises(ValueError, match="vanilla"):
        resolve_systems("vanila")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "llada-9b"], "llada-mini"),
        (["--lengths", "12x"], "--lengths"),
        (["--systems", "fast"], "unknown system"),
        (["--gen-length", "10", "--block-length", "4"], "multiple"),
    ],
)
def test_bench_rejects_bad_flags(args, message):
    result = CliRunner().invoke(main, ["bench", *args])
    assert result.exit_code != 0
    assert message in result.output


def test_bench_help_lists_the_flags():
    result = CliRunner().invoke(main, ["bench", "--help"])
    assert result.exit_code == 0
    for flag in ("--arch", "--model", "--lengths", "--systems", "--budget", "--repeats", "--quick", "--out",
                 "--vanilla-steps", "--ref-steps", "--isolate"):  # fmt: skip
        assert flag in result.output
