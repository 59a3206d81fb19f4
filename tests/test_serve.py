"""``maskkv serve``: a live server on 127.0.0.1 with the shipped tiny model, driven by the official openai client.

The answers are compared with :func:`maskkv.generate` under the same settings (greedy), every documented error
is checked for its status and OpenAI-shaped body, and a bounded load test compares batched with sequential wall
time. One server process serves the module (its start is the slow part); the last test using it stops it with SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time

import pytest
import torch

fastapi = pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import maskkv  # noqa: E402
from maskkv.cache import DLLMCache  # noqa: E402
from maskkv.presses import make_press  # noqa: E402
from maskkv.serve.protocol import APIError, ChatCompletionRequest, parse_request  # noqa: E402
from maskkv.serve.observe import StepHook, kept_counts  # noqa: E402
from maskkv.serve.worker import TextTracker  # noqa: E402
from maskkv.text import decode_answer, encode_prompt  # noqa: E402
from serve_server import BLOCK, GEN, MAX_PROMPT, MAX_QUEUE, MODEL, NAME, PROFILE, Server  # noqa: E402
from serve_server import documents as _documents  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("serve"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reference():
    """``answer(text, chat, press)``: maskkv.generate's answer with the server's settings, in this process."""
    torch.set_num_threads(1)
    model = maskkv.load_model(MODEL)
    tokenizer = maskkv.load_tokenizer(MODEL)

    def answer(text: str, *, chat: bool, press: tuple[str, int] | None = None, gen: int = GEN,
               block: int = BLOCK) -> str:
        ids = encode_prompt(tokenizer, text, chat=chat)
        kw = {} if press is None else {"press": make_press(press[0], press[1], profile=str(PROFILE))}
        out = maskkv.generate(model, ids, gen_length=gen, steps=gen, block_length=min(block, gen), cache=DLLMCache(),
                              **kw)
        return decode_answer(tokenizer, out.sequences[0, ids.shape[1]:])

    answer.model, answer.tokenizer = model, tokenizer
    return answer


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# ----- answers equal generate's --------------------------------------------------------------------


@pytest.mark.parametrize("press", [None, ("maskkv", 16)], ids=["full", "maskkv16"])
def test_chat_and_completions_equal_generate_streamed_or_not(server, reference, press):
    doc, = _documents([200], seed=1)
    extra = {} if press is None else {"maskkv": {"press": press[0], "budget": press[1]}}
    want_chat = reference(doc, chat=True, press=press)
    want_raw = reference(doc, chat=False, press=press)
    assert want_chat  # the tiny model answers its task; an empty answer would make the comparison weak

    chat = server.client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": doc}],
                                                 extra_body=extra)
    assert chat.choices[0].message.content == want_chat
    assert chat.usage.completion_tokens == GEN and chat.usage.total_tokens == chat.usage.prompt_tokens + GEN
    info = chat.model_dump()["maskkv"]
    assert info["press"] == (None if press is None else "maskkv") and info["nfe"] >= 1
    assert (info["kept_prompt_share"] < 0.2) if press else info["kept_prompt_share"] == 1.0
    assert info["profile"] == (None if press is None else "tiny")

    raw = server.client.completions.create(model=NAME, prompt=doc, extra_body=extra)
    assert raw.choices[0].text == want_raw
    assert raw.usage.prompt_tokens == encode_prompt(reference.tokenizer, doc, chat=False).shape[1]

    chunks = list(server.client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": doc}],
                                                        stream=True, stream_options={"include_usage": True},
                                                        extra_body=extra))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want_chat
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == chat.usage.total_tokens

    pieces = list(server.client.completions.create(model=NAME, prompt=doc, stream=True, extra_body=extra))
    assert "".join(c.choices[0].text for c in pieces) == want_raw


def test_longer_generation_streams_block_by_block_and_matches(server, reference):
    """A 32-token canvas in blocks of 8: the streamed pieces concatenate to generate's answer."""
    doc, = _documents([120], seed=2)
    want = reference(doc, chat=False, gen=32)
    stream = server.client.completions.create(model=NAME, prompt=doc, max_tokens=30, stream=True)
    pieces = [c.choices[0].text for c in stream]
    assert "".join(pieces) == want
    full = server.client.completions.create(model=NAME, prompt=doc, max_tokens=30)
    assert full.usage.completion_tokens == 32  # rounded up to the block length
    assert full.model_dump()["maskkv"]["gen_length"] == 32


def test_seeded_sampling_reproduces_generate(server, reference):
    """temperature > 0 with a seed: the request decodes alone, seeded like ``torch.manual_seed(seed)``."""
    doc, = _documents([90], seed=13)
    ids = encode_prompt(reference.tokenizer, doc, chat=False)
    answers = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        out = maskkv.generate(reference.model, ids, gen_length=16, steps=16, block_length=8, temperature=1.0,
                              cache=DLLMCache())
        want = decode_answer(reference.tokenizer, out.sequences[0, ids.shape[1]:])
        got = server.client.completions.create(model=NAME, prompt=doc, max_tokens=16, temperature=1.0, seed=seed)
        assert got.choices[0].text == want
        answers.append(want)
    assert answers[0] == answers[1]


def test_keep_alive_comments_while_a_long_block_runs(server, reference):
    """One 64-token block over a 600-token prompt runs longer than the 0.2 s keep-alive period."""
    doc, = _documents([600], seed=12)
    body = {"model": NAME, "prompt": doc, "max_tokens": 64, "stream": True, "maskkv": {"block_length": 64}}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    first_data = lines.index(next(line for line in lines if line.startswith("data: ")))
    assert ": keep-alive" in lines[:first_data] and data[-1] == "[DONE]"
    assert "".join(json.loads(d)["choices"][0]["text"] for d in data[:-1]) == reference(doc, chat=False, gen=64,
                                                                                         block=64)


def test_stop_strings_cut_the_text(server, reference):
    doc, = _documents([150], seed=3)
    want = reference(doc, chat=True)
    assert len(want) >= 2
    stop = want[1:]
    out = server.client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": doc}], stop=[stop])
    assert out.choices[0].message.content == want[:1] and out.choices[0].finish_reason == "stop"


# ----- errors ------------------------------------------------------------------------------------------


def test_error_statuses_and_bodies(server):
    url = f"{server.url}/v1/chat/completions"
    ok = {"model": NAME, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(url, content=b"{not json")
    assert r.status_code == 400 and "not valid JSON" in _error(r)["message"]
    r = httpx.post(url, json={**ok, "temperature": "hot"})
    assert r.status_code == 400 and _error(r)["param"] == "temperature"
    r = httpx.post(url, json={**ok, "messages": [{"role": "robot", "content": "x"}]})
    assert r.status_code == 400 and _error(r)["param"] == "messages[0].role"
    r = httpx.post(url, json={"model": NAME})
    assert r.status_code == 400 and _error(r)["param"] == "messages"
    r = httpx.post(url, json={**ok, "maskkv": {"press": "maskkv", "budget": 0}})
    assert r.status_code == 400 and _error(r)["param"] == "maskkv.budget"
    r = httpx.post(url, json={**ok, "maskkv": {"press": "nope"}})
    assert r.status_code == 400 and _error(r)["param"] == "maskkv.press"
    r = httpx.post(url, json={**ok, "maskkv": {"press": "snapkv", "budget": 16, "cache": "fast-dual"}})
    assert r.status_code == 400 and _error(r)["param"] == "maskkv.cache" and "does not evict" in _error(r)["message"]
    r = httpx.post(url, json={**ok, "max_tokens": 16, "maskkv": {"steps": 3, "block_length": 8}})
    assert r.status_code == 400 and _error(r)["param"] == "maskkv.steps" and "divisible" in _error(r)["message"]
    r = httpx.post(url, json={**ok, "maskkv": {"press": "maskkv", "profile": "/etc/passwd"}})
    assert r.status_code == 400 and _error(r)["param"] == "maskkv.profile"
    r = httpx.post(url, json={**ok, "maskkv": {"colour": 1}})
    assert r.status_code == 400 and _error(r)["param"] == "maskkv.colour"
    r = httpx.post(url, json={**ok, "top_p": 0.5})  # LLaDA has no nucleus sampling
    assert r.status_code == 400 and _error(r)["param"] == "top_p"
    for top_k in (1, 5):  # nor a top-k filter (1 is not "off": it would change sampled tokens)
        r = httpx.post(url, json={**ok, "top_k": top_k})
        assert r.status_code == 400 and _error(r)["param"] == "top_k" and "Dream" in _error(r)["message"]
    for off in ({"top_p": 1.0}, {"top_k": 0}):  # the values that filter nothing are accepted
        assert httpx.post(url, json={**ok, **off, "max_tokens": 8}, timeout=60).status_code == 200
    r = httpx.post(url, json={**ok, "n": 2})
    assert r.status_code == 400 and _error(r)["param"] == "n"
    r = httpx.post(url, json={**ok, "messages": [{"role": "user", "content": "fill <|mdm_mask|> in"}]})
    assert r.status_code == 400 and "mask token" in _error(r)["message"]
    r = httpx.get(f"{server.url}/v1/nothing")
    assert r.status_code == 404 and _error(r)["type"] == "not_found_error"

    client = server.client
    for field, value in (("logprobs", True), ("tools", [{"type": "function", "function": {"name": "f"}}]),
                         ("frequency_penalty", 0.5)):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=NAME, messages=ok["messages"], **{field: value})
        assert info.value.status_code == 400 and info.value.body["param"] == field
        assert "not supported" in info.value.body["message"]
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=ok["messages"])
    assert info.value.body["message"] == "The model `gpt-4o` does not exist."
    long_doc, = _documents([MAX_PROMPT + 100])
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=NAME, prompt=long_doc)
    message = info.value.body["message"]
    n_tokens = encode_prompt(maskkv.load_tokenizer(MODEL), long_doc, chat=False).shape[1]
    assert f"{n_tokens} tokens" in message and str(MAX_PROMPT) in message and info.value.body["param"] == "prompt"


def test_internal_error_is_500_with_request_id_streamed_or_not(server):
    """A profile file that vanished after start-up fails inside the worker: 500 naming the request id."""
    server.vanishing.unlink()
    body = {"model": NAME, "prompt": "the special magic number", "maskkv": {"press": "maskkv", "budget": 2,
                                                                           "profile": "vanishing"}}
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 500
    error = _error(r)
    request_id = r.headers["x-request-id"]
    assert request_id in error["message"] and "Traceback" not in r.text
    assert "Traceback" in server.logtext() and request_id in server.logtext()
    with pytest.raises(openai.APIError) as info:  # the error event the client raises from, before [DONE]
        list(server.client.completions.create(model=NAME, prompt=body["prompt"], stream=True, extra_body={"maskkv": body["maskkv"]}))
    assert "internal error" in str(info.value)
    with httpx.stream("POST", f"{server.url}/v1/completions", json={**body, "stream": True}, timeout=60) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert json.loads(lines[-2].removeprefix("data: "))["error"]["code"] == "internal_error"
    assert lines[-1] == "data: [DONE]"
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_queue_full_is_503(server):
    docs = _documents([600] * 40, seed=4)

    async def run() -> list:
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)
        calls = [client.completions.create(model=NAME, prompt=d, max_tokens=32) for d in docs]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(run())
    refused = [r for r in results if isinstance(r, openai.InternalServerError)]
    served = [r for r in results if not isinstance(r, Exception)]
    assert len(refused) + len(served) == len(docs), [r for r in results if isinstance(r, Exception)][:3]
    assert refused and all(r.status_code == 503 and "queue is full" in r.body["message"] for r in refused)
    assert len(served) >= MAX_QUEUE


# ----- metrics, disconnects ----------------------------------------------------------------------------


def test_metrics_parse_and_move(server):
    before = server.metrics()
    doc, = _documents([100], seed=5)
    out = server.client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": doc}],
                                                extra_body={"maskkv": {"press": "maskkv", "budget": 8}})
    after = server.metrics()
    key = "maskkv_requests_total{endpoint=/v1/chat/completions,status=200}"
    assert after[key] == before.get(key, 0) + 1
    assert after["maskkv_prompt_tokens_total"] == before["maskkv_prompt_tokens_total"] + out.usage.prompt_tokens
    assert after["maskkv_generation_tokens_total"] == before["maskkv_generation_tokens_total"] + GEN
    assert after["maskkv_batch_size_count"] == before["maskkv_batch_size_count"] + 1
    assert after["maskkv_kept_prompt_kv_share_count"] == before["maskkv_kept_prompt_kv_share_count"] + 1
    assert after["maskkv_time_to_first_block_seconds_count"] > before["maskkv_time_to_first_block_seconds_count"]
    assert after["maskkv_cache_bytes"] > 0 and after["maskkv_queue_depth"] == 0


def _idle(server) -> dict[str, float]:
    deadline = time.time() + 30
    while True:
        m = server.metrics()
        if m["maskkv_in_flight_requests"] == 0 and m["maskkv_running_requests"] == 0 or time.time() > deadline:
            return m
        time.sleep(0.1)


def test_disconnect_mid_stream_and_mid_batch_keeps_serving(server, reference):
    doc, = _documents([500], seed=6)
    for _ in range(2):  # warm the allocator so that RSS measures held memory, not first-use growth
        server.client.completions.create(model=NAME, prompt=doc, max_tokens=64)
    idle_rss = server.rss_kib()
    for _ in range(3):  # mid-stream: read the first event, then hang up
        with httpx.stream("POST", f"{server.url}/v1/completions", timeout=60,
                          json={"model": NAME, "prompt": doc, "max_tokens": 64, "stream": True}) as r:
            next(r.iter_lines())

    async def batch_with_quitters() -> list:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            body = {"model": NAME, "prompt": doc, "max_tokens": 64}
            stay = [asyncio.create_task(client.post("/v1/completions", json=body)) for _ in range(2)]
            quit_ = [asyncio.create_task(client.post("/v1/completions", json=body)) for _ in range(2)]
            await asyncio.sleep(0.3)  # queued or decoding together
            for task in quit_:
                task.cancel()
            return await asyncio.gather(*stay)

    kept = asyncio.run(batch_with_quitters())
    want = reference(doc, chat=False, gen=64)
    assert [r.json()["choices"][0]["text"] for r in kept] == [want, want]
    metrics = _idle(server)
    assert metrics["maskkv_in_flight_requests"] == 0 and metrics["maskkv_running_requests"] == 0
    assert metrics["maskkv_queue_depth"] == 0
    assert server.client.completions.create(model=NAME, prompt=doc).choices[0].text == reference(doc, chat=False)
    assert server.rss_kib() < idle_rss + 30 * 1024, "memory did not return near the idle level"


# ----- load -----------------------------------------------------------------------------------------------


def test_load_64_mixed_requests_batched_vs_sequential(server, reference):
    lengths = [random.Random(i).randint(20, 110) for i in range(64)]
    docs = _documents(lengths, seed=7)
    want = [reference(d, chat=True) for d in docs]
    messages = [[{"role": "user", "content": d}] for d in docs]

    async def run(concurrency: int) -> tuple[list[str], float, list[int]]:
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)
        gate = asyncio.Semaphore(concurrency)

        async def one(m):
            async with gate:
                return await client.chat.completions.create(model=NAME, messages=m)

        start = time.perf_counter()
        out = await asyncio.gather(*(one(m) for m in messages))
        wall = time.perf_counter() - start
        return [o.choices[0].message.content for o in out], wall, [o.model_dump()["maskkv"]["batch_size"] for o in out]

    seq_answers, seq_wall, seq_sizes = asyncio.run(run(1))
    bat_answers, bat_wall, bat_sizes = asyncio.run(run(8))
    assert len(bat_answers) == len(seq_answers) == 64
    assert seq_answers == want and set(seq_sizes) == {1}
    assert bat_answers == want
    ratio = bat_wall / seq_wall
    print(f"\nload: 64 chat requests, prompt targets {min(lengths)}-{max(lengths)} tokens, sequential {seq_wall:.2f} s, "
          f"concurrency 8 {bat_wall:.2f} s, ratio {ratio:.2f}, mean batch {sum(bat_sizes) / 64:.1f}")
    assert max(bat_sizes) > 1
    assert ratio <= 0.6


# ----- shutdown (last: it stops the module's server) ---------------------------------------------------------


def test_sigterm_finishes_the_running_request_and_exits(server, reference):
    doc, = _documents([400], seed=8)
    want = reference(doc, chat=False, gen=64)
    with httpx.stream("POST", f"{server.url}/v1/completions", timeout=60,
                      json={"model": NAME, "prompt": doc, "max_tokens": 64, "stream": True}) as r:
        lines = r.iter_lines()
        first = next(lines)
        server.proc.send_signal(signal.SIGTERM)
        rest = [first, *lines]
    events = [line.removeprefix("data: ") for line in rest if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1] if json.loads(e)["choices"])
    assert text == want
    assert server.proc.wait(timeout=60) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health")


# ----- units: no server --------------------------------------------------------------------------------------


def test_request_fields_are_validated_with_openai_names():
    with pytest.raises(APIError) as info:
        parse_request(json.dumps({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).encode(),
                      ChatCompletionRequest)
    assert info.value.status == 400 and info.value.param.startswith("messages[0].content")
    with pytest.raises(APIError) as info:
        parse_request(b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["a","b","c","d","e"]}',
                      ChatCompletionRequest).stop_strings()
    assert info.value.param == "stop"
    ok = parse_request(b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": false, '
                       b'"frequency_penalty": 0}', ChatCompletionRequest)
    assert ok.messages[0].text() == "x"


def test_text_tracker_never_retracts_and_holds_back_stop_prefixes(reference):
    tok = reference.tokenizer
    ids = tok("The answer is 42 and more text", add_special_tokens=False)["input_ids"]
    tracker = TextTracker(tok, ["and more"])
    shown = ""
    for end in range(1, len(ids) + 1):
        text, complete, stopped = tracker.visible(ids[:end], final=end == len(ids))
        assert text.startswith(shown)
        shown = text
        if complete:
            break
    assert shown == "The answer is 42 " and stopped
    eos = tok.eos_token_id
    assert tracker.visible([*ids[:2], eos, *ids[2:]], final=False)[:2] == (tok.decode(ids[:2]).strip(), True)


def test_step_hook_reports_blocks_before_the_end_with_generate_tokens(reference):
    """The proxy cache policy changes nothing (tokens identical) and sees each block finish mid-decoding."""
    model, tok = reference.model, reference.tokenizer
    doc, = _documents([120], seed=9)
    ids = encode_prompt(tok, doc, chat=True)
    mask = model.config.mask_token_id
    for cache, press in ((None, None), (DLLMCache(), None), (None, make_press("snapkv", 8)),
                         (DLLMCache(), make_press("maskkv", 8))):
        finished, plans = [], []

        def on_pass(x, _p=ids.shape[1]):
            region = x[0, _p:].view(4, 8)
            finished.append(int((region != mask).all(-1).sum()))

        plain = maskkv.generate(model, ids, gen_length=32, steps=32, block_length=8, cache=cache, press=press)
        hooked = maskkv.generate(model, ids, gen_length=32, steps=32, block_length=8, press=press,
                                 cache=StepHook(cache, on_pass, plans.append))
        assert torch.equal(plain.sequences, hooked.sequences) and plain.nfe == hooked.nfe
        assert finished[0] == 0 and finished[-1] == 3 and finished == sorted(finished)
        assert finished.index(1) == 8 and finished.index(3) == 24  # block b seen done at the first pass of b + 1
        counts = kept_counts(plans[0], ids.shape[1], model.config.num_layers, model.config.num_kv_heads, 1,
                             torch.ones(1, ids.shape[1], dtype=torch.bool))
        heads = model.config.num_kv_heads
        if press is None:
            assert bool((counts == heads).all())
        else:
            assert counts.shape == (1, model.config.num_layers, ids.shape[1]) and int(counts.max()) <= heads
            kept = sum(int(k.valid.sum()) for k in plans[0].keep.values())
            assert int(counts.sum()) == kept


def test_step_hook_follows_generate_when_it_reruns_a_committed_mask(reference, monkeypatch):
    """A model that commits [MASK] makes ``generate`` re-run the call with device reads; through the proxy
    (plain model or cache) the tokens are still exactly ``generate``'s, not an error."""
    model, tok = reference.model, reference.tokenizer
    ids = encode_prompt(tok, _documents([60], seed=4)[0], chat=True)
    plain_project = type(model).project

    def project(self, hidden):  # a block's first pass proposes [MASK] with certainty at its second row
        logits = plain_project(self, hidden)
        if hidden.shape[-2] == 8:
            logits[..., 1, self.config.mask_token_id] = 1e4
        return logits

    monkeypatch.setattr(type(model), "project", project)
    for cache in (None, DLLMCache()):
        plain = maskkv.generate(model, ids, gen_length=16, steps=16, block_length=8, cache=cache)
        hooked = maskkv.generate(model, ids, gen_length=16, steps=16, block_length=8,
                                 cache=StepHook(cache, lambda x: None, lambda plan: None))
        assert torch.equal(plain.sequences, hooked.sequences)


def test_health_is_503_when_the_model_fails_to_load(tmp_path):
    """A profile made for no model fails the start-up check: /health and generation answer 503, not 200."""
    from maskkv.serve.app import ServerConfig, create_app
    from maskkv.serve.metrics import ServerMetrics
    from maskkv.serve.worker import ModelWorker, WorkerSettings

    settings = WorkerSettings(model_path=str(MODEL), profiles={"wrong": str(MODEL / "config.json")})
    worker = ModelWorker(settings, ServerMetrics())
    worker.start()
    worker._thread.join(120)
    assert worker.load_error is not None and "not a maskkv layer profile" in worker.load_error
    app = create_app(ServerConfig(worker=settings, served_model_name=NAME), worker=worker)

    async def ask() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            health = await client.get("/health")
            chat = await client.post("/v1/chat/completions",
                                     json={"model": NAME, "messages": [{"role": "user", "content": "hi"}]})
            return health, chat

    health, chat = asyncio.run(ask())
    assert health.status_code == 503 and "failed to load" in _error(health)["message"]
    assert chat.status_code == 503 and _error(chat)["type"] == "service_unavailable_error"


def test_serve_cli_rejects_bad_options_without_a_traceback(tmp_path):
    from click.testing import CliRunner

    from maskkv.cli import main

    for args, needle in ((["--press", "nope"], "unknown press 'nope'"),
                         (["--press", "maskkv", "--cache", "fast-dual"], "does not evict"),
                         (["--profile", str(tmp_path / "missing.json")], "existing profile JSON"),
                         (["--max-batch-size", "0"], "--max-batch-size must be an integer >= 1"),
                         (["--batch-wait-ms", "nan"], "--batch-wait-ms must be >= 0 and finite"),
                         (["--sse-keepalive-s", "0"], "--sse-keepalive-s must be > 0")):
        result = CliRunner().invoke(main, ["serve", "--model", str(MODEL), *args])
        assert result.exit_code == 2 and needle in result.output and "Traceback" not in result.output, result.output


@pytest.mark.parametrize("asgi_version", ["2.4", "2.3"])
def test_stream_whose_client_left_before_the_first_byte_is_cancelled_and_uncounted(asgi_version):
    """A client gone before the response starts: the job is cancelled and ``in_flight`` returns to 0.

    Starlette never starts the event generator in that case (ASGI 2.4: sending the start raises ``OSError``;
    older: the disconnect listener cancels the sender first), so the bookkeeping must not live in the generator.
    """
    from maskkv.serve.app import ServerConfig, create_app
    from maskkv.serve.metrics import ServerMetrics
    from maskkv.serve.worker import ModelWorker, WorkerSettings

    settings = WorkerSettings(model_path=str(MODEL))
    worker = ModelWorker(settings, ServerMetrics())
    worker.start()
    try:
        deadline = time.monotonic() + 120
        while not worker.ready and worker.load_error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.ready, worker.load_error
        app = create_app(ServerConfig(worker=settings, served_model_name=NAME, max_tokens=GEN, block_length=BLOCK),
                         worker=worker)
        submitted = []
        submit = worker.submit
        worker.submit = lambda job: (submitted.append(job), submit(job))[1]
        body = json.dumps({"model": NAME, "stream": True, "max_tokens": GEN,
                           "messages": [{"role": "user", "content": "hello"}]}).encode()
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": asgi_version}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
                 "query_string": b"", "root_path": "", "headers": [(b"content-type", b"application/json")],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict:
            if messages:
                return messages.pop(0)
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                await asyncio.sleep(0.05)  # the disconnect listener gets in first (ASGI < 2.4)
                raise OSError("the client has gone")

        async def call() -> None:
            try:
                await app(scope, receive, send)
            except Exception:  # noqa: BLE001 - what Starlette raises for the gone client is not the point here
                pass

        asyncio.run(call())
        assert len(submitted) == 1 and submitted[0].cancelled.is_set()
        assert app.state.metrics.in_flight._value.get() == 0
    finally:
        worker.stop()
