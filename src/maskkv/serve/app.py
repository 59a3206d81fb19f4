"""The FastAPI app of ``maskkv serve``: OpenAI-compatible endpoints, SSE streaming, health, metrics, playground."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .metrics import ServerMetrics
from .protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    error_body,
    parse_request,
)
from .worker import DecodeKey, Job, ModelWorker, WorkerSettings

logger = logging.getLogger("maskkv.serve")


@dataclass
class ServerConfig:
    """The server's defaults (the ``maskkv serve`` options); requests override them per call."""

    worker: WorkerSettings
    served_model_name: str
    cache: str = "dllm"
    press: str | None = None
    budget: int = 256
    profile: str | None = None  # default profile name (a key of worker.profiles)
    max_tokens: int = 64
    block_length: int = 32
    steps: int | None = None  # None: one step per generated token
    remasking: str | None = None  # None: the family's default (LLaDA low_confidence, Dream maskgit_plus)
    max_prompt_tokens: int | None = None
    keepalive_s: float = 10.0
    created: int = field(default_factory=lambda: int(time.time()))


class _RequestIds:
    """ASGI middleware: a request id per HTTP request (``x-request-id``) and the requests counter by status."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:24]
        scope.setdefault("state", {})["request_id"] = request_id
        status = {"code": 500}

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.requests.labels(endpoint=scope.get("path", ""), status=str(status["code"])).inc()


def _sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def create_app(config: ServerConfig, worker: ModelWorker | None = None) -> FastAPI:
    """The app; the model worker starts with the app's lifespan and stops (finishing its batch) at shutdown."""
    metrics = ServerMetrics()
    worker = worker or ModelWorker(config.worker, metrics)
    worker.metrics = metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        yield
        await asyncio.to_thread(worker.stop)

    app = FastAPI(title="maskkv serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_RequestIds, metrics=metrics)
    app.state.worker = worker
    app.state.metrics = metrics
    app.state.config = config
    static = resources.files("maskkv.serve") / "static"
    if static.is_dir():
        app.mount("/static", StaticFiles(directory=str(static)), name="static")

    # ----- errors in OpenAI's shape -----------------------------------------------------------

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": str(err)}
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        return JSONResponse(error_body(f"{param}: {first['msg']}", "invalid_request_error", param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        message = f"no route {request.method} {request.url.path}" if err.status_code in (404, 405) else str(err.detail)
        return JSONResponse(error_body(message, kind), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, err: Exception) -> JSONResponse:
        request_id = request.scope.get("state", {}).get("request_id", "?")
        logger.exception("internal error in request %s", request_id)
        message = f"internal server error; request id {request_id} (the traceback is in the server log)"
        return JSONResponse(error_body(message, "internal_server_error", code="internal_error"), status_code=500)

    # ----- plain endpoints --------------------------------------------------------------------

    @app.get("/health")
    async def health() -> Response:
        if worker.ready:
            return JSONResponse({"status": "ok"})
        if worker.load_error is not None:
            reason = "the model failed to load (see the server log)"
        elif worker.model is None:
            reason = "the model is loading"
        else:
            reason = "the model worker is not running"
        return JSONResponse(error_body(reason, "service_unavailable_error"), status_code=503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        metrics.queue_depth.set(worker.queue_depth())
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": config.served_model_name, "object": "model", "created": config.created, "owned_by": "maskkv",
                "root": config.worker.model_path}
        if worker.model is not None:
            card["max_model_len"] = getattr(worker.model.config, "max_position_embeddings", None)
        return {"object": "list", "data": [card]}

    @app.get("/maskkv/config")
    async def playground_config() -> dict[str, Any]:
        """What the playground needs: the served name, the presses and the server's defaults."""
        from ..presses import PRESSES

        return {"model": config.served_model_name, "presses": sorted(PRESSES), "press": config.press,
                "budget": config.budget, "max_tokens": config.max_tokens, "profiles": sorted(config.worker.profiles)}

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        page = resources.files("maskkv.serve") / "static" / "index.html"
        if not page.is_file():
            raise APIError(404, "the playground page is not installed")
        return HTMLResponse(page.read_text(encoding="utf-8"))

    # ----- generation ---------------------------------------------------------------------------

    async def _start(request: Request, req: Any, prompt_ids: list[int], param: str) -> Job:
        limit = config.max_prompt_tokens
        if limit is not None and len(prompt_ids) > limit:
            raise APIError(400, f"the prompt has {len(prompt_ids)} tokens, more than this server's "
                                f"--max-prompt-tokens {limit}", param=param, code="context_length_exceeded")
        if worker.model.config.mask_token_id in prompt_ids:
            raise APIError(400, "the prompt contains the model's mask token; remove it (infilling is not supported)",
                           param=param)
        key = resolve_decode_key(req, config, worker)
        job = Job(request_id=request.scope["state"]["request_id"], prompt_ids=prompt_ids, key=key,
                  stops=req.stop_strings(), kept_tokens=req.maskkv.kept_tokens, loop=asyncio.get_running_loop())
        worker.submit(job)
        return job

    def _check(req: Any) -> None:
        if req.model != config.served_model_name:
            raise APIError(404, f"The model `{req.model}` does not exist.", param="model", code="model_not_found")
        if not worker.ready:
            raise APIError(503, "the model is not ready (loading, failed or shutting down); see /health")
        if req.n != 1:
            raise APIError(400, f"n={req.n}: maskkv serve returns one choice per request; send n=1", param="n")
        if req.stream_options is not None and not req.stream:
            raise APIError(400, "stream_options is only allowed with stream=true", param="stream_options")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        from ..text import encode_messages

        req = parse_request(await request.body(), ChatCompletionRequest)
        _check(req)
        # `name` goes to the chat template as OpenAI defines it (templates that have no use for it ignore it)
        messages = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})}
                    for m in req.messages]
        try:
            ids = encode_messages(worker.tokenizer, messages)[0].tolist()
        except ValueError as err:
            raise APIError(400, str(err), param="messages") from None
        job = await _start(request, req, ids, "messages")
        return await _respond(request, req, job, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        from ..text import encode_prompt

        req = parse_request(await request.body(), CompletionRequest)
        _check(req)
        try:
            ids = encode_prompt(worker.tokenizer, req.prompt_text(), chat=False)[0].tolist()
        except ValueError as err:
            raise APIError(400, str(err), param="prompt") from None
        job = await _start(request, req, ids, "prompt")
        return await _respond(request, req, job, chat=False)

    async def _respond(request: Request, req: Any, job: Job, *, chat: bool) -> Response:
        prefix = "chatcmpl-" if chat else "cmpl-"
        head = {"id": prefix + job.request_id, "created": int(time.time()), "model": config.served_model_name}
        if req.stream:
            return _JobStream(job, metrics, _stream(job, req, head, chat))
        metrics.in_flight.inc()
        try:
            result = await _wait_result(request, job)
        finally:
            metrics.in_flight.dec()
        if result is None:  # the client went away
            return Response(status_code=499)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": result["text"]},
                      "finish_reason": result["finish_reason"], "logprobs": None}
            body = {**head, "object": "chat.completion", "choices": [choice]}
        else:
            choice = {"index": 0, "text": result["text"], "finish_reason": result["finish_reason"], "logprobs": None}
            body = {**head, "object": "text_completion", "choices": [choice]}
        body["usage"] = _usage(result)
        body["maskkv"] = _maskkv_info(result, job.key)
        return JSONResponse(body)

    async def _wait_result(request: Request, job: Job) -> dict[str, Any] | None:
        """The job's result; None (and the job cancelled) when the client disconnects first."""
        try:
            while True:
                try:
                    kind, payload = await asyncio.wait_for(job.events.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        job.cancelled.set()
                        return None
                    continue
                if kind == "done":
                    return payload
                if kind == "error":
                    raise payload
        except asyncio.CancelledError:
            job.cancelled.set()
            raise

    async def _stream(job: Job, req: Any, head: dict[str, Any], chat: bool) -> AsyncIterator[str]:
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, finish: str | None = None, first: bool = False) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
                if text:
                    delta["content"] = text
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            return {**head, "object": obj, "choices": [choice]}

        try:
            if chat:
                yield _sse(chunk(None, first=True))
            while True:
                try:
                    kind, payload = await asyncio.wait_for(job.events.get(), timeout=config.keepalive_s)
                except asyncio.TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if kind == "block":
                    yield _sse(chunk(payload))
                elif kind == "done":
                    final = chunk(None, finish=payload["finish_reason"])
                    final["maskkv"] = _maskkv_info(payload, job.key)
                    yield _sse(final)
                    if req.stream_options is not None and req.stream_options.include_usage:
                        yield _sse({**head, "object": obj, "choices": [], "usage": _usage(payload)})
                    break
                else:
                    err = payload if isinstance(payload, APIError) else APIError(500, str(payload))
                    yield _sse(err.body())
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled.set()  # a no-op after "done"; stops the job if the client went away

    return app


class _JobStream(StreamingResponse):
    """An SSE response that owns its job: counted in flight while it is sent, and the job cancelled when it ends.

    The bookkeeping lives here, not in the event generator, because a client that goes away before the first byte
    ends the response before the generator ever starts, and an unstarted generator runs no ``finally``.
    """

    def __init__(self, job: Job, metrics: ServerMetrics, events: AsyncIterator[str]) -> None:
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.job = job
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.metrics.in_flight.inc()
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancelled.set()  # a no-op after "done"; stops the job if the client went away
            self.metrics.in_flight.dec()


def _usage(result: dict[str, Any]) -> dict[str, int]:
    return {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"],
            "total_tokens": result["prompt_tokens"] + result["completion_tokens"]}


def _maskkv_info(result: dict[str, Any], key: DecodeKey) -> dict[str, Any]:
    info = {
        "nfe": result["nfe"], "seconds": round(result["seconds"], 6), "queue_seconds": round(result["queue_seconds"], 6),
        "kept_prompt_share": result["kept_prompt_share"], "batch_size": result["batch_size"],
        "answer_tokens": result["answer_tokens"], "gen_length": key.gen_length, "steps": key.steps,
        "block_length": key.block_length, "cache": key.cache, "press": key.press, "budget": key.budget,
        "profile": key.profile, "cache_bytes": result["cache_bytes"],
    }
    if "kept" in result:
        info["kept"] = result["kept"]
    return info


def resolve_decode_key(req: Any, config: ServerConfig, worker: ModelWorker) -> DecodeKey:
    """The batch key of a request: the server's defaults overridden by the request; 400s name the field."""
    from ..eval.common import EvalError, GenerationConfig
    from ..presses import PRESSES
    from ..sampling.confidence import LLADA_REMASKING
    from ..sampling.generate import DREAM_ALGS, DREAM_ALIASES

    opts = req.maskkv
    family = worker.model.config.family
    max_tokens = req.generation_tokens() or config.max_tokens
    block_length = opts.block_length or config.block_length
    try:
        gen_length, steps, block_length = GenerationConfig(
            steps=opts.steps or config.steps, block_length=block_length, cache="none"
        ).lengths(max_tokens)
    except EvalError as err:
        param = "max_tokens" if err.field == "gen_length" else f"maskkv.{err.field or 'steps'}"
        raise APIError(400, str(err), param=param) from None
    temperature = 0.0 if req.temperature is None else float(req.temperature)
    if family == "llada":
        remasking = opts.remasking or config.remasking or "low_confidence"
        if remasking not in LLADA_REMASKING:
            raise APIError(400, f"remasking {remasking!r} is not a LLaDA strategy; use one of {LLADA_REMASKING}",
                           param="maskkv.remasking")
        for name, off in (("top_p", 1), ("top_k", 0)):  # the values that filter nothing are accepted
            if getattr(req, name) not in (None, off):
                raise APIError(400, f"`{name}` applies to Dream models only; LLaDA's sampler has no {name}",
                               param=name, code="unsupported_parameter")
        top_p = top_k = None
    else:
        remasking = opts.remasking or config.remasking or "maskgit_plus"
        if DREAM_ALIASES.get(remasking, remasking) not in DREAM_ALGS:
            raise APIError(400, f"remasking {remasking!r} is not a Dream strategy; use one of {DREAM_ALGS}",
                           param="maskkv.remasking")
        if opts.threshold is not None and DREAM_ALIASES.get(remasking, remasking) not in ("maskgit_plus", "topk_margin"):
            raise APIError(400, "threshold decoding needs remasking maskgit_plus or topk_margin",
                           param="maskkv.threshold")
        top_p, top_k = req.top_p, req.top_k
    cache = opts.cache or config.cache
    press = config.press if opts.press is None else (None if opts.press == "none" else opts.press)
    budget = opts.budget or config.budget
    if press is not None and press not in PRESSES:
        raise APIError(400, f"unknown press {press!r}; choose one of {sorted(PRESSES)} or 'none'",
                       param="maskkv.press")
    profiles = config.worker.profiles
    profile = opts.profile
    if profile is not None:
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none were given (--profile NAME=PATH)"
            raise APIError(400, f"unknown profile {profile!r}; this server's profiles: {known}",
                           param="maskkv.profile")
        if press != "maskkv":
            raise APIError(400, "a profile applies to the maskkv press only", param="maskkv.profile")
    elif press == "maskkv":
        profile = config.profile
    if press is None:
        budget = None
        profile = None
    needs_rng = temperature > 0 or remasking in ("random", "origin")
    return DecodeKey(gen_length=gen_length, steps=steps, block_length=block_length, temperature=temperature,
                     remasking=remasking, threshold=opts.threshold, top_p=top_p, top_k=top_k, cache=cache,
                     press=press, budget=budget, profile=profile,
                     seed=req.seed if needs_rng and req.seed is not None else None)
