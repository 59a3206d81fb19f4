"""OpenAI-shaped request parsing, responses and errors of ``maskkv serve`` (``serving.md``).

Requests are validated here, before anything is queued: a field the server does not implement is a 400
naming it (never silently ignored), a bad value is a 400 naming the field (not FastAPI's 422), and
maskkv's own knobs travel in one ``maskkv`` object (clients send it with ``extra_body={"maskkv": {...}}``).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


# OpenAI fields that maskkv does not implement, with the values that mean "off" (accepted: they change nothing).
UNSUPPORTED_FIELDS: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "parallel_tool_calls": (None,),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0),
    "logit_bias": (None, {}),
    "response_format": (None, {"type": "text"}),
    "best_of": (None, 1),
    "echo": (None, False),
    "suffix": (None, ""),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
}


class APIError(Exception):
    """An error returned to the client in OpenAI's shape ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind or _ERROR_TYPES.get(status, "server_error")

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, self.param, self.code)


_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 503: "service_unavailable_error",
                500: "internal_server_error"}


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The JSON body of an OpenAI error."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MaskKVOptions(_Strict):
    """maskkv's own knobs of one request (``extra_body={"maskkv": {...}}``); None = the server's default."""

    press: str | None = None  # a press name, or "none" to turn the server's default press off
    budget: int | None = Field(default=None, ge=1)
    profile: str | None = None  # a profile name the server was given (--profile NAME=PATH), never a path
    cache: Literal["none", "dllm", "fast-prefix", "fast-dual"] | None = None
    steps: int | None = Field(default=None, ge=1)
    block_length: int | None = Field(default=None, ge=1)
    threshold: float | None = Field(default=None, gt=0, le=1)
    remasking: str | None = None
    kept_tokens: bool = False  # return the per-layer kept counts of every prompt token (the playground)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)  # Dream only; 0 = no top-k filter, None = the reference's 50
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1)
    user: str | None = None  # an end-user id: recorded nowhere, changes nothing
    maskkv: MaskKVOptions = Field(default_factory=MaskKVOptions)

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise APIError(400, f"stop has {len(stops)} strings; at most 4 are allowed", param="stop")
        if any(not s for s in stops):
            raise APIError(400, "stop strings must not be empty", param="stop")
        return stops


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def generation_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str]

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise APIError(400, f"prompt holds {len(self.prompt)} strings; send one prompt per request",
                           param="prompt")
        return self.prompt[0]

    def generation_tokens(self) -> int | None:
        return self.max_tokens


def parse_request(raw: bytes, model_type: type[_Sampling]) -> Any:
    """Parse a JSON body into ``model_type``; every problem is an :class:`APIError` 400 naming the field."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise APIError(400, f"the request body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    for name, off_values in UNSUPPORTED_FIELDS.items():
        if name in body and body[name] not in off_values:
            raise APIError(400, f"`{name}` is not supported by maskkv serve (a diffusion LLM server); "
                                "remove the field", param=name, code="unsupported_parameter")
        body.pop(name, None)
    try:
        return model_type.model_validate(body)
    except ValidationError as err:
        first = err.errors()[0]
        param = _clean_param(first["loc"])
        if first["type"] == "extra_forbidden":
            message = f"`{param}` is not a field of this endpoint (maskkv's own options go in the `maskkv` object)"
            raise APIError(400, message, param=param, code="unknown_parameter") from None
        if first["type"] == "missing":
            raise APIError(400, f"`{param}` is required", param=param, code="missing_required_parameter") from None
        raise APIError(400, f"`{param}`: {first['msg']}", param=param, code="invalid_value") from None


def _clean_param(loc: tuple[Any, ...]) -> str:
    """``('messages', 0, 'content', 'str')`` -> ``messages[0].content`` (pydantic's union branch names dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[TextPart]", "list[str]", "bool", "int", "float") or "[" in str(part):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out
