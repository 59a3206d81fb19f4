"""A short smoke run of the tiny-model trainer: it trains, exports a loadable checkpoint, and resumes exactly."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
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

REPO = Path(__file__).resolve().parents[1]
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


@torch.no_grad()
def _answer_loss_by_hand(model, ids, mask, answers, rows_without_answer: list[int]):
    """Hidden states and the summed 1/t-weighted answer cross-entropy of ``diffusion_loss`` (t_min 0.1, seed 0)."""
    generator = torch.Generator().manual_seed(0)
    b, a = answers.shape
    t = 0.1 + 0.9 * torch.rand(b, 1, generator=generator)
    masked = torch.rand(b, a, generator=generator) < t
    masked[rows_without_answer] = False
    noisy = ids.clone()
    noisy[:, -a:] = torch.where(masked, torch.full_like(answers, model.config.mask_token_id), answers)
    hidden = model.hidden_states(noisy, mask)
    ce = F.cross_entropy(model.project(hidden[:, -a:]).reshape(-1, model.config.vocab_size), answers.reshape(-1),
                         reduction="none").view(b, a)
    return hidden, ((ce / t) * masked).sum()


def test_smoke_run_exports_a_loadable_llada_checkpoint(straight):
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["finished"] and summary["step"] == 6
    model = maskkv.load_model(str(straight / "model"))
    tokenizer = maskkv.load_tokenizer(str(straight / "model"))
    assert model.config.family == "llada" and model.config.hidden_size == 32
    assert json.loads((straight / "model" / "config.json").read_text())["rope_theta"] == 10000.0  # the trainer's default
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

    def log(folder):  # every logged number but the wall time, running means included
        return [{k: v for k, v in json.loads(line).items() if k != "elapsed"}
                for line in (folder / "log.jsonl").read_text().splitlines()]

    assert log(tmp_path) == log(straight)
    compare = [sys.executable, str(REPO / "scripts" / "diagnostics" / "compare_runs.py"), str(straight), str(tmp_path)]
    result = subprocess.run(compare, check=False, capture_output=True, text=True)
    assert result.returncode == 0 and "0 differ" in result.stdout and "identical" in result.stdout, result.stdout


def test_compare_runs_reports_another_seed(straight, tmp_path):
    _run(tmp_path, "--seed", "5")
    compare = [sys.executable, str(REPO / "scripts" / "diagnostics" / "compare_runs.py"), str(straight), str(tmp_path)]
    result = subprocess.run(compare, check=False, capture_output=True, text=True)
    assert result.returncode == 1 and "DIFFERENT" in result.stdout, result.stdout


def test_resume_drops_log_rows_past_the_checkpoint(tmp_path):
    from maskkv.train.trainer import _truncate_log

    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 25, "loss": 1.0}\n{"step": 50, "loss": 0.9}\n{"step": 75, "loss": 0.8}\n{"step": 1')
    _truncate_log(path, 50)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [25, 50]


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


def test_answer_region_uses_the_prompt_s_tokens_for_words_and_bare_digits_for_numbers(straight):
    from types import SimpleNamespace

    from tokenizers import Tokenizer

    from maskkv.text import decode_answer
    from maskkv.train.data import VAR_NAMES
    from maskkv.train.trainer import answer_ids

    tok = Tokenizer.from_file(str(straight / "model" / "tokenizer.json"))
    eot, pad = tok.token_to_id("<|eot_id|>"), tok.token_to_id("<|endoftext|>")
    info = SimpleNamespace(special_ids={"<|eot_id|>": eot, "<|endoftext|>": pad})
    names = " ".join(VAR_NAMES[:3])  # a vt answer: the prompt has " RCY" as one token, a bare "RCY" is split
    spaced = tok.encode(" " + names, add_special_tokens=False).ids
    assert len(spaced) < len(tok.encode(names, add_special_tokens=False).ids)
    ids = answer_ids(tok, info, names)
    assert ids[: len(spaced)] == spaced and ids[len(spaced)] == eot and set(ids[len(spaced) + 1 :]) == {pad}
    for number in ("42", "48108", "23, 21"):  # numbers: " 42" would add the space as a token of its own
        bare = tok.encode(number, add_special_tokens=False).ids
        assert answer_ids(tok, info, number)[: len(bare) + 1] == [*bare, eot]
    assert decode_answer(maskkv.load_tokenizer(straight / "model"), torch.tensor(ids)) == names


def test_recall_task_supervises_the_recap_values(straight):
    from tokenizers import Tokenizer

    from maskkv.models.tiny import TinyTokenizerInfo
    from maskkv.train.data import NEEDLE_PATTERN
    from maskkv.train.trainer import Stage, TrainConfig, encode_chat_targets, make_batch

    tok = Tokenizer.from_file(str(straight / "model" / "tokenizer.json"))
    builder = TaskBuilder(tok, SyntheticFiller())
    sample = builder.sample("recall", 300, random.Random(3), num_needles=4)
    values = dict(m.groups() for m in NEEDLE_PATTERN.finditer(sample.content))
    assert len(values) == 4 and len(sample.context_targets) == 4 and sample.answer in values.values()
    recap = [sample.content[a:b] for a, b in sample.context_targets]
    assert sorted(recap) == sorted(values.values())
    ids, positions = encode_chat_targets(tok, sample.content, sample.context_targets)
    assert [tok.id_to_token(ids[p]) for p in positions] == recap

    meta = json.loads((straight / "tokenizer_meta.json").read_text())
    info = TinyTokenizerInfo("llada", (straight / "tokenizer.json").read_text(), meta["num_regular"])
    stage = Stage(200, 1, 6, 100, tasks={"recall": 1.0}, needles=[2, 3])
    ids, _, _, context, names = make_batch(TaskBuilder(tok, SyntheticFiller()), info,
                                          TrainConfig(out_dir="unused"), stage, 0)
    assert names == ["recall"] * 6 and 12 <= len(context) <= 18
    assert bool((ids[context[:, 0], context[:, 1]] == info.special_ids["<|mdm_mask|>"]).all())
    assert all(tok.id_to_token(int(v)).isdigit() for v in context[:, 2])


def test_lm_task_masks_filler_tokens_and_weighs_each_row_like_one_answer(straight):
    from tokenizers import Tokenizer

    from maskkv.models.tiny import TinyTokenizerInfo
    from maskkv.train.trainer import (
        Stage,
        TrainConfig,
        chat_content_range,
        diffusion_loss,
        make_batch,
    )

    tok = Tokenizer.from_file(str(straight / "model" / "tokenizer.json"))
    meta = json.loads((straight / "tokenizer_meta.json").read_text())
    info = TinyTokenizerInfo("llada", (straight / "tokenizer.json").read_text(), meta["num_regular"])
    builder = TaskBuilder(tok, SyntheticFiller())
    sample = builder.sample("lm", 120, random.Random(5))
    assert sample.answer == "" and sample.content and builder.count(sample.content) <= 120
    stage = Stage(120, 1, 4, 80, tasks={"lm": 0.5, "single": 0.5})
    ids, mask, answers, context, names = make_batch(builder, info, TrainConfig(out_dir="unused", seed=3), stage, 0)
    lm_rows = {i for i, name in enumerate(names) if name == "lm"}
    assert lm_rows and len(lm_rows) < len(names), names  # seed 3 gives a mixed batch
    assert set(context[:, 0].tolist()) == lm_rows and bool((context[:, 3] == 1).all())
    assert bool((ids[context[:, 0], context[:, 1]] == info.special_ids["<|mdm_mask|>"]).all())
    for row in lm_rows:  # only the user content is masked, never the chat template around it
        start = int((mask[row] == 0).sum())
        first, last = chat_content_range(tok, ids.shape[1] - start - ANSWER_TOKENS)
        positions = context[context[:, 0] == row, 1] - start
        assert int(positions.min()) >= first and int(positions.max()) < last

    model = maskkv.load_model(str(straight / "model"))
    generator = torch.Generator().manual_seed(0)
    loss, stats = diffusion_loss(model, ids, mask, answers, 0.1, generator, context)
    assert "lm_acc" in stats and "ctx_acc" not in stats
    # by hand: answer rows as in the SFT loss, each lm row A x its mean CE over masked filler
    b, a = answers.shape
    hidden, total = _answer_loss_by_hand(model, ids, mask, answers, sorted(lm_rows))
    with torch.no_grad():
        for row in lm_rows:
            sel = context[context[:, 0] == row]
            total += a * F.cross_entropy(model.project(hidden[row, sel[:, 1]]), sel[:, 2])
    torch.testing.assert_close(loss.detach(), total / (a * b), atol=1e-5, rtol=1e-5)


def test_repeat_task_masks_words_of_the_second_copy(straight):
    from tokenizers import Tokenizer

    from maskkv.train.trainer import encode_chat_targets

    tok = Tokenizer.from_file(str(straight / "model" / "tokenizer.json"))
    builder = TaskBuilder(tok, SyntheticFiller())
    for seed in range(20):
        sample = builder.sample("repeat", 150, random.Random(seed))
        first, second = sample.content.rstrip(".").split(". ")
        assert first == second and sample.answer == "" and sample.context_targets
        assert all(a > len(first) for a, _ in sample.context_targets)  # only the copy is masked
        ids, positions = encode_chat_targets(tok, sample.content, sample.context_targets)  # one token each
        assert [tok.decode([ids[p]]).strip() for p in positions] == [sample.content[a:b].strip()
                                                                       for a, b in sample.context_targets]


@pytest.mark.parametrize("task,gap_tokens", [("kv0", 0), ("kv1", 1), ("kv2", 2), ("kv3", 3)])
def test_kv_bridge_masks_the_recalled_value_at_its_gap(straight, task, gap_tokens):
    from tokenizers import Tokenizer

    from maskkv.models.tiny import TinyTokenizerInfo
    from maskkv.train.trainer import Stage, TrainConfig, encode_chat_targets, make_batch

    tok = Tokenizer.from_file(str(straight / "model" / "tokenizer.json"))
    builder = TaskBuilder(tok, SyntheticFiller())
    for seed in range(10):
        sample = builder.sample(task, 128, random.Random(seed), num_needles=4)
        pairs_text, recall_text = sample.content.split(".\n\n")
        pairs = dict(re.fullmatch(r"([a-z]+)(?: is:|:)? ?(\d+)", p).groups()
                     for p in pairs_text.removeprefix("Pairs: ").split(", "))
        assert len(pairs) == 4 and len(sample.context_targets) == 1 and sample.answer == ""
        key, value = re.fullmatch(r"Recall: ([a-z]+)(?: is:|:)? ?(\d+)\.", recall_text).groups()
        (a, b), = sample.context_targets
        assert pairs[key] == value == sample.content[a:b] and a > len(pairs_text)  # only the recalled value
        ids, (position,) = encode_chat_targets(tok, sample.content, sample.context_targets)
        assert tok.id_to_token(ids[position]) == value
        # the key sits gap_tokens + 1 tokens before its masked value, as in the pairs
        assert tok.id_to_token(ids[position - gap_tokens - 1]) == "\u0120" + key
    meta = json.loads((straight / "tokenizer_meta.json").read_text())
    info = TinyTokenizerInfo("llada", (straight / "tokenizer.json").read_text(), meta["num_regular"])
    stage = Stage(128, 1, 5, 64, tasks={task: 1.0}, needles=[3, 3])
    ids, _, _, context, names = make_batch(builder, info, TrainConfig(out_dir="unused"), stage, 0)
    assert names == [task] * 5 and len(context) == 5
    assert bool((ids[context[:, 0], context[:, 1]] == info.special_ids["<|mdm_mask|>"]).all())


@pytest.mark.parametrize("task,gap_tokens", [("ar0", 0), ("ar3", 3)])
def test_bare_recall_rows_have_no_template_no_answer_loss_and_a_hidden_answer_region(straight, task, gap_tokens):
    from tokenizers import Tokenizer

    from maskkv.models.tiny import TinyTokenizerInfo
    from maskkv.train.trainer import Stage, TrainConfig, diffusion_loss, make_batch

    tok = Tokenizer.from_file(str(straight / "model" / "tokenizer.json"))
    meta = json.loads((straight / "tokenizer_meta.json").read_text())
    info = TinyTokenizerInfo("llada", (straight / "tokenizer.json").read_text(), meta["num_regular"])
    builder = TaskBuilder(tok, SyntheticFiller())
    stage = Stage(64, 1, 6, 16, tasks={task: 0.5, "single": 0.5}, needles=[4, 4], synthetic=1.0)
    ids, mask, answers, context, names = make_batch(builder, info, TrainConfig(out_dir="unused", seed=1), stage, 0)
    bare = [i for i, name in enumerate(names) if name == task]
    assert bare and len(bare) < len(names), names  # seed 1 gives a mixed batch
    assert sorted(context[:, 0].tolist()) == bare and bool((context[:, 3] == 2).all())
    specials = set(info.special_ids.values()) - {info.special_ids["<|mdm_mask|>"]}
    a = answers.shape[1]
    for row, position, value, _ in context.tolist():
        visible = ids[row][mask[row].bool()].tolist()
        assert not specials & set(visible)  # no chat template, no BOS, and the answer region is out of attention
        assert int(mask[row, -a:].sum()) == 0 and int(mask[row, :-a].sum()) == len(visible)
        assert position == ids.shape[1] - a - 1 and ids[row, position] == info.special_ids["<|mdm_mask|>"]
        # 4 pairs and the query: the queried key sits gap + 1 tokens before the masked value, and its value is `value`
        words = [tok.id_to_token(i) for i in visible]
        assert len(words) == 5 * (gap_tokens + 2)
        key = words[-gap_tokens - 2]
        assert words[words.index(key) + gap_tokens + 1] == tok.id_to_token(value)
    for row in set(range(len(names))) - set(bare):
        assert bool(mask[row, -a:].all())
    model = maskkv.load_model(str(straight / "model"))
    loss, stats = diffusion_loss(model, ids, mask, answers, 0.1, torch.Generator().manual_seed(0), context)
    assert "ar_acc" in stats and "ctx_acc" not in stats
    # by hand: the SFT loss of the other rows plus the bare rows' value cross-entropy, weight 1
    b = answers.shape[0]
    hidden, total = _answer_loss_by_hand(model, ids, mask, answers, bare)
    with torch.no_grad():
        total += F.cross_entropy(model.project(hidden[context[:, 0], context[:, 1]]), context[:, 2], reduction="sum")
    torch.testing.assert_close(loss.detach(), total / (a * b), atol=1e-5, rtol=1e-5)


def test_stage_lr_sets_that_stage_s_peak_and_leaves_the_default_schedule_alone():
    import math

    from maskkv.train.trainer import Stage, TrainConfig, lr_at

    cfg = TrainConfig(out_dir="unused", warmup=10, stages=[Stage(64, 100, 2, lr=3e-3), Stage(64, 100, 2)])
    factor = [lr_at(TrainConfig(out_dir="unused", warmup=10, lr=1.0, stages=cfg.stages[1:] * 2), s)
              for s in range(200)]  # the shared schedule, peak 1
    assert all(math.isclose(lr_at(cfg, s), 3e-3 * factor[s]) for s in range(100))
    assert all(math.isclose(lr_at(cfg, s), 1e-3 * factor[s]) for s in range(100, 200))
    default = TrainConfig(out_dir="unused")
    progress = (5000 - default.warmup) / (default.total_steps - default.warmup)
    assert math.isclose(lr_at(default, 5000), 1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))))


def test_config_with_stage_options_round_trips_through_json():
    from maskkv.train.trainer import TrainConfig, default_stages

    cfg = TrainConfig(out_dir="unused")
    assert any(s.needles for s in cfg.stages) and any(s.tasks for s in cfg.stages)
    raw = json.loads(json.dumps(cfg.to_json()))
    assert json.loads(json.dumps(TrainConfig.from_json(raw).to_json())) == raw
    assert TrainConfig.from_json(raw).stages == default_stages()


def test_rope_theta_flag_reaches_the_exported_config(tmp_path):
    _run(tmp_path, "--rope-theta", "500000", "--stop-at-step", "1")
    raw = json.loads((tmp_path / "model" / "config.json").read_text())
    assert raw["rope_theta"] == 500000.0
    assert maskkv.load_model(str(tmp_path / "model")).config.rope_theta == 500000.0


def test_init_from_continues_from_the_base_run_s_weights_and_tokenizer(straight, tmp_path):
    base = torch.load(straight / "state.pt", weights_only=True)["model"]
    _run(tmp_path / "cont", "--init-from", str(straight), "--seed", "1", "--stop-at-step", "0")
    exported = maskkv.load_model(str(tmp_path / "cont" / "model"), dtype=torch.float32).state_dict()
    for name, value in base.items():  # the export is fp16: equal to the base weights at fp16 precision
        torch.testing.assert_close(exported[name], value.half().float(), atol=0, rtol=0)
    assert (tmp_path / "cont" / "tokenizer.json").read_text() == (straight / "tokenizer.json").read_text()
    _run(tmp_path / "cont", "--init-from", str(straight), "--seed", "1")  # trains on, resumes its own state
    assert json.loads((tmp_path / "cont" / "summary.json").read_text())["finished"]
    from maskkv.cli import main

    unfinished = tmp_path / "unfinished"
    _run(unfinished, "--stop-at-step", "1")
    result = CliRunner().invoke(main, ["train-tiny", "--out", str(tmp_path / "x"), *ARGS, "--init-from", str(unfinished)])
    assert result.exit_code != 0 and "not a finished run folder" in result.output


def test_init_from_an_exported_model_folder_starts_from_its_weights(straight, tmp_path):
    """``--init-from`` a model folder (as ``finalize`` writes the shipped model): its fp16 weights, widened."""
    shipped = maskkv.load_model(str(straight / "model"), dtype=torch.float32).state_dict()
    _run(tmp_path / "cont", "--init-from", str(straight / "model"), "--seed", "1", "--rope-theta", "30000",
         "--stop-at-step", "0")
    exported = maskkv.load_model(str(tmp_path / "cont" / "model"), dtype=torch.float32)
    assert exported.config.rope_theta == 30000.0  # the new run's flags apply
    for name, value in exported.state_dict().items():
        torch.testing.assert_close(value, shipped[name], atol=0, rtol=0)
    assert (tmp_path / "cont" / "tokenizer.json").read_text() == (straight / "model" / "tokenizer.json").read_text()
    meta = json.loads((tmp_path / "cont" / "tokenizer_meta.json").read_text())
    assert meta == json.loads((straight / "tokenizer_meta.json").read_text())
    from maskkv.cli import main

    result = CliRunner().invoke(main, ["train-tiny", "--out", str(tmp_path / "x"), *ARGS, "--init-from",
                                       str(straight / "model"), "--digit-group", "2"])
    assert result.exit_code != 0 and "pass --digit-group 3" in result.output
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["train-tiny", "--out", str(tmp_path / "y"), *ARGS, "--init-from",
                                       str(tmp_path / "empty")])
    assert result.exit_code != 0 and "neither a finished run folder" in result.output
    foreign = tmp_path / "foreign"  # a model folder whose tokenizer is not one of the trainer's
    shutil.copytree(straight / "model", foreign)
    raw = json.loads((foreign / "tokenizer.json").read_text())
    raw["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    (foreign / "tokenizer.json").write_text(json.dumps(raw))
    result = CliRunner().invoke(main, ["train-tiny", "--out", str(tmp_path / "z"), *ARGS, "--init-from", str(foreign)])
    assert result.exit_code != 0 and "was not built by maskkv's trainer" in result.output


@pytest.mark.parametrize("curriculum", [None, "needle-first", "all-tasks"])
def test_cli_defaults_are_the_trainer_defaults_and_curricula_are_named(tmp_path, curriculum):
    from maskkv.cli import main
    from maskkv.train.trainer import (
        TrainConfig,
        all_task_stages,
        default_stages,
        needle_first_stages,
    )

    args = ["train-tiny", "--out", str(tmp_path), "--filler", "synthetic", "--stop-at-step", "0", "--quiet"]
    result = CliRunner().invoke(main, args + (["--curriculum", curriculum] if curriculum else []))
    assert result.exit_code == 0, result.output
    written = TrainConfig.from_json(json.loads((tmp_path / "train_config.json").read_text()))
    stages = {None: default_stages, "needle-first": needle_first_stages, "all-tasks": all_task_stages}[curriculum]()
    expected = TrainConfig(out_dir=str(tmp_path), filler="synthetic", stop_at_step=0, stages=stages)
    assert written == expected  # so `maskkv train-tiny --out DIR` is exactly the documented configuration
    assert written.hidden_size == 128 and written.stages[0].tasks == ({"single": 1.0} if curriculum == "needle-first"
                                                                      else {"ar0": 1.0})


def test_all_task_curricula_train_every_task_and_keep_the_recall_first_bridge():
    from maskkv.train.data import TASKS
    from maskkv.train.trainer import (
        all_task_stages,
        default_stages,
        long_context_all_task_stages,
        long_context_stages,
    )

    stages, base = all_task_stages(), default_stages()
    assert stages[:5] == base[:5] and [(s.max_tokens, s.steps, s.batch) for s in stages] == [
        (s.max_tokens, s.steps, s.batch) for s in base]
    for stage in [*stages[5:], *long_context_all_task_stages()]:
        assert set(TASKS) <= set(stage.tasks) and sum(stage.tasks.values()) == pytest.approx(1.0)
    stages[-1].tasks["single"] = 0.0  # each stage owns its dict
    assert all_task_stages()[-1].tasks["single"] == 0.4 and stages[-2].tasks["single"] == 0.4
    assert [(s.max_tokens, s.steps, s.lr) for s in long_context_all_task_stages()] == [
        (s.max_tokens, s.steps, s.lr) for s in long_context_stages()]


def test_qkv_bias_flag_trains_and_exports_the_biases(tmp_path):
    _run(tmp_path, "--qkv-bias", "--stop-at-step", "2")
    raw = json.loads((tmp_path / "model" / "config.json").read_text())
    assert raw["include_qkv_bias"] is True and raw["include_bias"] is False
    tensors = load_file(str(tmp_path / "model" / "model.safetensors"))
    bias = tensors["model.transformer.blocks.0.q_proj.bias"]
    assert bias.shape == (32,) and bool(bias.ne(0).any())  # initialised at 0, moved by 2 optimiser steps
    model = maskkv.load_model(str(tmp_path / "model"))
    assert model.config.qkv_bias
    torch.testing.assert_close(model.layers[0].q_proj.bias, bias.float(), atol=0, rtol=0)


def test_resume_accepts_a_run_config_written_before_a_new_field(tmp_path):
    _run(tmp_path, "--stop-at-step", "2")
    path = tmp_path / "train_config.json"
    old = json.loads(path.read_text())
    del old["qkv_bias"]  # as written by an older maskkv
    path.write_text(json.dumps(old))
    assert "finished" in _run(tmp_path)


def test_tasks_flag_sets_the_weights_of_own_stages_and_names_bad_input(tmp_path):
    from maskkv.cli import main
    from maskkv.train.trainer import TrainConfig

    base = ["train-tiny", "--out", str(tmp_path), "--filler", "synthetic", "--stop-at-step", "0", "--quiet"]
    ok = CliRunner().invoke(main, [*base, "--stages", "96:3:2", "--tasks", "passkey=0.2,vt=0.8"])
    assert ok.exit_code == 0, ok.output
    written = TrainConfig.from_json(json.loads((tmp_path / "train_config.json").read_text()))
    assert written.task_weights == {"passkey": 0.2, "vt": 0.8} and written.stages[0].tasks is None
    for args, message in ((["--stages", "96:3:2", "--tasks", "passkee=1"], "unknown task 'passkee'"),
                          (["--stages", "96:3:2", "--tasks", "vt=x"], "expected task=weight"),
                          (["--stages", "96:3:2", "--tasks", "vt=0"], "weights must be positive"),
                          (["--tasks", "vt=1"], "--tasks applies to --stages")):
        bad = CliRunner().invoke(main, [*base[:2], str(tmp_path / "bad"), *base[3:], *args])
        assert bad.exit_code != 0 and message in bad.output, bad.output


def test_needles_flag_sets_the_multikey_count_of_own_stages_and_names_bad_input(tmp_path):
    from maskkv.cli import main
    from maskkv.train.trainer import TrainConfig

    base = ["train-tiny", "--out", str(tmp_path), "--filler", "synthetic", "--stop-at-step", "0", "--quiet"]
    ok = CliRunner().invoke(main, [*base, "--stages", "96:3:2,128:2:2", "--needles", "4:8"])
    assert ok.exit_code == 0, ok.output
    written = TrainConfig.from_json(json.loads((tmp_path / "train_config.json").read_text()))
    assert [s.needles for s in written.stages] == [[4, 8], [4, 8]]
    for args, message in ((["--stages", "96:3:2", "--needles", "8:4"], "expected 1 <= LOW <= HIGH"),
                          (["--stages", "96:3:2", "--needles", "4"], "expected LOW:HIGH"),
                          (["--needles", "4:8"], "--needles applies to --stages")):
        bad = CliRunner().invoke(main, [*base[:2], str(tmp_path / "bad"), *base[3:], *args])
        assert bad.exit_code != 0 and message in bad.output, bad.output


def test_stage_values_widen_the_magic_numbers_half_by_digit_count_and_leave_the_default_draws_alone(straight):
    from tokenizers import Tokenizer

    from maskkv.models.tiny import TinyTokenizerInfo
    from maskkv.train.data import VALUE_RANGE, _value
    from maskkv.train.trainer import Stage, TrainConfig, make_batch

    # A one-width range draws one randint per value, as before the option existed (the held-out set depends on it).
    for seed in range(20):
        assert _value(random.Random(seed), set()) == random.Random(seed).randint(*VALUE_RANGE)

    tok = Tokenizer.from_file(str(straight / "model" / "tokenizer.json"))
    meta = json.loads((straight / "tokenizer_meta.json").read_text())
    info = TinyTokenizerInfo("llada", (straight / "tokenizer.json").read_text(), meta["num_regular"])
    builder = TaskBuilder(tok, SyntheticFiller())
    widths = []
    for task in ("ar3", "kv3", "single", "multikey"):
        stage = Stage(160, 1, 40, 64, tasks={task: 1.0}, needles=[4, 4], values=[10, 999])
        _, _, answers, context, _ = make_batch(builder, info, TrainConfig(out_dir="unused"), stage, 0)
        if task in ("single", "multikey"):
            texts = [tok.decode(row.tolist()).split("<")[0].strip() for row in answers]
        else:
            texts = [tok.id_to_token(int(t)) for t in context[:, 2]]  # the masked value: one token
        assert all(t.isdigit() and 10 <= int(t) <= 999 for t in texts), texts
        widths += [len(t) for t in texts]
    share = widths.count(3) / len(widths)
    assert 0.35 < share < 0.65, share  # the digit count is drawn first: about half 3-digit, not 91 %


def test_digit_group_flag_cuts_numbers_into_two_digit_tokens(tmp_path):
    _run(tmp_path, "--digit-group", "2", "--stop-at-step", "1")
    tok = maskkv.load_tokenizer(str(tmp_path / "model"))
    pieces = [tok.decode([i]) for i in tok.encode("17192", add_special_tokens=False)]
    assert pieces == ["17", "19", "2"]
    assert all(len(tok.encode(s, add_special_tokens=False)) == 1 for s in digit_strings(2))
    assert len(tok.encode("123", add_special_tokens=False)) == 2  # no 3-digit token
    assert json.loads((tmp_path / "train_config.json").read_text())["digit_group"] == 2
    with pytest.raises(ValueError, match="digit_group must be 1, 2 or 3"):
        from maskkv.train.tokenizer import pretokenize_regex

        pretokenize_regex(4)


def test_init_from_refuses_another_digit_group(straight, tmp_path):
    from maskkv.cli import main

    args = ["train-tiny", "--out", str(tmp_path), *ARGS, "--init-from", str(straight), "--digit-group", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and "pass --digit-group 3" in result.output


def test_key_refresh_is_named_and_keeps_the_long_stages_gentle():
    from maskkv.train.cli import CURRICULA
    from maskkv.train.trainer import TrainConfig, key_refresh_stages, lr_at

    assert CURRICULA["key-refresh"] is key_refresh_stages
    cfg = TrainConfig(out_dir="unused", stages=key_refresh_stages())
    starts = [sum(s.steps for s in cfg.stages[:i]) for i in range(len(cfg.stages))]
    assert {"kv3", "ar3"} <= set(cfg.stages[0].tasks) and cfg.stages[0].max_tokens <= 160
    for start, stage in zip(starts[1:], cfg.stages[1:]):
        assert stage.batch >= 16 and stage.tasks["multikey"] >= 0.5 and sum(stage.tasks.values()) == pytest.approx(1.0)
        assert lr_at(cfg, start) <= 1.5e-4  # the ninth-session probes' rates: the key match survives them
    assert [s.max_tokens for s in cfg.stages] == sorted(s.max_tokens for s in cfg.stages)
