"""Our own byte-level BPE for the tiny LLaDA model (trained with ``tokenizers``).

Layout of the vocabulary: the regular BPE tokens first, then the LLaDA special tokens of
:data:`maskkv.models.tiny.TINY_SPECIAL_TOKENS` (``<|startoftext|>``, ``<|endoftext|>``,
``<|mdm_mask|>``, ``<role>``, ``</role>``, ``<|start_header_id|>``, ``<|end_header_id|>``,
``<|eot_id|>``), as in the real LLaDA file; the chat template is LLaDA's
(:data:`maskkv.models.tiny.LLADA_CHAT_TEMPLATE`), written by the shared tiny-checkpoint helpers.

Pre-tokenisation: a LLaMA-3 style regex (numbers are cut into groups of at most three digits), then
the GPT-2 byte mapping. The training text always contains every digit string the pre-tokeniser can
produce many times, so every such group is a single token (checked): a 3-digit value is one token, a
5-digit pass key two. ``digit_group=2`` (the shipped model's) cuts numbers into groups of at most two
digits instead: a 5-digit pass key is then three tokens of the 110 one- and two-digit ones, the tokens
the 2-digit needles train.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
)

from ..models.tiny import TINY_SPECIAL_TOKENS, TinyTokenizerInfo, byte_level_bpe_trainer

__all__ = ["PRETOKENIZE_REGEX", "build_tokenizer", "digit_strings", "pretokenize_regex"]

# LLaMA-3 pre-tokenisation pattern: contractions, letter runs with one optional leading non-letter,
# 1-3 digit groups, punctuation runs, newline runs, other whitespace.
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def pretokenize_regex(digit_group: int = 3) -> str:
    """:data:`PRETOKENIZE_REGEX` with numbers cut into groups of at most ``digit_group`` digits."""
    if digit_group not in (1, 2, 3):
        raise ValueError(f"digit_group must be 1, 2 or 3 (digits per number token), got {digit_group}")
    return PRETOKENIZE_REGEX.replace(r"\p{N}{1,3}", rf"\p{{N}}{{1,{digit_group}}}")


def digit_strings(digit_group: int = 3) -> list[str]:
    """Every digit group the pre-tokeniser can produce: '0'..'9', '00'..'99', '000'..'999' (up to ``digit_group``)."""
    return [f"{i:0{width}d}" for width in range(1, digit_group + 1) for i in range(10**width)]


def _with_digits(texts: Iterable[str], repeats: int, digit_group: int) -> Iterator[str]:
    yield from texts
    groups = " ".join(digit_strings(digit_group))
    for _ in range(repeats):
        yield groups


def build_tokenizer(texts: Iterable[str], *, vocab_size: int = 3000, digit_repeats: int = 40,
                    digit_group: int = 3) -> TinyTokenizerInfo:
    """Train the BPE on ``texts`` and return it with the LLaDA special tokens appended.

    ``vocab_size`` counts the regular tokens (byte alphabet + merges); the embedding is rounded up
    to a multiple of 64 by :class:`TinyTokenizerInfo`. Raises if a digit group is not one token
    (raise ``vocab_size`` then). ``digit_group``: the most digits of one number token (3: LLaMA-3).
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pretokenize_regex(digit_group)), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = byte_level_bpe_trainer(vocab_size)
    backend.train_from_iterator(_with_digits(texts, digit_repeats, digit_group), trainer=trainer)
    num_regular = backend.get_vocab_size(with_added_tokens=False)
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in TINY_SPECIAL_TOKENS["llada"]])
    missing = [s for s in digit_strings(digit_group) if len(backend.encode(s, add_special_tokens=False).ids) != 1]
    if missing:
        raise ValueError(f"{len(missing)} digit groups are not single tokens (e.g. {missing[:5]}); raise vocab_size")
    return TinyTokenizerInfo("llada", backend.to_str(), num_regular)
