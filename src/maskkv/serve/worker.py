"""The model worker: one thread owns the model and decodes queued requests in batches at request boundaries.

Requests whose decode settings agree (:class:`DecodeKey`) are decoded together as one left-padded batch by
:func:`maskkv.generate`. A request's blocks are reported as soon as the sampler moves past them: the worker
hands ``generate`` a cache-policy proxy (:class:`_StepHook`) whose per-request denoiser looks at the canvas
before every forward pass, so streaming needs no hook inside the sampler and the tokens are exactly
``generate``'s. The same look at the canvas drops a batch whose clients all disconnected, and after the
first pass it reads which prompt positions the press kept (``PressPlan.keep``) for the playground.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from ..text import cut_at_stop, decode_answer, left_pad, pad_token_id, stop_token_ids
from .observe import StepHook, kept_counts
from .protocol import APIError

logger = logging.getLogger("maskkv.serve")


@dataclass(frozen=True)
class DecodeKey:
    """Everything that must agree for requests to share a batch (the sampler's and the cache's settings)."""

    gen_length: int
    steps: int
    block_length: int
    temperature: float
    remasking: str
    threshold: float | None
    top_p: float | None
    top_k: int | None
    cache: str
    press: str | None
    budget: int | None
    profile: str | None  # a profile name the server knows
    seed: int | None  # set when the result depends on the RNG (temperature > 0): such requests decode alone


@dataclass
class Job:
    """One queued request: its prompt ids and settings, and the channel back to its HTTP handler."""

    request_id: str
    prompt_ids: list[int]
    key: DecodeKey
    stops: list[str]
    kept_tokens: bool
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    sent_text: str = ""
    done: bool = False

    def send(self, kind: str, payload: Any) -> None:
        """Thread-safe: hand an event (``block``, ``done``, ``error``) to the handler's event loop."""
        if not self.cancelled.is_set():
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))


class QueueFull(Exception):
    pass


class _Abandoned(Exception):
    """Every client of the running batch went away: stop decoding it."""


class TextTracker:
    """The answer text visible after each block: cut at EOS/EOT and ``stop`` strings, never retracted.

    The final text is :func:`maskkv.text.decode_answer`'s (the same EOS/EOT cut, stripped), then cut at the
    earliest ``stop`` string. While decoding, trailing whitespace, an incomplete UTF-8 character and the start
    of a possible stop string are held back, so the streamed pieces concatenate to exactly the final answer.
    """

    def __init__(self, tokenizer: Any, stops: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.stop_ids = stop_token_ids(tokenizer)

    def answer_ids(self, ids: list[int]) -> tuple[list[int], bool]:
        """(the ids before the first EOS/EOT, whether one occurred): :func:`maskkv.text.cut_at_stop`."""
        kept = cut_at_stop(ids, self.stop_ids)
        return kept, len(kept) < len(ids)

    def visible(self, ids: list[int], final: bool) -> tuple[str, bool, bool]:
        """(text, complete, stopped): the text safe to show for generated ``ids`` so far."""
        ids, hit_eos = self.answer_ids(ids)
        text = decode_answer(self.tokenizer, ids, eos_cut=False, strip=False).lstrip()
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            return text[:cut], True, True
        if final or hit_eos:
            return text.rstrip(), True, hit_eos
        text = text.rstrip().rstrip("\ufffd")
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:n]):
                    text = text[:-n]
                    break
        return text, False, False


@dataclass
class WorkerSettings:
    """What the worker needs to load and run the model."""

    model_path: str
    device: str = "cpu"
    dtype: torch.dtype | None = None
    max_batch_size: int = 8
    max_queue: int = 256
    batch_wait_ms: float = 10.0
    max_batch_tokens: int | None = None  # rows x padded prompt length of one batch
    profiles: dict[str, str] = field(default_factory=dict)  # name -> path


class ModelWorker:
    """Owns the model on one device; decodes jobs from a bounded queue in batches of agreeing settings."""

    def __init__(self, settings: WorkerSettings, metrics: Any) -> None:
        self.settings = settings
        self.metrics = metrics
        self.model: Any = None
        self.tokenizer: Any = None
        self.load_error: str | None = None
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._running: list[Job] = []
        self._thread = threading.Thread(target=self._main, name="maskkv-model-worker", daemon=True)
        self.pad_id: int | None = None
        self._generation: dict[tuple, tuple[Any, Any]] = {}  # (cache, press, budget, profile) -> (config, press)

    # ----- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def ready(self) -> bool:
        return self.model is not None and self._thread.is_alive() and not self._stopping

    def load(self) -> None:
        """Load the model and tokenizer (in the worker thread; ``/health`` is 503 until this finishes)."""
        from .. import load_model, load_tokenizer

        self.model = None
        model = load_model(self.settings.model_path, device=self.settings.device, dtype=self.settings.dtype)
        self.tokenizer = load_tokenizer(self.settings.model_path)
        self.pad_id = pad_token_id(model.config, self.tokenizer)
        from ..presses.profile import load_profile

        for path in self.settings.profiles.values():
            load_profile(path, model.config)  # a profile made for another model fails here, not per request
        self.model = model

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs, fail the queued ones with 503, let the running batch finish, join the thread."""
        with self._cond:
            self._stopping = True
            queued = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in queued:
            job.send("error", APIError(503, "the server is shutting down; the request was not started",
                                       code="shutting_down"))
        self._thread.join(timeout)
        for job in self._running:
            job.send("error", APIError(503, "the server shut down before this request finished", code="shutting_down"))

    def submit(self, job: Job) -> None:
        """Queue ``job``; a cache/press setting the evaluations' ``GenerationConfig`` refuses is a 400 here."""
        self.generation(job.key)
        with self._cond:
            if self._stopping:
                raise APIError(503, "the server is shutting down", code="shutting_down")
            if len(self._queue) >= self.settings.max_queue:
                raise APIError(503, f"The request queue is full ({self.settings.max_queue} requests); retry later",
                               code="queue_full")
            self._queue.append(job)
            self.metrics.queue_depth.set(len(self._queue))
            self._cond.notify_all()

    def queue_depth(self) -> int:
        return len(self._queue)

    # ----- the loop -----------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self.load()
        except Exception:  # noqa: BLE001 - reported by /health and the log
            self.load_error = traceback.format_exc()
            logger.error("model load failed:\n%s", self.load_error)
            return
        logger.info("model loaded from %s", self.settings.model_path)
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._running = batch
            try:
                self._decode(batch)
            except Exception:  # noqa: BLE001 - each client gets a 500 with its request id, the log the traceback
                logger.error("decoding failed for requests %s:\n%s", [j.request_id for j in batch],
                             traceback.format_exc())
                for job in batch:
                    job.send("error", APIError(500, f"internal error while decoding; request id {job.request_id} "
                                                    "(the traceback is in the server log)", code="internal_error"))
            finally:
                self._running = []

    def _take(self, key: DecodeKey, batch: list[Job]) -> None:
        """Move queued jobs with ``key`` into ``batch`` (in arrival order) while the limits allow."""
        limit = self.settings.max_batch_size if key.seed is None else 1
        budget = self.settings.max_batch_tokens
        for job in list(self._queue):
            if len(batch) >= limit:
                break
            if job.cancelled.is_set():
                self._queue.remove(job)
                continue
            if job.key != key:
                continue
            if budget and batch:
                longest = max(len(job.prompt_ids), *(len(j.prompt_ids) for j in batch))
                if (len(batch) + 1) * longest > budget:
                    break
            self._queue.remove(job)
            batch.append(job)

    def _next_batch(self) -> list[Job] | None:
        """Wait for work, then take what is queued with the first job's settings; wait up to --batch-wait-ms."""
        with self._cond:
            while True:
                while self._queue and self._queue[0].cancelled.is_set():
                    self._queue.popleft()
                if self._stopping:
                    return None
                if self._queue:
                    break
                self._cond.wait()
            key = self._queue[0].key
            batch: list[Job] = []
            self._take(key, batch)
            deadline = time.perf_counter() + self.settings.batch_wait_ms / 1000
            limit = self.settings.max_batch_size if key.seed is None else 1
            while len(batch) < limit and not self._stopping:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
                self._take(key, batch)
            self.metrics.queue_depth.set(len(self._queue))
            return batch

    def generation(self, key: DecodeKey) -> tuple[Any, Any]:
        """``(GenerationConfig, press)`` of a batch key's cache and press settings.

        Caches and presses are built on the evaluations' one path, :class:`maskkv.eval.common.GenerationConfig`
        (``make_cache()`` per batch; the press once per setting, then reused). A value it refuses is an
        :class:`APIError` 400 naming the request field (``maskkv.<field>``). Sampler settings (steps, block
        length, temperature) are checked where the key is made and reach ``generate`` from the key itself.
        """
        from ..eval.common import EvalError, GenerationConfig

        setting = (key.cache, key.press, key.budget, key.profile)
        if setting not in self._generation:
            options = {"profile": self.settings.profiles[key.profile]} if key.profile else {}
            try:
                gen = GenerationConfig(cache=key.cache, press=key.press, budget=key.budget, press_options=options)
            except EvalError as err:
                raise APIError(400, str(err), param=f"maskkv.{err.field or 'press'}", code="invalid_value") from None
            self._generation[setting] = (gen, gen.make_press())
        return self._generation[setting]

    def _decode(self, batch: list[Job]) -> None:
        """Decode one batch with ``generate``; send each job its blocks, then its result (or an error)."""
        from .. import generate

        batch = [job for job in batch if not job.cancelled.is_set()]
        if not batch:
            return
        key = batch[0].key
        model, config = self.model, self.model.config
        device = self.model.embed_tokens.weight.device
        lengths = [len(job.prompt_ids) for job in batch]
        rows = len(batch)
        ids, attention_mask = left_pad([job.prompt_ids for job in batch], self.pad_id)
        prompt_length = ids.shape[1]
        valid = torch.ones(rows, prompt_length, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if attention_mask is not None:
            attention_mask = attention_mask.to(device)
        trackers = [TextTracker(self.tokenizer, job.stops) for job in batch]
        blocks_done = 0
        first_block_at: list[float | None] = [None] * rows
        num_blocks = key.gen_length // key.block_length
        kept: dict[str, Any] = {}
        start = time.perf_counter()
        self.metrics.batch_size.observe(rows)
        self.metrics.running.set(rows)

        def emit_blocks(canvas: torch.Tensor, final: bool) -> None:
            nonlocal blocks_done
            end = blocks_done
            region = canvas[:, prompt_length:]
            while end < num_blocks:
                if not final and bool((region[:, end * key.block_length:(end + 1) * key.block_length]
                                       == config.mask_token_id).any()):
                    break
                end += 1
            if end == blocks_done and not final:
                return
            blocks_done = end
            generated = region[:, : end * key.block_length].tolist()
            now = time.perf_counter()
            for row, job in enumerate(batch):
                if job.done or job.cancelled.is_set():
                    continue
                if first_block_at[row] is None:
                    first_block_at[row] = now
                text, complete, _ = trackers[row].visible(generated[row], final)
                if text.startswith(job.sent_text) and len(text) > len(job.sent_text):
                    job.send("block", text[len(job.sent_text):])
                    job.sent_text = text
                if complete:
                    job.done = True  # an early EOS or stop string: nothing more to stream for this job

        def on_pass(canvas: torch.Tensor) -> None:
            if all(job.cancelled.is_set() for job in batch):
                raise _Abandoned
            emit_blocks(canvas, final=False)

        def on_first_pass(plan: Any) -> None:
            if plan is not None and plan.keep:  # kept pairs per row, summed over layers and heads (one transfer)
                kept["pairs"] = torch.stack([k.valid.sum((1, 2)) for k in plan.keep.values()]).sum(0).tolist()
            if any(job.kept_tokens for job in batch):
                kept["counts"] = kept_counts(plan, prompt_length, config.num_layers, config.num_kv_heads, rows,
                                             valid)

        gen, press = self.generation(key)
        policy = StepHook(gen.make_cache(), on_pass, on_first_pass)
        try:
            if key.seed is not None:
                torch.manual_seed(key.seed)
            elif key.temperature > 0 or key.remasking in ("random", "origin"):
                torch.seed()  # no seed given: a fresh random stream per batch
            out = generate(model, ids.to(device), attention_mask=attention_mask, gen_length=key.gen_length,
                           steps=key.steps, block_length=key.block_length, temperature=key.temperature,
                           remasking=key.remasking, threshold=key.threshold, top_p=key.top_p, top_k=key.top_k,
                           cache=policy, press=press)
            emit_blocks(out.sequences, final=True)
        except _Abandoned:
            logger.info("batch of %d dropped: every client disconnected", rows)
            return
        finally:
            self.metrics.running.set(0)
        seconds = time.perf_counter() - start
        generated = out.sequences[:, prompt_length:].tolist()
        cache_bytes = out.cache_bytes or {}
        if cache_bytes.get("peak"):
            self.metrics.cache_bytes.set(cache_bytes["peak"])
        counts = kept.get("counts")
        heads_layers = config.num_layers * config.num_kv_heads
        for row, job in enumerate(batch):
            answer_ids, hit_eos = trackers[row].answer_ids(generated[row])
            text, _, stopped = trackers[row].visible(generated[row], final=True)
            share = 1.0 if "pairs" not in kept else kept["pairs"][row] / (heads_layers * lengths[row])
            result: dict[str, Any] = {
                "text": text,
                "finish_reason": "stop" if stopped else "length",
                "prompt_tokens": lengths[row],
                "completion_tokens": key.gen_length,
                "answer_tokens": len(answer_ids),
                "nfe": out.nfe,
                "seconds": seconds,
                "queue_seconds": start - job.submitted,
                "first_block_seconds": None if first_block_at[row] is None else first_block_at[row] - job.submitted,
                "kept_prompt_share": share,
                "batch_size": rows,
                "cache_bytes": cache_bytes.get("peak"),
            }
            if job.kept_tokens and counts is not None:
                real = job.prompt_ids
                result["kept"] = {
                    "tokens": self.tokenizer.batch_decode([[t] for t in real]),
                    "counts": counts[row, :, prompt_length - lengths[row]:].T.tolist(),  # [P, D]
                    "layers": config.num_layers,
                    "heads": config.num_kv_heads,
                }
            self.metrics.observe_result(result, has_press=key.press is not None)
            job.send("done", result)
