"""The ``--model_args`` of the lm-eval model ``maskkv``: the keys, their meaning and value parsing (no lm-eval import)."""

from __future__ import annotations

import json
from typing import Any

from ..eval.common import EvalError
from ..models.loading import WEIGHT_DTYPES as DTYPES  # noqa: F401 - the dtype names model_args accept

#: Every ``--model_args`` key and its meaning (``press_<field>`` keys come on top).
MODEL_ARGS: dict[str, str] = {
    "pretrained": "checkpoint folder or hub id (required)",
    "tokenizer": "tokenizer folder or hub id (default: pretrained)",
    "device": "cpu | cuda | cuda:N (default: cuda when available; cuda:$LOCAL_RANK under a launcher)",
    "dtype": "float32 | bfloat16 | float16 (default: float32 on CPU, bfloat16 on GPU)",
    "cache": "dllm (default) | fast-prefix | fast-dual | none",
    "press": "eviction method (maskkv, snapkv, pyramidkv, squeeze, adakv, streaming, h2o, knorm, random, "
             "sparse_dllm); none/full = keep every prompt K/V pair",
    "budget": "K/V pairs kept per head per layer (needed with press)",
    "profile": "MaskKV offline layer profile JSON (from `maskkv calibrate`)",
    "steps": "denoising steps (default: one per generated token)",
    "block_length": "semi-autoregressive block length (default 8)",
    "remasking": "LLaDA: low_confidence | random; Dream: maskgit_plus | topk_margin | entropy | origin",
    "threshold": "Fast-dLLM parallel decoding confidence threshold, e.g. 0.9",
    "cfg": "LLaDA classifier-free guidance scale for generation and likelihood (default 0)",
    "prompt_interval": "dLLM-Cache prompt refresh interval (default 50)",
    "response_interval": "dLLM-Cache response refresh interval (default 5)",
    "transfer_ratio": "dLLM-Cache V-verify share (default 0.25)",
    "rope_scaling_factor": "multiply rope_theta (LongLLaDA NTK scaling; default 1)",
    "max_length": "longest prompt + generation in tokens (default: the model's max_position_embeddings)",
    "truncation": "over-long prompts: left (default, Dream's eval) | middle (LongBench's rule) | error",
    "max_gen_toks": "generation length when a task sets none (default 256)",
    "mc_num": "Monte Carlo samples per loglikelihood request (default 128)",
    "mc_batch_size": "noisy copies per forward in loglikelihood (default: batch_size, as the references)",
    "is_check_greedy": "LLaDA: report whether the continuation is the greedy decoding (lm-eval's is_greedy, e.g. "
                       "LAMBADA accuracy; default True as LLaDA's reference; False skips its extra forwards). "
                       "Dream: always False",
    "sampling_eps": "Dream's minimum mask ratio in loglikelihood (default 1e-3)",
    "batch_size": "prompts per generation batch (lm-eval's --batch_size; 'auto' means 1)",
}
HARNESS_KEYS = ("max_batch_size", "trust_remote_code")  # passed by lm-eval; nothing to do here
TRUNCATIONS = ("left", "middle", "error")


class ModelArgsError(EvalError):
    """A bad ``--model_args`` value; the message names the key."""


def press_value(raw: Any) -> Any:
    """A press field value: lm-eval has already turned numbers and booleans into Python; JSON text is parsed."""
    if isinstance(raw, str) and raw[:1] in "[{":
        try:
            return json.loads(raw)
        except json.JSONDecodeError as err:
            raise ModelArgsError(f"press field value {raw!r} is not valid JSON ({err})") from err
    return raw


def optional(value: Any, kind: type, key: str) -> Any:
    """``kind(value)``, or None for a missing / empty / "none" value; a bad value names its key."""
    if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
        return None
    try:
        return kind(value)
    except (TypeError, ValueError) as err:
        raise ModelArgsError(f"model_args {key}={value!r} is not a valid {kind.__name__}") from err
