"""``maskkv serve`` with a Dream checkpoint: a live server over a tiny random Dream model, driven by the openai client.

The answers (chat and completions, streamed or not, with and without a press) equal :func:`maskkv.generate`'s for
the same settings, including Dream's reference default filter (an unset ``top_k`` is 50, as in ``generate``), and
the request's ``top_p`` / ``top_k`` reach the Dream sampler (greedy, and seeded sampling). LLaDA's 400 for these
fields is pinned in ``test_serve.py``. One server process serves the module.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytest.importorskip("openai")

import maskkv  # noqa: E402
from maskkv.cache import DLLMCache  # noqa: E402
from maskkv.models.tiny import write_tiny_checkpoint  # noqa: E402
from maskkv.presses import make_press  # noqa: E402
from maskkv.text import decode_answer, encode_prompt  # noqa: E402
from serve_server import BLOCK, GEN, Server  # noqa: E402

NAME = "tiny-dream"
# a 0.05 init keeps the tiny model's distributions flat enough that the top-k filter changes greedy answers
PROMPT = "the cat sat on the mat and then it went to sleep " * 3


@pytest.fixture(scope="module")
def dream_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("dream-serve") / "dream", "dream", seed=3, init_std=0.05)


@pytest.fixture(scope="module")
def server(dream_dir, tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("serve-dream"), model=dream_dir, name=NAME)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reference(dream_dir):
    """``answer(chat, **generate_kwargs)``: maskkv.generate's answer to PROMPT with the server's settings."""
    torch.set_num_threads(1)
    model, tokenizer = maskkv.load_model(dream_dir), maskkv.load_tokenizer(dream_dir)

    def answer(*, chat: bool, gen: int = GEN, seed: int | None = None, **kwargs) -> str:
        ids = encode_prompt(tokenizer, PROMPT, chat=chat)
        if seed is not None:
            torch.manual_seed(seed)
        kwargs.setdefault("temperature", 0.0)
        out = maskkv.generate(model, ids, gen_length=gen, steps=gen, block_length=min(BLOCK, gen), cache=DLLMCache(),
                              **kwargs)
        return decode_answer(tokenizer, out.sequences[0, ids.shape[1]:])

    answer.tokenizer = tokenizer
    return answer


def _chat(server, stream: bool = False, **kwargs):
    return server.client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": PROMPT}],
                                                 stream=stream, **kwargs)


@pytest.mark.parametrize("press", [None, ("snapkv", 8)], ids=["full", "snapkv8"])
def test_dream_chat_and_completions_equal_generate_streamed_or_not(server, reference, press):
    extra = {} if press is None else {"maskkv": {"press": press[0], "budget": press[1]}}
    kw = {} if press is None else {"press": make_press(*press)}
    want_chat, want_raw = reference(chat=True, **kw), reference(chat=False, **kw)
    assert want_chat and want_raw  # non-empty answers keep the comparison meaningful

    chat = _chat(server, extra_body=extra)
    assert chat.choices[0].message.content == want_chat
    assert chat.usage.prompt_tokens == encode_prompt(reference.tokenizer, PROMPT, chat=True).shape[1]
    assert chat.usage.completion_tokens == GEN
    info = chat.model_dump()["maskkv"]
    assert info["press"] == (None if press is None else "snapkv")
    assert (info["kept_prompt_share"] < 1.0) if press else info["kept_prompt_share"] == 1.0

    raw = server.client.completions.create(model=NAME, prompt=PROMPT, extra_body=extra)
    assert raw.choices[0].text == want_raw

    chunks = list(_chat(server, stream=True, stream_options={"include_usage": True}, extra_body=extra))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want_chat
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == chat.usage.total_tokens

    pieces = list(server.client.completions.create(model=NAME, prompt=PROMPT, stream=True, extra_body=extra))
    assert "".join(c.choices[0].text for c in pieces) == want_raw


def test_dream_default_top_k_is_the_reference_50(server, reference):
    """No top_k in the request = generate's default (the reference's effective 50), not "no filter"."""
    default, unfiltered = reference(chat=True), reference(chat=True, top_k=0)
    assert default == reference(chat=True, top_k=50) and default != unfiltered  # the filter matters here
    assert _chat(server).choices[0].message.content == default
    assert _chat(server, extra_body={"top_k": 0}).choices[0].message.content == unfiltered


def test_dream_top_p_and_top_k_fields_reach_the_sampler(server, reference):
    """Greedy: the filters change the confidences (hence the unmasking order); sampling: the tokens."""
    # top_p is an OpenAI argument of the client; top_k is not, so it travels in extra_body
    assert _chat(server, extra_body={"top_k": 1}).choices[0].message.content == reference(chat=True, top_k=1)
    assert _chat(server, top_p=0.5).choices[0].message.content == reference(chat=True, top_p=0.5)
    assert reference(chat=True, top_k=1) != reference(chat=True)  # top_k is not silently dropped

    sampled = {"temperature": 1.0, "top_p": 0.9, "top_k": 5}
    want = reference(chat=False, gen=16, seed=11, **sampled)
    got = server.client.completions.create(model=NAME, prompt=PROMPT, max_tokens=16, seed=11, temperature=1.0,
                                           top_p=0.9, extra_body={"top_k": 5})
    assert got.choices[0].text == want
    assert want != reference(chat=False, gen=16, seed=11, temperature=1.0)  # the filters changed the samples


def test_dream_rejects_llada_only_remasking(server):
    import httpx

    r = httpx.post(f"{server.url}/v1/completions",
                   json={"model": NAME, "prompt": PROMPT, "maskkv": {"remasking": "random"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "maskkv.remasking"
