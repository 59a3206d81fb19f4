"""The lm-eval model ``maskkv``: end to end through ``maskkv lm-eval`` and ``simple_evaluate``, offline.

One CLI run (MaskKV at budget 32) covers a local JSONL task, lm-eval's own RULER ``niah_single_1`` and a LongBench
``multi_news`` config over ../shared's rows; lm-eval's default task index (~17 s) and RULER's word list (~30 s on the
dev box) are paid once there. Everything else goes through ``simple_evaluate`` with a local TaskManager.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from click.testing import CliRunner  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import maskkv  # noqa: E402
from maskkv.demo import shipped_model_path  # noqa: E402
from maskkv.eval.metrics import score_task  # noqa: E402
from maskkv.lmeval.model import MaskKVLM, ModelArgsError  # noqa: E402
from maskkv.presses import MaskKVPress  # noqa: E402
from maskkv.text import decode_answer, encode_prompt  # noqa: E402
from maskkv.train.evaluate import heldout_samples, make_heldout_builder  # noqa: E402

from reference_lm_eval import dream_reference, llada_greedy_reference, llada_reference  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "longbench"
TINY = shipped_model_path()
PROFILE = TINY / "maskkv_profile.json"
ROWS = 4  # local task rows = --limit
ANSWER_TOKENS = 8
BUDGET = 32

LOCAL_TASK = """task: needle_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: {tokens}
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

# lm-eval's own multi_news task, pointed at the local rows; 32 tokens instead of 512 keep the test short
LONGBENCH_TASK = """include: {source}
task: longbench_multi_news_local
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {data}
generation_kwargs:
  max_gen_toks: 32
  temperature: 1
  do_sample: false
  until: []
"""


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lmeval_tasks")
    tokenizer = maskkv.load_tokenizer(str(TINY))
    samples = heldout_samples(make_heldout_builder(tokenizer, "synthetic"), "single", 256, ROWS)
    data = folder / "needle.jsonl"
    data.write_text("".join(json.dumps({"question": s.content, "answer": s.answer}) + "\n" for s in samples))
    (folder / "needle_local.yaml").write_text(LOCAL_TASK.format(data=data, tokens=ANSWER_TOKENS))
    if (SHARED / "multi_news.jsonl").is_file():
        source = Path(lm_eval.__file__).parent / "tasks" / "longbench" / "multi_news.yaml"
        (folder / "multi_news_local.yaml").write_text(LONGBENCH_TASK.format(source=source,
                                                                           data=SHARED / "multi_news.jsonl"))
    return folder


def _questions(tasks_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (tasks_dir / "needle.jsonl").read_text().splitlines()]


def _maskkv_generate(questions: list[dict], press_factory) -> tuple[list[str], float]:
    """What maskkv.generate answers for the same chat prompts (gen = steps = block = 8, dLLM-Cache)."""
    model, tokenizer = maskkv.load_model(str(TINY)), maskkv.load_tokenizer(str(TINY))
    texts = []
    for row in questions:
        ids = encode_prompt(tokenizer, row["question"], chat=True)
        out = maskkv.generate(model, ids, gen_length=ANSWER_TOKENS, steps=ANSWER_TOKENS, block_length=ANSWER_TOKENS,
                              cache=maskkv.DLLMCache(), press=press_factory())
        texts.append(decode_answer(tokenizer, out.sequences[0, ids.shape[1]:]))
    return texts, sum(t == row["answer"] for t, row in zip(texts, questions)) / len(questions)


def _samples(out: Path, task: str) -> list[dict]:
    (path,) = sorted(out.rglob(f"samples_{task}_*.jsonl"))
    return sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda s: s["doc_id"])


def test_cli_local_ruler_longbench_with_maskkv(tasks_dir, tmp_path):
    from maskkv.cli import main

    out = tmp_path / "out"
    tasks = ["needle_local", "niah_single_1"] + (["longbench_multi_news_local"]
                                                 if (tasks_dir / "multi_news_local.yaml").exists() else [])
    model_args = (f"pretrained={TINY},device=cpu,dtype=float32,cache=dllm,press=maskkv,budget={BUDGET},"
                  f"profile={PROFILE},block_length={ANSWER_TOKENS}")
    result = CliRunner().invoke(main, [
        "lm-eval", "--model", "maskkv", "--model_args", model_args, "--tasks", ",".join(tasks),
        "--include_path", str(tasks_dir), "--apply_chat_template", "--batch_size", "1", "--limit", str(ROWS),
        "--metadata", json.dumps({"max_seq_lengths": [512]}), "--output_path", str(out), "--log_samples",
    ])
    assert result.exit_code == 0, result.output
    (results_file,) = sorted(out.rglob("results_*.json"))
    results = json.loads(results_file.read_text())["results"]

    # the local task: lm-eval's exact_match equals maskkv.generate with the same press on the same prompts
    questions = _questions(tasks_dir)
    texts, score = _maskkv_generate(questions, lambda: MaskKVPress(budget=BUDGET, profile=str(PROFILE)))
    assert results["needle_local"]["exact_match,none"] == pytest.approx(score)
    assert [s["resps"][0][0].strip() for s in _samples(out, "needle_local")] == texts

    # RULER niah_single_1 at 512 tokens, scored by lm-eval's own common_utils
    niah = _samples(out, "niah_single_1")
    assert len(niah) == ROWS and all(s["arguments"]["gen_args_0"]["arg_1"]["max_gen_toks"] == 128 for s in niah)
    assert 0.0 <= results["niah_single_1"]["512,none"] <= 1.0
    from lm_eval.tasks.ruler.common_utils import process_results

    expected = sum(process_results(s["doc"], [s["resps"][0][0]])["512"] for s in niah) / ROWS
    assert results["niah_single_1"]["512,none"] == pytest.approx(expected)

    # LongBench multi_news over ../shared's rows, scored by lm-eval's longbench/metrics.py (0-1 scale); the
    # official scorer (maskkv.eval.metrics) gives 100x the same ROUGE-L on these stripped predictions
    if "longbench_multi_news_local" in tasks:
        news = _samples(out, "longbench_multi_news_local")
        lm_score = results["longbench_multi_news_local"]["score,none"]
        assert 0.0 <= lm_score <= 1.0 and len(news) == ROWS
        predictions = [s["resps"][0][0].strip() for s in news]
        official = score_task("multi_news", predictions, [s["doc"]["answers"] for s in news])
        assert official == pytest.approx(round(100 * lm_score, 2), abs=0.011)


def test_simple_evaluate_without_press_equals_generate(tasks_dir):
    manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    lm = MaskKVLM(pretrained=str(TINY), device="cpu", cache="dllm", block_length=ANSWER_TOKENS)
    result = lm_eval.simple_evaluate(model=lm, tasks=["needle_local"], task_manager=manager, apply_chat_template=True,
                                     log_samples=True)
    texts, score = _maskkv_generate(_questions(tasks_dir), lambda: None)
    assert result["results"]["needle_local"]["exact_match,none"] == pytest.approx(score)
    assert score >= 0.5  # the tiny model answers single-needle prompts (MODEL_CARD): the score carries signal
    logged = sorted(result["samples"]["needle_local"], key=lambda s: s["doc_id"])
    assert [s["resps"][0][0].strip() for s in logged] == texts


MC_TASK = """task: needle_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
metadata:
  version: 1.0
"""


def test_multiple_choice_through_the_monte_carlo_likelihood(tasks_dir, tmp_path):
    rows = []
    for i, row in enumerate(_questions(tasks_dir)):
        choices = [row["answer"], *(str(10 + (int(row["answer"]) + 17 * k) % 89) for k in (1, 2, 3))]
        label = i % 4
        choices[0], choices[label] = choices[label], choices[0]
        rows.append({"question": row["question"], "choices": choices, "label": label})
    data = tmp_path / "choice.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "needle_choice.yaml").write_text(MC_TASK.format(data=data))
    lm = MaskKVLM(pretrained=str(TINY), device="cpu", mc_num=4, batch_size=4)
    result = lm_eval.simple_evaluate(model=lm, tasks=["needle_choice"], apply_chat_template=True, log_samples=True,
                                     task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False))
    samples = result["samples"]["needle_choice"]
    assert len(samples) == len(rows) and all(len(s["resps"]) == 4 for s in samples)
    picked = [max(range(4), key=lambda c: float(s["resps"][c][0][0])) for s in samples]
    labels = [rows[s["doc_id"]]["label"] for s in samples]
    acc = sum(p == t for p, t in zip(picked, labels)) / len(rows)
    assert result["results"]["needle_choice"]["acc,none"] == pytest.approx(acc)


def _gen_request(context: str, **kwargs) -> Instance:
    return Instance("generate_until", {}, (context, kwargs), 0)


def test_batches_are_left_padded_and_cut_at_until(tasks_dir):
    lm = MaskKVLM(pretrained=str(TINY), device="cpu", cache="none", batch_size=3, block_length=ANSWER_TOKENS)
    tokenizer = lm.tokenizer
    questions = [q["question"] for q in _questions(tasks_dir)[:3]]
    questions[1] = questions[1][: len(questions[1]) // 2] + "\n\nWhat is the special magic number?"
    contexts = [lm.apply_chat_template([{"role": "user", "content": q}]) for q in questions]
    requests = [_gen_request(c, until=[], max_gen_toks=12) for c in contexts]
    answers = lm.generate_until(requests)

    # the same batch by hand: longest first, left-padded, gen length 12 rounded up to blocks of 8: 16, 16 steps
    prompts = [encode_prompt(tokenizer, q, chat=True)[0] for q in questions]
    order = sorted(range(3), key=lambda i: -len(prompts[i]))
    width = len(prompts[order[0]])
    ids = torch.full((3, width), tokenizer.pad_token_id)
    mask = torch.zeros((3, width), dtype=torch.long)
    for row, i in enumerate(order):
        ids[row, width - len(prompts[i]):], mask[row, width - len(prompts[i]):] = prompts[i], 1
    out = maskkv.generate(lm.model, ids, attention_mask=mask, gen_length=16, steps=16, block_length=8)
    expected = [""] * 3
    for row, i in enumerate(order):
        expected[i] = decode_answer(tokenizer, out.sequences[row, width:])
    assert [a.strip() for a in answers] == expected
    assert len({len(p) for p in prompts}) > 1  # the batch really was padded

    # every `until` string cuts (the earliest wins), EOS/EOT never reach the text
    first = lm.generate_until([_gen_request(contexts[0], until=[], max_gen_toks=12)])[0]
    assert first and "<|eot_id|>" not in first and "<|endoftext|>" not in first
    stop = first[1:2] or first
    cut = lm.generate_until([_gen_request(contexts[0], until=["zzz", stop], max_gen_toks=12)])[0]
    assert cut == first.split(stop)[0] and cut != first


def test_dream_generate_until_equals_generate(tmp_path):
    """Dream through the adapter: a left-padded batch of 2 equals maskkv.generate on each prompt alone, with the
    reference's default top-k (50) when the task sets none, and the task's top_k when it samples."""
    from maskkv.models.tiny import write_tiny_checkpoint

    folder = write_tiny_checkpoint(tmp_path / "dream", "dream", seed=3, init_std=0.05)  # flat enough for top-k
    lm = MaskKVLM(pretrained=str(folder), device="cpu", batch_size=2, block_length=ANSWER_TOKENS)
    questions = ["the cat sat on the mat and then it went to sleep " * 3, "where did the cat sleep?"]
    contexts = [lm.apply_chat_template([{"role": "user", "content": q}]) for q in questions]
    prompts = [encode_prompt(lm.tokenizer, q, chat=True) for q in questions]
    assert [lm.tok_encode(c) for c in contexts] == [p[0].tolist() for p in prompts]
    assert prompts[0].shape[1] > prompts[1].shape[1]  # the batch is padded (and the longest comes first)

    def alone(**kwargs) -> list[str]:
        texts = []
        for ids in prompts:
            out = maskkv.generate(lm.model, ids, gen_length=ANSWER_TOKENS, steps=ANSWER_TOKENS,
                                  block_length=ANSWER_TOKENS, cache=maskkv.DLLMCache(), temperature=0.0, **kwargs)
            texts.append(decode_answer(lm.tokenizer, out.sequences[0, ids.shape[1]:]))
        return texts

    greedy = lm.generate_until([_gen_request(c, until=[], max_gen_toks=ANSWER_TOKENS) for c in contexts])
    assert [a.strip() for a in greedy] == alone() and all(greedy)
    assert alone() != alone(top_k=0)  # the default filter matters for this model: 50, not "off"

    # sampling: the same left-padded batch (longest first) by hand, from the same seed
    width = max(p.shape[1] for p in prompts)
    ids = torch.full((2, width), lm.pad_id)
    mask = torch.zeros((2, width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - p.shape[1]:], mask[row, width - p.shape[1]:] = p[0], 1

    def batch(**kwargs) -> list[str]:
        torch.manual_seed(5)
        out = maskkv.generate(lm.model, ids, attention_mask=mask, gen_length=ANSWER_TOKENS, steps=ANSWER_TOKENS,
                              block_length=ANSWER_TOKENS, cache=maskkv.DLLMCache(), temperature=1.0, **kwargs)
        return [decode_answer(lm.tokenizer, row) for row in out.sequences[:, width:]]

    sample = {"until": [], "max_gen_toks": ANSWER_TOKENS, "do_sample": True, "temperature": 1.0, "top_k": 3}
    torch.manual_seed(5)
    sampled = lm.generate_until([_gen_request(c, **sample) for c in contexts])
    assert [a.strip() for a in sampled] == batch(top_k=3) != batch()  # the task's top_k reached the sampler


def test_loglikelihood_equals_llada_reference():
    lm = MaskKVLM(pretrained=str(TINY), device="cpu", mc_num=8, mc_batch_size=4)
    context, continuation = "One of the special magic numbers for apple is: 42. The number for apple is:", " 42"
    torch.manual_seed(7)
    (ours, greedy), = lm.loglikelihood([Instance("loglikelihood", {}, (context + " ", continuation.lstrip()), 0)])
    whole = lm.tokenizer(context + continuation)["input_ids"]
    prefix = lm.tokenizer(context)["input_ids"]
    torch.manual_seed(7)
    ref = llada_reference(lm.model, torch.tensor(prefix), torch.tensor(whole[len(prefix):]), mc_num=8,
                          batch_size=4, mask_id=lm.model.config.mask_token_id)
    assert ours == pytest.approx(ref, abs=1e-5) and math.isfinite(ours)
    # is_greedy: LLaDA's reference checks it by default (is_check_greedy=True)
    want, decoded = llada_greedy_reference(lm.model, torch.tensor(prefix), torch.tensor(whole[len(prefix):]),
                                           mask_id=lm.model.config.mask_token_id)
    assert greedy is want
    greedy_text = lm.tokenizer.decode(decoded)  # the span the reference decodes, as a continuation
    assert lm.tokenizer(context + greedy_text)["input_ids"][len(prefix):] == decoded.tolist()
    (_, is_greedy), (_, wrong) = lm.loglikelihood([Instance("loglikelihood", {}, (context, greedy_text), 0),
                                                   Instance("loglikelihood", {}, (context + " ", "17"), 0)])
    assert is_greedy is True and wrong is False
    off = MaskKVLM(pretrained=str(TINY), device="cpu", mc_num=8, mc_batch_size=4, is_check_greedy="False")
    assert off.loglikelihood([Instance("loglikelihood", {}, (context + " ", continuation.lstrip()), 0)])[0][1] is False


def test_loglikelihood_equals_dream_reference(tmp_path):
    from maskkv.models.tiny import write_tiny_checkpoint

    folder = write_tiny_checkpoint(tmp_path / "dream", "dream", init_std=0.5)
    lm = MaskKVLM(pretrained=str(folder), device="cpu", mc_num=6, batch_size=4)  # mc batch = batch_size
    torch.manual_seed(3)
    (ours, _), = lm.loglikelihood([Instance("loglikelihood", {}, ("the cat sat on", " the mat"), 0)])
    prefix = lm.tokenizer.encode("the cat sat on")
    whole = lm.tokenizer.encode("the cat sat on the mat") + [lm.model.config.eos_token_id]
    torch.manual_seed(3)
    ref = dream_reference(lm.model, torch.tensor(prefix), torch.tensor(whole[len(prefix):]), mc_num=6,
                          batch_size=4, mask_id=lm.model.config.mask_token_id)
    assert ours == pytest.approx(ref, abs=1e-5) and _ is False  # Dream's reference never checks greedy decoding
    with pytest.raises(ModelArgsError, match="is_check_greedy=True: Dream's reference"):
        MaskKVLM(pretrained=str(folder), device="cpu", is_check_greedy=True)
    with pytest.raises(NotImplementedError, match="not defined for masked diffusion"):
        lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("text",), 0)])


def test_model_args_are_checked_and_reach_the_cli_as_messages(monkeypatch):
    with pytest.raises(ModelArgsError, match="unknown model_args bogus"):
        MaskKVLM(pretrained=str(TINY), bogus=1)
    with pytest.raises(ModelArgsError, match="cache='fast'"):
        MaskKVLM(pretrained=str(TINY), cache="fast")
    with pytest.raises(ModelArgsError, match="needs a positive --budget"):
        MaskKVLM(pretrained=str(TINY), press="snapkv")
    with pytest.raises(ModelArgsError, match="kernel_sizee"):
        MaskKVLM(pretrained=str(TINY), press="snapkv", budget=8, press_kernel_sizee=4)
    with pytest.raises(ModelArgsError, match="multiple of mc_batch_size"):
        MaskKVLM(pretrained=str(TINY), mc_num=6, batch_size=4).loglikelihood([])
    lm = MaskKVLM.create_from_arg_string(f"pretrained={TINY},cache=none,press=snapkv,budget=8,press_kernel_size=5",
                                         {"device": "cuda:0" if not torch.cuda.is_available() else None,
                                          "batch_size": "2"})
    assert lm.gen.cache == "none" and lm.gen.make_press().kernel_size == 5 and lm.batch_size == 2
    assert str(lm.device) == "cpu"

    import lm_eval.__main__ as lm_main
    from maskkv.cli import main

    def fail() -> None:
        MaskKVLM(pretrained=str(TINY), cache="fast")

    monkeypatch.setattr(lm_main, "cli_evaluate", fail)
    result = CliRunner().invoke(main, ["lm-eval", "--model", "maskkv", "--tasks", "x"])
    assert result.exit_code == 1 and "cache='fast'" in result.output and "Traceback" not in result.output


def test_registered_only_by_the_adapter_module():
    code = ("import sys, maskkv, maskkv.cli; assert 'lm_eval' not in sys.modules, 'lm_eval imported';"
            "import maskkv.lmeval.model as m; from lm_eval.api.registry import get_model;"
            "assert get_model('maskkv') is m.MaskKVLM; print('ok')")
    env = {**os.environ, "PYTHONPATH": str(Path(maskkv.__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


DP_WORKER = """
import json, sys
import lm_eval, torch
from lm_eval.tasks import TaskManager
from maskkv.lmeval.model import MaskKVLM

torch.set_num_threads(1)
tasks_dir, out = sys.argv[1], sys.argv[2]
lm = MaskKVLM(pretrained=sys.argv[3], device="cpu", cache="dllm", block_length=8)
result = lm_eval.simple_evaluate(model=lm, tasks=["needle_local"], apply_chat_template=True, log_samples=True,
                                 task_manager=TaskManager(include_path=tasks_dir, include_defaults=False))
if lm.rank == 0:
    samples = sorted(result["samples"]["needle_local"], key=lambda s: s["doc_id"])
    json.dump({"world_size": lm.world_size, "score": result["results"]["needle_local"]["exact_match,none"],
               "texts": [s["resps"][0][0].strip() for s in samples]}, open(out, "w"))
"""


def test_data_parallel_two_cpu_processes(tasks_dir, tmp_path):
    """torchrun (as accelerate launch) with 2 CPU ranks: lm-eval shards the requests, the gathered score and
    predictions equal maskkv.generate's (one process)."""
    import socket

    worker, out = tmp_path / "worker.py", tmp_path / "dp.json"
    worker.write_text(DP_WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(maskkv.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(port), str(worker), str(tasks_dir), str(out), str(TINY)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    texts, score = _maskkv_generate(_questions(tasks_dir), lambda: None)
    assert result["world_size"] == 2 and result["texts"] == texts and result["score"] == pytest.approx(score)


def test_help_lists_every_model_arg_in_wrapped_lines():
    from maskkv.lmeval.cli import _usage
    from maskkv.lmeval.model_args import MODEL_ARGS

    text = _usage()
    listed = {line.split()[0] for line in text.splitlines() if line.startswith("  ") and not line.startswith("   ")}
    assert set(MODEL_ARGS) <= listed
    assert max(len(line) for line in text.splitlines()) <= 112
