"""``maskkv.text``: one EOS/EOT rule, one pad id rule and one left padding for every front end.

The command line, the evaluations, the lm-eval model and the server all cut generated ids at the first EOS/EOT
(``cut_at_stop``); only the chat-facing ones strip whitespace (LongBench and lm-eval score the text as generated).
Batches are left-padded with ``pad_token_id`` -- never the mask id, which ``maskkv.generate`` refuses -- and the
pad value never changes an answer. The server and the lm-eval model use the same rule, checked on a checkpoint
whose tokenizer and config.json both name the mask token as the pad token.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import time
from types import SimpleNamespace

import pytest
import torch

import maskkv
from maskkv.demo import shipped_model_path
from maskkv.eval.common import GenerationConfig, ModelHandle, generate_text
from maskkv.text import cut_at_stop, decode_answer, encode_prompt, left_pad, pad_token_id, stop_token_ids

MODEL = shipped_model_path()


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return maskkv.load_model(MODEL), maskkv.load_tokenizer(MODEL)


def _documents(tokenizer, lengths: list[int], seed: int = 0) -> list[str]:
    from maskkv.train.data import SyntheticFiller, TaskBuilder

    builder = TaskBuilder(tokenizer.backend_tokenizer, SyntheticFiller("heldout"))
    rng = random.Random(seed)
    return [builder.sample("single", n, rng).content for n in lengths]


def _single_answers(model, tokenizer, prompts: list[list[int]]) -> list[list[int]]:
    out = []
    for prompt in prompts:
        result = maskkv.generate(model, torch.tensor([prompt]), gen_length=8, steps=8, block_length=8)
        out.append(result.sequences[0, len(prompt):].tolist())
    return out


# ----- the EOS/EOT rule ------------------------------------------------------------------------------


def test_cut_at_stop_ends_before_the_first_eos_or_eot(tiny):
    _, tok = tiny
    stops = stop_token_ids(tok)
    eos, eot = tok.eos_token_id, tok.eot_token_id
    assert stops == {eos, eot} and eos != eot
    words = tok("\n59 and more", add_special_tokens=False)["input_ids"]
    assert cut_at_stop([*words[:2], eot, *words[2:], eos], stops) == words[:2]  # EOT counts, not only EOS
    assert cut_at_stop([*words, eos, eot], stops) == words
    assert cut_at_stop(torch.tensor([*words, eot]), stops) == words  # a tensor row as well
    assert cut_at_stop(words, stops) == words and cut_at_stop([eos], stops) == []


def test_every_front_end_cuts_at_the_same_ids_and_only_the_chat_ones_strip(tiny):
    """decode_answer (CLI, demo, server's final text) strips; LongBench/lm-eval's raw text keeps whitespace;
    the server's streaming tracker shows exactly decode_answer's text."""
    from maskkv.serve.worker import TextTracker

    _, tok = tiny
    words = tok("\n59", add_special_tokens=False)["input_ids"]
    tail = tok(" more text", add_special_tokens=False)["input_ids"]
    ids = [*words, tok.eot_token_id, *tail, tok.eos_token_id]
    raw = tok.decode(words, skip_special_tokens=True)
    assert raw.startswith("\n") and raw != raw.strip()
    assert decode_answer(tok, ids) == raw.strip() == "59"
    assert decode_answer(tok, ids, strip=False) == raw  # LongBench's first-line rule needs the newline
    assert decode_answer(tok, ids, eos_cut=False, strip=False) == tok.decode(ids, skip_special_tokens=True)
    assert "more text" in decode_answer(tok, ids, eos_cut=False)
    tracker = TextTracker(tok, [])
    assert tracker.answer_ids(ids) == (words, True) and tracker.answer_ids(words) == (words, False)
    assert tracker.visible(ids, final=True) == (decode_answer(tok, ids), True, True)
    assert tracker.visible(ids[:2], final=False)[0] == decode_answer(tok, ids[:2])


def test_evaluation_text_is_generate_output_cut_at_eos_when_asked_and_never_stripped(tiny):
    model, tok = tiny
    doc, = _documents(tok, [150], seed=4)
    ids = encode_prompt(tok, doc, chat=True)
    handle = ModelHandle(path=str(MODEL), _tokenizer=tok, _model=model)
    out = maskkv.generate(model, ids, gen_length=8, steps=8, block_length=8)
    generated = out.sequences[0, ids.shape[1]:].tolist()
    assert set(generated) & stop_token_ids(tok)  # the answer ends with EOT/EOS: the cut matters
    for eos_cut in (True, False):
        got = generate_text(handle, GenerationConfig(cache="none", eos_cut=eos_cut), ids, 8, sample_seed=0)
        kept = cut_at_stop(generated, stop_token_ids(tok)) if eos_cut else generated
        assert got.text == tok.decode(kept, skip_special_tokens=True)


# ----- the pad id rule and left padding ----------------------------------------------------------------


def test_pad_token_id_is_never_the_mask_id():
    config = SimpleNamespace(mask_token_id=9, pad_token_id=7, eos_token_id=8)
    assert pad_token_id(config, SimpleNamespace(pad_token_id=5, eos_token_id=8)) == 5
    assert pad_token_id(config, SimpleNamespace(pad_token_id=9, eos_token_id=8)) == 7  # tokenizer pad = mask
    assert pad_token_id(config, SimpleNamespace(pad_token_id=None, eos_token_id=8)) == 7
    assert pad_token_id(config) == 7
    both = SimpleNamespace(mask_token_id=9, pad_token_id=9, eos_token_id=8)
    assert pad_token_id(both, SimpleNamespace(pad_token_id=9, eos_token_id=8)) == 8
    hopeless = SimpleNamespace(mask_token_id=9, pad_token_id=9, eos_token_id=9)
    with pytest.raises(ValueError, match="mask token id 9"):
        pad_token_id(hopeless, SimpleNamespace(pad_token_id=9, eos_token_id=9))


def test_left_pad_pads_on_the_left_and_masks_only_the_pads():
    ids, mask = left_pad([[4, 5, 6], [7], [8, 9]], pad_id=1)
    assert ids.tolist() == [[4, 5, 6], [1, 1, 7], [1, 8, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]] and ids.dtype == mask.dtype == torch.long
    ids, mask = left_pad([[4, 5], [6, 7]], pad_id=1)
    assert ids.tolist() == [[4, 5], [6, 7]] and mask is None  # no padding: generate's unpadded path
    with pytest.raises(ValueError):
        left_pad([[4], []], pad_id=1)


def test_the_pad_value_never_changes_a_batched_answer(tiny):
    """Pad keys are masked out: every non-mask pad id gives the same tokens, and each row answers as alone."""
    model, tok = tiny
    prompts = [encode_prompt(tok, d, chat=True)[0].tolist() for d in _documents(tok, [120, 200], seed=0)]
    assert len(prompts[0]) != len(prompts[1])
    want = [decode_answer(tok, row) for row in _single_answers(model, tok, prompts)]
    assert any(want)
    generated = []
    for pad in (pad_token_id(model.config, tok), 5, 100):
        ids, mask = left_pad(prompts, pad)
        out = maskkv.generate(model, ids, attention_mask=mask, gen_length=8, steps=8, block_length=8)
        generated.append(out.sequences[:, ids.shape[1]:].tolist())
        assert [decode_answer(tok, row) for row in generated[-1]] == want, pad
    assert generated[0] == generated[1] == generated[2]  # token for token, whatever the pad value
    with pytest.raises(ValueError, match="pads must not use the mask id"):
        ids, mask = left_pad(prompts, model.config.mask_token_id)
        maskkv.generate(model, ids, attention_mask=mask, gen_length=8, steps=8, block_length=8)


@pytest.fixture(scope="module")
def mask_padded_model(tmp_path_factory):
    """The shipped tiny model with the mask token as pad token in config.json and in the tokenizer files."""
    folder = tmp_path_factory.mktemp("mask-pad") / "tiny-llada"
    shutil.copytree(MODEL, folder)
    config = json.loads((folder / "config.json").read_text())
    mask_id = config["pad_token_id"] = config["mask_token_id"]
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        data = json.loads((folder / name).read_text())
        data["pad_token"] = "<|mdm_mask|>"
        (folder / name).write_text(json.dumps(data))
    tok = maskkv.load_tokenizer(folder)
    assert tok.pad_token_id == mask_id == maskkv.load_model(folder).config.pad_token_id
    return folder


def test_server_and_lm_eval_pad_by_the_same_rule_when_the_pad_token_is_the_mask(mask_padded_model, tiny):
    """Both batchers pick the same non-mask pad id, and a padded batch answers like single requests."""
    pytest.importorskip("fastapi")
    pytest.importorskip("prometheus_client")
    from maskkv.serve.metrics import ServerMetrics
    from maskkv.serve.worker import DecodeKey, Job, ModelWorker, WorkerSettings

    model, tok = tiny
    expected = pad_token_id(model.config, maskkv.load_tokenizer(mask_padded_model))
    assert expected == tok.eos_token_id != model.config.mask_token_id

    prompts = [encode_prompt(tok, d, chat=True)[0].tolist() for d in _documents(tok, [90, 160], seed=6)]
    want = [decode_answer(tok, row) for row in _single_answers(model, tok, prompts)]
    assert any(want)

    worker = ModelWorker(WorkerSettings(model_path=str(mask_padded_model), max_batch_size=2, batch_wait_ms=5000),
                         ServerMetrics())
    key = DecodeKey(gen_length=8, steps=8, block_length=8, temperature=0.0, remasking="low_confidence",
                    threshold=None, top_p=None, top_k=None, cache="dllm", press=None, budget=None, profile=None,
                    seed=None)

    async def decode() -> list[dict]:
        loop = asyncio.get_running_loop()
        jobs = [Job(request_id=str(i), prompt_ids=p, key=key, stops=[], kept_tokens=False, loop=loop)
                for i, p in enumerate(prompts)]
        for job in jobs:
            worker.submit(job)
        results = []
        for job in jobs:
            while True:
                kind, payload = await asyncio.wait_for(job.events.get(), timeout=120)
                if kind == "error":
                    raise payload
                if kind == "done":
                    results.append(payload)
                    break
        return results

    worker.start()
    try:
        for _ in range(600):
            if worker.ready or worker.load_error:
                break
            time.sleep(0.1)
        assert worker.ready, worker.load_error
        assert worker.pad_id == expected
        results = asyncio.run(decode())
    finally:
        worker.stop()
    assert [r["batch_size"] for r in results] == [2, 2]  # decoded as one left-padded batch
    assert [r["text"] for r in results] == want

    lm_eval = pytest.importorskip("lm_eval")  # noqa: F841
    from maskkv.lmeval.model import MaskKVLM

    lm = MaskKVLM(pretrained=str(mask_padded_model), device="cpu", batch_size=2, cache="none")
    assert lm.pad_id == expected
    settings = lm._request_settings({"until": [], "max_gen_toks": 8})
    assert [t.strip() for t in lm._generate_batch(prompts, settings)] == want


def test_server_refuses_cache_and_press_settings_on_the_evaluations_path():
    """The worker builds caches and presses through GenerationConfig; what it refuses is a 400 naming the field."""
    pytest.importorskip("fastapi")
    from maskkv.serve.protocol import APIError
    from maskkv.serve.worker import DecodeKey, ModelWorker, WorkerSettings

    worker = ModelWorker(WorkerSettings(model_path=str(MODEL)), metrics=None)
    base = dict(gen_length=8, steps=8, block_length=8, temperature=0.0, remasking="low_confidence", threshold=None,
                top_p=None, top_k=None, cache="dllm", press=None, budget=None, profile=None, seed=None)
    for changes, field in (({"press": "nope", "budget": 8}, "maskkv.press"),
                           ({"press": "snapkv", "budget": None}, "maskkv.budget"),
                           ({"press": "snapkv", "budget": 8, "cache": "fast-dual"}, "maskkv.cache")):
        with pytest.raises(APIError) as info:
            worker.generation(DecodeKey(**{**base, **changes}))
        assert info.value.status == 400 and info.value.param == field, changes
    gen, press = worker.generation(DecodeKey(**{**base, "press": "snapkv", "budget": 8}))
    assert type(gen.make_cache()).__name__ == "DLLMCache" and repr(press).startswith("SnapKV")
    assert worker.generation(DecodeKey(**{**base, "press": "snapkv", "budget": 8}))[1] is press  # built once
    assert worker.generation(DecodeKey(**{**base, "cache": "none"}))[0].make_cache() is None
