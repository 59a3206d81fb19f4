"""Text in, text out: the prompt encoding and answer decoding that every front end shares.

The command line, the demo, the evaluations, the server and the lm-eval model all turn a user's text into
``[1, P]`` prompt ids and generated ids back into an answer the same way; this module is that one place.
"""

from __future__ import annotations

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


def decode_answer(tokenizer: Any, ids: torch.Tensor) -> str:
    """Decode generated ids, cut at the first EOS/EOT, without special tokens."""
    stops = stop_token_ids(tokenizer)
    ids = ids.tolist()
    for i, tok in enumerate(ids):
        if tok in stops:
            ids = ids[:i]
            break
    return tokenizer.decode(ids, skip_special_tokens=True).strip()
