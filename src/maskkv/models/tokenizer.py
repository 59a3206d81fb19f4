"""Offline tokenizer loading for LLaDA and Dream checkpoints (``models.md`` section 4).

:func:`load_tokenizer` never runs code shipped with a checkpoint and never unpickles anything: it
reads only JSON/text files (``tokenizer.json``, ``tokenizer_config.json``,
``special_tokens_map.json``, ``vocab.json``, ``merges.txt``, ``chat_template.jinja``,
``config.json``).

- LLaDA ships ``tokenizer.json``: it is wrapped in a stock fast tokenizer.
- Dream ships only ``vocab.json`` + ``merges.txt`` and a remote-code slow class: the equivalent fast
  tokenizer is rebuilt with the ``tokenizers`` library the way transformers' Qwen2 conversion does.

Special tokens exposed on the returned tokenizer (in addition to bos/eos/pad):

- ``mask_token`` / ``mask_token_id``: ``<|mdm_mask|>`` (LLaDA) or ``<|mask|>`` (Dream).
- ``eot_token`` / ``eot_token_id``: end of turn, ``<|eot_id|>`` (LLaDA) or ``<|im_end|>`` (Dream).
  In transformers >= 5 it is registered as a *model-specific named special token* (the
  ``model_specific_special_tokens`` constructor argument), so ``tok.eot_token`` and
  ``tok.eot_token_id`` behave like ``tok.eos_token``/``tok.eos_token_id``; on older transformers it
  is set as two plain attributes with the same names.
- ``padding_side`` is ``"left"`` (the samplers assume left padding).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "FAMILY_SPECIAL_TOKENS",
    "HUB_TOKENIZER_FILES",
    "QWEN2_PRETOKENIZE_REGEX",
    "build_qwen2_backend",
    "detect_family",
    "load_tokenizer",
    "qwen2_pre_tokenizer",
]

# Pre-tokenisation pattern of Qwen2/Dream (contractions, letter runs with one optional leading
# non-letter, single digits, punctuation runs, newline runs, other whitespace).
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Named special tokens of each family (models.md 4.1 / 4.2). Values in a checkpoint's
# tokenizer_config.json take precedence for bos/eos/pad/mask; eot is always the family's.
FAMILY_SPECIAL_TOKENS: dict[str, dict[str, str]] = {
    "llada": {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "mask_token": "<|mdm_mask|>",
        "eot_token": "<|eot_id|>",
    },
    "dream": {
        "bos_token": "<|beginoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "mask_token": "<|mask|>",
        "eot_token": "<|im_end|>",
    },
}

# Files fetched from the hub for a tokenizer (never weights, never Python files).
HUB_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "config.json",
)

_NAMED_SPECIALS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# tokenizer_config.json fields forwarded to the constructor (everything else is ignored on purpose:
# auto_map/tokenizer_class would name remote code, file paths would point elsewhere).
_FORWARDED_FIELDS = (
    "add_bos_token",
    "add_eos_token",
    "clean_up_tokenization_spaces",
    "model_max_length",
    "split_special_tokens",
    "model_input_names",
)


def qwen2_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """The Qwen2/Dream pre-tokenizer: regex split (isolated), then byte-level mapping without its own regex."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def build_qwen2_backend(
    vocab: dict[str, int],
    merges: list[tuple[str, str]],
    added_tokens: dict[int, AddedToken] | None = None,
    *,
    source: str = "tokenizer_config.json",
) -> Tokenizer:
    """Build a byte-level BPE ``tokenizers.Tokenizer`` equivalent to Qwen2's (and Dream's) slow tokenizer.

    BPE without unk or byte fallback, NFC normaliser, :func:`qwen2_pre_tokenizer`, ByteLevel decoder;
    ``added_tokens`` (id -> token) are registered in id order and must land on their declared ids.
    """
    backend = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = qwen2_pre_tokenizer()
    backend.decoder = decoders.ByteLevel()
    for token_id, token in sorted((added_tokens or {}).items()):
        if token.special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])
        got = backend.token_to_id(token.content)
        if got != token_id:
            raise ValueError(
                f"{source}: added token {token.content!r} is declared with id {token_id} but lands on id {got} "
                f"(vocab.json has {len(vocab)} entries); added-token ids must continue the vocabulary without gaps"
            )
    return backend


def detect_family(folder: str | Path) -> str:
    """Return ``"llada"`` or ``"dream"`` from ``config.json``'s ``model_type`` (or from the special tokens present)."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if config_file.is_file():
        model_type = _read_json(config_file).get("model_type")
        if not isinstance(model_type, str):
            raise ValueError(f"{config_file}: field 'model_type' is missing; pass family='llada' or family='dream'")
        return _normalise_family(model_type, source=f"{config_file} field 'model_type'")
    # No config.json (e.g. a tokenizer-only folder): look at the special tokens.
    contents: set[str] = set()
    tok_cfg = folder / "tokenizer_config.json"
    if tok_cfg.is_file():
        for entry in (_read_json(tok_cfg).get("added_tokens_decoder") or {}).values():
            contents.add(entry["content"] if isinstance(entry, dict) else str(entry))
    tok_json = folder / "tokenizer.json"
    if tok_json.is_file():
        for entry in _read_json(tok_json).get("added_tokens") or []:
            contents.add(entry.get("content", ""))
    if "<|mdm_mask|>" in contents:
        return "llada"
    if "<|mask|>" in contents and "<|im_end|>" in contents:
        return "dream"
    raise ValueError(
        f"cannot tell the model family of {folder}: no config.json with 'model_type' and no recognisable mask "
        "token; pass family='llada' or family='dream'"
    )


def load_tokenizer(path_or_hub_id: str | Path, *, family: str | None = None) -> PreTrainedTokenizerFast:
    """Load the tokenizer of a LLaDA or Dream checkpoint as a fast tokenizer, without remote code.

    ``path_or_hub_id``: a local folder, or a hub id such as ``"GSAI-ML/LLaDA-8B-Instruct"`` (only the
    tokenizer/config files are downloaded). ``family``: ``"llada"`` or ``"dream"``; read from
    ``config.json`` (``model_type``) when None. Sets ``mask_token``, ``eot_token`` and left padding
    (module docstring).
    """
    folder = _resolve_folder(path_or_hub_id)
    family = _normalise_family(family, source="argument 'family'") if family is not None else detect_family(folder)
    defaults = FAMILY_SPECIAL_TOKENS[family]

    tok_json = folder / "tokenizer.json"
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    tok_cfg_file = folder / "tokenizer_config.json"
    if not tok_json.is_file() and not (vocab_file.is_file() or merges_file.is_file()):
        raise FileNotFoundError(
            f"no tokenizer files in {folder}: looked for tokenizer.json, or vocab.json + merges.txt "
            "(with tokenizer_config.json); pass the checkpoint folder that holds them"
        )
    tok_cfg = _read_json(tok_cfg_file) if tok_cfg_file.is_file() else {}
    specials_map_file = folder / "special_tokens_map.json"
    specials_map = _read_json(specials_map_file) if specials_map_file.is_file() else {}

    added_tokens = _parse_added_tokens(tok_cfg.get("added_tokens_decoder") or {}, source=str(tok_cfg_file))

    kwargs: dict[str, Any] = {k: tok_cfg[k] for k in _FORWARDED_FIELDS if k in tok_cfg}
    kwargs.setdefault("clean_up_tokenization_spaces", False)
    for name in _NAMED_SPECIALS:
        value = tok_cfg.get(name, specials_map.get(name))
        if value is None:
            value = defaults.get(name)
        if value is not None:
            kwargs[name] = _to_added_token(value, source=f"{tok_cfg_file} field {name!r}")
    extra = tok_cfg.get("extra_special_tokens", tok_cfg.get("additional_special_tokens"))
    if extra is None:
        extra = specials_map.get("additional_special_tokens")
    if isinstance(extra, list) and extra:
        kwargs["extra_special_tokens"] = [
            _to_added_token(t, source=f"{tok_cfg_file} extra special tokens") for t in extra
        ]
    chat_template = _read_chat_template(folder, tok_cfg)
    if chat_template is not None:
        kwargs["chat_template"] = chat_template
    kwargs["padding_side"] = "left"
    eot = defaults["eot_token"]
    # Named model-specific tokens saved by transformers >= 5 (extra_special_tokens as a dict).
    named_extra: dict[str, str | AddedToken] = {}
    if isinstance(extra, dict):
        for key, value in extra.items():
            named_extra[str(key)] = _to_added_token(value, source=f"{tok_cfg_file} extra_special_tokens[{key!r}]")
    named_extra["eot_token"] = eot

    from transformers import PreTrainedTokenizerFast

    if tok_json.is_file():
        try:
            backend = Tokenizer.from_file(str(tok_json))
        except Exception as exc:  # the tokenizers library raises a bare Exception
            raise ValueError(
                f"{tok_json} is not a valid tokenizer file ({exc}); re-download or re-create the file"
            ) from exc
    else:
        for needed in (vocab_file, merges_file, tok_cfg_file):
            if not needed.is_file():
                raise FileNotFoundError(
                    f"{folder} has {'vocab.json' if vocab_file.is_file() else 'merges.txt'} but no {needed.name}: "
                    "a vocab/merges tokenizer needs vocab.json, merges.txt and tokenizer_config.json "
                    "(or a tokenizer.json instead)"
                )
        vocab = _read_json(vocab_file)
        if not isinstance(vocab, dict):
            raise ValueError(f"{vocab_file}: expected a JSON object mapping token -> id")
        merges = _read_merges(merges_file)
        backend = build_qwen2_backend(vocab, merges, added_tokens, source=str(tok_cfg_file))

    # Check before wrapping: transformers would silently append a missing special token as a new id.
    vocab_ids = backend.get_vocab(with_added_tokens=True)
    for name in ("bos_token", "eos_token", "pad_token", "mask_token", "eot_token"):
        token = eot if name == "eot_token" else kwargs.get(name)
        if token is not None and str(token) not in vocab_ids:
            raise ValueError(
                f"{family} tokenizer in {folder}: {name} {str(token)!r} is not in the vocabulary "
                "(check tokenizer_config.json / special_tokens_map.json, or pass the right family)"
            )

    try:
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, model_specific_special_tokens=named_extra, **kwargs)
    except TypeError:  # transformers < 5 has no model-specific special tokens
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
    if getattr(tok, "eot_token", None) != eot:
        object.__setattr__(tok, "eot_token", eot)
        object.__setattr__(tok, "eot_token_id", tok.convert_tokens_to_ids(eot))
    tok.padding_side = "left"
    # Set after construction: a name_or_path in the constructor makes transformers query the hub.
    tok.name_or_path = str(path_or_hub_id)

    return tok


# ---------------------------------------------------------------------------------------------------------
# helpers


def _normalise_family(value: str, *, source: str) -> str:
    lowered = value.strip().lower()
    if lowered in ("llada", "dream"):
        return lowered
    raise ValueError(
        f"{source}: unknown model family {value!r}; expected 'llada' or 'dream' (model_type 'llada'/'Dream')"
    )


def _resolve_folder(path_or_hub_id: str | Path) -> Path:
    """Return a local folder holding the tokenizer files (downloading only those for a hub id)."""
    from .loading import resolve_checkpoint

    return resolve_checkpoint(path_or_hub_id, HUB_TOKENIZER_FILES, what="tokenizer")


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); re-download or re-create the file") from exc


def _read_merges(path: Path) -> list[tuple[str, str]]:
    merges: list[tuple[str, str]] = []
    with open(path, encoding="utf-8", newline="") as handle:
        lines = handle.read().split("\n")
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        if not line or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{path} line {number}: expected two space-separated tokens, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _to_added_token(value: Any, *, source: str) -> str | AddedToken:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return AddedToken(
            value["content"],
            single_word=bool(value.get("single_word", False)),
            lstrip=bool(value.get("lstrip", False)),
            rstrip=bool(value.get("rstrip", False)),
            normalized=bool(value.get("normalized", False)),
            special=bool(value.get("special", True)),
        )
    raise ValueError(f"{source}: expected a token string or an object with 'content', got {value!r}")


def _parse_added_tokens(raw: dict[str, Any], *, source: str) -> dict[int, AddedToken]:
    out: dict[int, AddedToken] = {}
    for key, entry in raw.items():
        try:
            token_id = int(key)
        except ValueError as exc:
            raise ValueError(f"{source}: added_tokens_decoder key {key!r} is not an integer id") from exc
        if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
            raise ValueError(f"{source}: added_tokens_decoder[{key}] must be an object with 'content'")
        token = _to_added_token(entry, source=f"{source} added_tokens_decoder[{key}]")
        if isinstance(token, str):  # pragma: no cover - dict input always gives an AddedToken
            token = AddedToken(token, special=True)
        out[token_id] = token
    return out


def _read_chat_template(folder: Path, tok_cfg: dict[str, Any]) -> str | dict[str, str] | None:
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = tok_cfg.get("chat_template")
    if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
        return {entry["name"]: entry["template"] for entry in template}
    return template
