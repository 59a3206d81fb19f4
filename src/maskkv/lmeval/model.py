"""The lm-evaluation-harness model ``maskkv``: any lm-eval task on LLaDA / Dream with maskkv's caches and presses.

Importing this module registers the model with lm-eval (``import maskkv`` does not). ``maskkv lm-eval ARGS``
imports it and runs lm-eval's own command line; from Python, pass a :class:`MaskKVLM` to
``lm_eval.simple_evaluate(model=...)``.

- ``generate_until``: requests with the same generation settings are sorted longest first and generated in
  batches of ``batch_size`` with left padding (``maskkv.generate`` with an attention mask). The generation length
  is the task's ``max_gen_toks`` rounded up to the block length; steps are one per token unless ``steps`` is given.
  The answer is cut at the first EOS/EOT token, decoded without special tokens, then cut at the earliest ``until``
  string. Greedy unless the task sets ``do_sample`` (then its ``temperature``, default 1).
- ``loglikelihood``: each family's reference Monte Carlo estimator (:mod:`maskkv.lmeval.likelihood`), with the
  reference's tokenisation of (context, continuation). ``is_greedy``: LLaDA checks it as its reference does by
  default (``is_check_greedy=True``: one forward per continuation token); Dream's reference never does (False).
- ``loglikelihood_rolling``: not defined for masked diffusion models; raises with an explanation.
- Data parallel: under ``accelerate launch`` or ``torchrun`` each process joins a gloo group and lm-eval
  shards the requests by ``rank`` / ``world_size``; ``cuda`` becomes ``cuda:$LOCAL_RANK``.

model_args (``--model_args key=value,...``, or lm-eval's JSON form): see :data:`MODEL_ARGS`; press fields are
``press_<field>=value`` (e.g. ``press_kernel_size=5`` for SnapKV; list values need the JSON form).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from ..eval.common import (
    CACHE_KINDS,
    DistInfo,
    EvalError,
    GenerationConfig,
    init_process_group,
)
from ..text import decode_answer, left_pad, pad_token_id
from .likelihood import dream_loglikelihood, llada_is_greedy, llada_loglikelihood
from .model_args import DTYPES, HARNESS_KEYS, MODEL_ARGS, TRUNCATIONS, ModelArgsError, optional, press_value

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Request:
    """The generation settings of one ``generate_until`` request (requests sharing them share batches)."""

    gen_length: int
    temperature: float
    until: tuple[str, ...]
    top_p: float | None
    top_k: int | None


@register_model("maskkv")
class MaskKVLM(LM):
    """lm-eval model over :func:`maskkv.generate` and the families' Monte Carlo likelihoods (module docstring)."""

    def __init__(self, pretrained: str | None = None, **kwargs: Any) -> None:
        super().__init__()
        if not pretrained:
            raise ModelArgsError("model_args needs pretrained=<checkpoint folder or hub id>")
        press_options = {k.removeprefix("press_"): press_value(v) for k, v in kwargs.items() if k.startswith("press_")}
        args = {k: v for k, v in kwargs.items() if not k.startswith("press_") and k not in HARNESS_KEYS}
        unknown = sorted(set(args) - set(MODEL_ARGS))
        if unknown:
            raise ModelArgsError(f"unknown model_args {', '.join(unknown)}; valid keys: {', '.join(MODEL_ARGS)} "
                                 "and press_<field> for press options")
        get = args.get

        self._dist = DistInfo.from_env()
        if self._dist.distributed:
            if not init_process_group(self._dist, timeout_s=86400.0):
                raise ModelArgsError("RANK/WORLD_SIZE are set but MASTER_ADDR is not: launch data-parallel runs with "
                                     "`accelerate launch` or `torchrun`")
            self._rank, self._world_size = self._dist.rank, self._dist.world_size
        self._device = torch.device(self._resolve_device(get("device")))
        dtype = optional(get("dtype"), str, "dtype")
        if dtype is not None and dtype not in DTYPES:
            raise ModelArgsError(f"model_args dtype={dtype!r}: use one of {', '.join(DTYPES)}")

        cache = optional(get("cache", "dllm"), str, "cache") or "none"  # lm-eval parses "none" to None
        if cache not in CACHE_KINDS:
            raise ModelArgsError(f"model_args cache={cache!r}: use one of {', '.join(CACHE_KINDS)}")
        press = optional(get("press"), str, "press")
        press = None if press in (None, "full") else press
        profile = optional(get("profile"), str, "profile")
        if profile is not None:
            press_options["profile"] = profile
        try:
            self.gen = GenerationConfig(
                steps=optional(get("steps"), int, "steps"),
                block_length=optional(get("block_length", 8), int, "block_length"),
                remasking=str(get("remasking", "low_confidence")),
                cache=cache,
                prompt_interval=int(get("prompt_interval", 50)),
                response_interval=int(get("response_interval", 5)),
                transfer_ratio=float(get("transfer_ratio", 0.25)),
                press=press,
                budget=optional(get("budget"), int, "budget"),
                press_options=press_options,
            )
            self.gen.make_press()  # validates the press fields now, not at the first request
        except (EvalError, TypeError, ValueError) as err:
            raise ModelArgsError(f"model_args: {err}") from err
        self.threshold = optional(get("threshold"), float, "threshold")
        self.cfg = float(get("cfg", 0.0))
        self.truncation = str(get("truncation", "left"))
        if self.truncation not in TRUNCATIONS:
            raise ModelArgsError(f"model_args truncation={self.truncation!r}: use one of {', '.join(TRUNCATIONS)}")
        self.default_gen_toks = int(get("max_gen_toks", 256))
        self.mc_num = int(get("mc_num", 128))
        self._batch_size = self._parse_batch_size(get("batch_size", 1))
        self.mc_batch_size = optional(get("mc_batch_size"), int, "mc_batch_size") or self._batch_size
        self.sampling_eps = float(get("sampling_eps", 1e-3))
        if self.mc_num < 1 or self.mc_batch_size < 1:
            raise ModelArgsError(f"model_args mc_num={self.mc_num} and mc_batch_size={self.mc_batch_size} must be >= 1")

        from ..models.loading import load_model
        from ..models.tokenizer import load_tokenizer

        self.pretrained = str(pretrained)
        self.tokenizer = load_tokenizer(str(get("tokenizer") or pretrained))
        self.model = load_model(self.pretrained, device=self._device, dtype=DTYPES[dtype] if dtype else None,
                                rope_scaling_factor=float(get("rope_scaling_factor", 1.0)))
        self.family = self.model.config.family
        self._check_remasking()
        self.check_greedy = self._parse_check_greedy(get("is_check_greedy"))
        self.max_length = int(get("max_length") or self.model.config.max_position_embeddings)
        self.pad_id = pad_token_id(self.model.config, self.tokenizer)

    def _parse_check_greedy(self, value: Any) -> bool:
        """``is_check_greedy``: unset means the family reference's default (LLaDA True, Dream False)."""
        if value is None:
            return self.family == "llada"
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ModelArgsError(f"model_args is_check_greedy={value!r}: use True or False")
            value = value.lower() in ("true", "1")
        if bool(value) and self.family != "llada":
            raise ModelArgsError("model_args is_check_greedy=True: Dream's reference evaluator never checks greedy "
                                 "decoding (is_greedy is always False); leave it unset for Dream")
        return bool(value)

    def _check_remasking(self) -> None:
        from ..sampling.confidence import LLADA_REMASKING
        from ..sampling.generate import DREAM_ALGS, DREAM_ALIASES

        remasking = self.gen.remasking
        valid = LLADA_REMASKING if self.family == "llada" else (*DREAM_ALGS, *DREAM_ALIASES)
        if remasking not in valid:
            raise ModelArgsError(f"model_args remasking={remasking!r} is not valid for a {self.family} model; "
                                 f"use one of {', '.join(valid)}")

    # ----- lm-eval plumbing ----------------------------------------------------------------------

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> MaskKVLM:
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> MaskKVLM:
        """``model_args`` win over the harness's ``--device`` / ``--batch_size`` (whose defaults are always sent)."""
        merged = {k: v for k, v in (additional_config or {}).items() if v is not None}
        merged.update(arg_dict)
        return cls(**merged)

    def _resolve_device(self, requested: Any) -> str:
        device = str(requested) if requested else ("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            logger.warning("maskkv: device %s requested but CUDA is not available; using cpu", device)
            return "cpu"
        if self._dist.distributed and device.startswith("cuda"):
            return f"cuda:{self._dist.local_rank}"
        return device

    @staticmethod
    def _parse_batch_size(value: Any) -> int:
        if isinstance(value, str) and value.startswith("auto"):
            logger.warning("maskkv: batch_size=%s is not supported; using 1", value)
            return 1
        size = optional(value, int, "batch_size") or 1
        if size < 1:
            raise ModelArgsError(f"batch_size={size} must be >= 1")
        return size

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", self.pretrained)).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        template = getattr(self.tokenizer, "chat_template", None)
        return template if isinstance(template, str) else json.dumps(template) if template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ModelArgsError(f"--apply_chat_template: the tokenizer of {self.pretrained} has no chat template")
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    def tok_encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """Token ids of ``text``; special tokens are added unless it already starts with BOS (a chat template)."""
        if add_special_tokens is None:
            bos = self.tokenizer.bos_token
            add_special_tokens = not (bos and text.startswith(bos))
        return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    def tok_decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size <= 1:
            return tensor
        local = tensor.detach().cpu().reshape(-1)
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, local)
        return torch.cat(parts)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        if self.world_size <= 1:
            return [obj]
        result = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj, result, dst=dst)
        return result

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    # ----- generation ------------------------------------------------------------------------------

    def _request_settings(self, gen_kwargs: dict[str, Any]) -> _Request:
        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        max_gen = int(kwargs.pop("max_gen_toks", None) or self.default_gen_toks)
        do_sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 1.0 if do_sample else 0.0) or 0.0)
        top_p, top_k = kwargs.pop("top_p", None), kwargs.pop("top_k", None)
        if not do_sample:
            temperature, top_p, top_k = 0.0, None, None
        if self.family != "dream":
            top_p = top_k = None
        if kwargs:
            logger.warning("maskkv: generation settings %s are not used by the dLLM samplers", sorted(kwargs))
        length, _, _ = self.gen.lengths(max_gen)
        return _Request(length, temperature, tuple(s for s in until if s), top_p, top_k)

    def _fit(self, ids: list[int], gen_length: int) -> list[int]:
        """A prompt that leaves room for ``gen_length`` tokens within ``max_length`` (``truncation`` rule)."""
        room = self.max_length - gen_length
        if len(ids) <= room:
            return ids
        if self.truncation == "error" or room < 2:
            raise EvalError(f"a prompt of {len(ids)} tokens plus {gen_length} generated exceeds max_length="
                            f"{self.max_length}; raise max_length or use truncation=left|middle")
        logger.warning("maskkv: prompt of %d tokens cut to %d (%s)", len(ids), room, self.truncation)
        if self.truncation == "left":
            return ids[-room:]
        return ids[: room // 2] + ids[len(ids) - (room - room // 2):]

    def _generate_batch(self, prompts: list[list[int]], settings: _Request) -> list[str]:
        from ..sampling.generate import generate

        ids, mask = left_pad(prompts, self.pad_id)
        width = ids.shape[1]
        length, steps, block = self.gen.lengths(settings.gen_length)
        out = generate(self.model, ids.to(self._device), attention_mask=None if mask is None else mask.to(self._device),
                       gen_length=length, steps=steps, block_length=block, temperature=settings.temperature,
                       remasking=self.gen.remasking, cfg_scale=self.cfg, threshold=self.threshold,
                       top_p=settings.top_p, top_k=settings.top_k, cache=self.gen.make_cache(),
                       press=self.gen.make_press())
        texts = []
        for row in out.sequences[:, width:].tolist():
            text = decode_answer(self.tokenizer, row, strip=False)  # lm-eval scores the text as generated
            for stop in settings.until:
                text = text.split(stop)[0]
            texts.append(text)
        return texts

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        groups: dict[_Request, list[tuple[int, list[int]]]] = {}
        for index, request in enumerate(requests):
            context, gen_kwargs = request.args
            settings = self._request_settings(gen_kwargs)
            groups.setdefault(settings, []).append((index, self._fit(self.tok_encode(context), settings.gen_length)))
        results: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="maskkv generate_until", disable=disable_tqdm or self.rank != 0)
        for settings, members in groups.items():
            members.sort(key=lambda item: -len(item[1]))  # longest first: similar lengths share a batch
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                for (index, _), text in zip(chunk, self._generate_batch([ids for _, ids in chunk], settings)):
                    results[index] = text
                    self.cache_hook.add_partial("generate_until", requests[index].args, text)
                bar.update(len(chunk))
        bar.close()
        return results  # type: ignore[return-value]

    # ----- likelihood -------------------------------------------------------------------------------

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """The references' split: trailing spaces of the context move to the continuation; the whole text is
        encoded once and the context's token count splits it. Dream appends EOS to the continuation. Over-long
        inputs lose context tokens from the left (Dream's rule)."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tok_encode(context + continuation)
        context_ids = self.tok_encode(context)
        if self.family == "dream":
            whole = whole + [self.model.config.eos_token_id]
        prefix, target = whole[: len(context_ids)], whole[len(context_ids):]
        overflow = len(whole) - self.max_length
        if overflow > 0:
            logger.warning("maskkv: loglikelihood input of %d tokens cut to %d from the left", len(whole),
                           self.max_length)
            prefix = prefix[overflow:] if overflow < len(prefix) else []
            target = target[-self.max_length:]
        return prefix, target

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        if self.family == "llada" and self.mc_num % self.mc_batch_size:
            raise ModelArgsError(f"model_args mc_num={self.mc_num} must be a multiple of mc_batch_size="
                                 f"{self.mc_batch_size} (default: batch_size) for LLaDA; its reference asserts it")
        results = []
        for request in tqdm(requests, desc="maskkv loglikelihood", disable=disable_tqdm or self.rank != 0):
            prefix, target = (torch.tensor(x, dtype=torch.long) for x in self._encode_pair(*request.args))
            if target.numel() == 0:
                value = 0.0
            elif self.family == "llada":
                value = llada_loglikelihood(self.model, prefix, target, mc_num=self.mc_num,
                                            batch_size=self.mc_batch_size, cfg_scale=self.cfg)
            else:
                value = dream_loglikelihood(self.model, prefix, target, mc_num=self.mc_num,
                                            batch_size=self.mc_batch_size, eps=self.sampling_eps)
            greedy = bool(self.check_greedy and target.numel() and
                          llada_is_greedy(self.model, prefix, target, cfg_scale=self.cfg))
            results.append((value, greedy))
            self.cache_hook.add_partial("loglikelihood", request.args, (value, greedy))
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError(
            "maskkv: loglikelihood_rolling (perplexity tasks such as wikitext) is not defined for masked diffusion "
            "models: they give no left-to-right token probabilities, only a Monte Carlo bound on a continuation "
            "given its context. Use loglikelihood (multiple-choice) or generate_until tasks."
        )
