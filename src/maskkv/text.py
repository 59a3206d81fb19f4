"""Text in, text out: the prompt encoding and answer decoding that every front end shares.

The command line, the demo, the evaluations, the server and the lm-eval model all turn a user's text into
``[1, P]`` prompt ids (or a left-padded batch of them) and generated ids back into an answer the same way;
this module is that one place: one EOS/EOT rule (:func:`cut_at_stop`), one pad id rule (:func:`pad_token_id`),
one left-padding (:func:`left_pad`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import torch


def encode_prompt(tokenizer: Any, text: str, *, chat: bool) -> torch.Tensor:
    """Token ids ``[1, P]`` of a prompt, optionally wrapped in the chat template as one user turn."""
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("--chat was given but this tokenizer has no chat template (tokenizer_config.json)")
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return _encode(tokenizer, text)


def encode_messages(tokenizer: Any, messages: list[dict[str, str]]) -> torch.Tensor:
    """Token ids ``[1, P]`` of a conversation (``role``/``content`` dicts) in the chat template, ready for
    the assistant's turn. One user message gives the same ids as ``encode_prompt(..., chat=True)``."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this checkpoint's tokenizer has no chat template (tokenizer_config.json); "
                         "use a raw-prompt completion instead")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return _encode(tokenizer, text)


def _encode(tokenizer: Any, text: str) -> torch.Tensor:
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    if ids.shape[1] == 0:
        raise ValueError("the prompt is empty after tokenisation; give some text")
    return ids


def stop_token_ids(tokenizer: Any) -> set[int]:
    """The ids that end an answer: EOS and, where the tokenizer has one, EOT."""
    return {t for t in (tokenizer.eos_token_id, getattr(tokenizer, "eot_token_id", None)) if t is not None}


def cut_at_stop(ids: Sequence[int] | torch.Tensor, stop_ids: Collection[int]) -> list[int]:
    """Generated ``ids`` up to (not including) the first id in ``stop_ids``; all of them if none occurs.

    The one EOS/EOT rule of every front end: :func:`decode_answer` (CLI, demo, evaluations, lm-eval) and the
    server's streaming ``TextTracker`` cut here with :func:`stop_token_ids`.
    """
    ids = _id_list(ids)
    for i, tok in enumerate(ids):
        if tok in stop_ids:
            return ids[:i]
    return ids


def _id_list(ids: Sequence[int] | torch.Tensor) -> list[int]:
    return ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)


def decode_answer(tokenizer: Any, ids: Sequence[int] | torch.Tensor, *, eos_cut: bool = True,
                  strip: bool = True) -> str:
    """Decode generated ids without special tokens, cut at the first EOS/EOT first (``eos_cut``).

    ``strip=True`` (the command line, the demo, the server) removes surrounding whitespace. Benchmarks that
    score the raw text pass ``strip=False``: LongBench's first-line rule strips only leading newlines
    (longbench.md 3.4, 4.1) and lm-eval's ``generate_until`` returns the text as generated.
    """
    ids = cut_at_stop(ids, stop_token_ids(tokenizer)) if eos_cut else _id_list(ids)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return text.strip() if strip else text


def pad_token_id(model_config: Any, tokenizer: Any = None) -> int:
    """The id that left-pads a batch of prompts: the tokenizer's pad token, else the checkpoint's
    ``pad_token_id``, else EOS -- never the mask token id (``maskkv.generate`` refuses a mask id in a prompt).

    The value never changes an answer: pad keys are masked out by the attention mask (``left_pad``).
    """
    mask = model_config.mask_token_id
    candidates = (getattr(tokenizer, "pad_token_id", None), getattr(model_config, "pad_token_id", None),
                  model_config.eos_token_id, getattr(tokenizer, "eos_token_id", None))
    for candidate in candidates:
        if candidate is not None and int(candidate) != mask:
            return int(candidate)
    raise ValueError(f"no pad token id other than the mask token id {mask}: set pad_token_id or eos_token_id "
                     "in config.json to a real token")


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One left-padded batch ``[B, P]`` of prompt ids (P = the longest prompt) and its 0/1 attention mask.

    The mask is None when every prompt has length P (no padding: ``maskkv.generate``'s unpadded path).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("left_pad needs at least one prompt and no empty prompt")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return ids, None if all(len(p) == width for p in prompts) else mask
