"""Tiny random checkpoints in the exact published file layout of LLaDA and Dream.

No model weights can be downloaded in tests, so :func:`write_tiny_checkpoint` writes a folder that
looks like the real hub checkpoint (``models.md`` sections 2.2, 2.3, 3.1, 3.2, 4 and 5): the full
``config.json`` with only the shape fields and special-token ids changed, safetensors weights with
the real key names (optionally sharded with an HF index), and the tokenizer files of the family
(a small byte-level BPE trained on a built-in English text). Everything is deterministic: the same
arguments give the same bytes.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from .tokenizer import qwen2_pre_tokenizer

__all__ = [
    "DREAM_CHAT_TEMPLATE",
    "LLADA_CHAT_TEMPLATE",
    "TINY_SPECIAL_TOKENS",
    "TinyTokenizerInfo",
    "tiny_config_dict",
    "tiny_state_dict_shapes",
    "tiny_tokenizer_info",
    "write_tiny_checkpoint",
]

Family = Literal["llada", "dream"]

# Special tokens appended after the regular BPE vocabulary, in the relative order of the real files.
TINY_SPECIAL_TOKENS: dict[str, tuple[str, ...]] = {
    "llada": (
        "<|startoftext|>",
        "<|endoftext|>",
        "<|mdm_mask|>",
        "<role>",
        "</role>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ),
    "dream": ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", "<|mask|>"),
}

# LLaDA hub template (models.md 4.1): BOS before the first message only; each message is
# header, role, header end, two newlines, stripped content, <|eot_id|>; the assistant header is
# appended unconditionally (add_generation_prompt is ignored, as in the hub file).
LLADA_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first -%}{{ bos_token }}{%- endif -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + (message['content'] | trim)"
    " + '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
)

# Dream (Qwen2.5 ChatML, models.md 4.2): a default system turn when the conversation has none.
DREAM_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# Training text for the tiny BPE (written for this project).
_CORPUS = """\
On the first cold morning of the year, the baker opened her shop before the sun came up.
She lit the oven, measured the flour, and listened to the quiet street outside.
A cat walked along the wall, stopped at the window, and looked at the warm bread with great interest.
By seven o'clock the first customers were waiting at the door, talking about the weather and the news.
The old teacher bought two small loaves, as he did every day, and asked about her brother in the city.
"He writes every week," she said, "and he says the trains are always late in winter."
The children from the house on the corner ran in, counted their coins, and chose the sweetest rolls.
Numbers matter in a bakery: 500 grams of flour, 12 eggs, 3 spoons of sugar, and 45 minutes in the oven.
In 2024 the shop sold more than 30,000 loaves, which was a record for such a small place.
When it rains, people stay longer, drink tea, and read the paper at the little table near the stove.
When the weather is fine, they take their bread to the park and feed the birds by the river.
The river is slow and wide here; boats carry wood and stone down to the harbour in the south.
Long ago the town was famous for its bridges, and travellers came from far away to see them.
Today most visitors come for the market, the music in the square, and the quiet walks by the water.
Learning to bake takes patience. You must watch the dough, feel its weight, and wait for it to rise.
If you hurry, the bread will be heavy; if you wait too long, it will fall and lose its shape.
Good bakers remember what worked yesterday and change one small thing at a time.
The same is true for many other crafts: writing, building, teaching, and even reading well.
A student once asked the baker why she never used a machine to mix the dough.
She smiled and answered that her hands could tell her things that no machine could measure.
In the evening, when the shelves were empty, she cleaned the counters and wrote tomorrow's list.
Then she turned off the lights, locked the door, and walked home under the bright stars.
Questions: What time does the shop open? How many eggs are needed? Why do people stay when it rains?
Answers: The shop opens before sunrise. Twelve eggs are needed. People stay longer because it is wet outside.
Simple rules: keep the kitchen clean, keep the oven hot, and keep your promises to your neighbours.
Every morning is a new chance to make something good, to share it, and to learn a little more.
"""

_TRAINER_VOCAB_SIZE = 448  # 256 byte symbols + up to 192 merges
_VOCAB_MULTIPLE = 64


class TinyTokenizerInfo:
    """Sizes and special ids of a family's tiny tokenizer."""

    def __init__(self, family: str, tokenizer_json: str, num_regular: int) -> None:
        self.family = family
        self.tokenizer_json = tokenizer_json  # serialised ``tokenizers.Tokenizer``
        self.num_regular = num_regular  # BPE vocabulary without the special tokens
        specials = TINY_SPECIAL_TOKENS[family]
        self.special_ids = {token: num_regular + i for i, token in enumerate(specials)}
        self.num_tokens = num_regular + len(specials)
        self.vocab_size = -(-self.num_tokens // _VOCAB_MULTIPLE) * _VOCAB_MULTIPLE  # embedding rows

    def backend(self) -> Tokenizer:
        """A fresh ``tokenizers.Tokenizer`` (with the special tokens added)."""
        return Tokenizer.from_str(self.tokenizer_json)


def _check_family(family: str) -> Family:
    if family not in ("llada", "dream"):
        raise ValueError(f"family must be 'llada' or 'dream', got {family!r}")
    return family  # type: ignore[return-value]


def byte_level_bpe_trainer(vocab_size: int) -> trainers.BpeTrainer:
    """The BPE trainer of our byte-level tokenizers: full byte alphabet, merges seen at least twice, no specials."""
    return trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )


@lru_cache(maxsize=2)
def tiny_tokenizer_info(family: str) -> TinyTokenizerInfo:
    """Train (once per process, deterministically) the tiny byte-level BPE of ``family``."""
    family = _check_family(family)
    backend = Tokenizer(models.BPE())
    if family == "llada":
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        backend.normalizer = normalizers.NFC()
        backend.pre_tokenizer = qwen2_pre_tokenizer()
    backend.decoder = decoders.ByteLevel()
    trainer = byte_level_bpe_trainer(_TRAINER_VOCAB_SIZE)
    backend.train_from_iterator(_CORPUS.splitlines(keepends=True), trainer=trainer)
    num_regular = backend.get_vocab_size(with_added_tokens=False)
    if family == "llada":
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in TINY_SPECIAL_TOKENS[family]])
    return TinyTokenizerInfo(family, backend.to_str(), num_regular)


# ---------------------------------------------------------------------------------------------------------
# config.json


def _shape_args(
    num_layers: int, hidden_size: int, num_heads: int, num_kv_heads: int | None, intermediate_size: int, family: Family
) -> int:
    """Validate the shape arguments; return the effective number of KV heads."""
    for name, value in (
        ("num_layers", num_layers),
        ("hidden_size", hidden_size),
        ("num_heads", num_heads),
        ("intermediate_size", intermediate_size),
    ):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if hidden_size % num_heads != 0:
        raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
    if (hidden_size // num_heads) % 2 != 0:
        raise ValueError(f"head_dim={hidden_size // num_heads} must be even for rotary embeddings")
    if num_kv_heads is None:
        num_kv_heads = max(1, num_heads // 2) if family == "dream" else num_heads
    if not isinstance(num_kv_heads, int) or num_kv_heads <= 0 or num_heads % num_kv_heads != 0:
        raise ValueError(f"num_kv_heads={num_kv_heads!r} must be a positive divisor of num_heads={num_heads}")
    return num_kv_heads


def tiny_config_dict(
    family: Family,
    *,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int = 128,
    max_position_embeddings: int = 4096,
    dtype: torch.dtype = torch.float32,
    qkv_bias: bool = False,
) -> dict[str, Any]:
    """The published ``config.json`` of ``family`` with tiny shapes and the tiny tokenizer's special ids.

    LLaDA: every field of ``models.md`` 2.2 (plus ``transformers_version`` of the derived copy);
    ``vocab_size`` = ``embedding_size`` = tokenizer size rounded up to a multiple of 64.
    ``qkv_bias`` (LLaDA only; Dream always has them): ``include_qkv_bias``, biases on q/k/v.
    Dream: every field of 3.1; ``max_window_layers`` follows ``num_hidden_layers`` as in the real
    file, ``torch_dtype`` names ``dtype`` (the dtype the weights are stored in), and
    ``bos_token_id`` equals ``eos_token_id`` (``<|endoftext|>``) as in the published config and
    generation_config (the tokenizer's own ``bos_token`` is ``<|beginoftext|>``).
    """
    family = _check_family(family)
    kv = _shape_args(num_layers, hidden_size, num_heads, num_kv_heads, intermediate_size, family)
    info = tiny_tokenizer_info(family)
    ids = info.special_ids
    if family == "llada":
        return {
            "activation_type": "silu",
            "alibi": False,
            "alibi_bias_max": 8.0,
            "architectures": ["LLaDAModelLM"],
            "attention_dropout": 0.0,
            "attention_layer_norm": False,
            "attention_layer_norm_with_affine": True,
            "auto_map": {
                "AutoConfig": "configuration_llada.LLaDAConfig",
                "AutoModel": "modeling_llada.LLaDAModelLM",
                "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
            },
            "bias_for_layer_norm": False,
            "block_group_size": 1,
            "block_type": "llama",
            "d_model": hidden_size,
            "embedding_dropout": 0.0,
            "embedding_size": info.vocab_size,
            "eos_token_id": ids["<|endoftext|>"],
            "flash_attention": False,
            "include_bias": False,
            "include_qkv_bias": qkv_bias,
            "init_cutoff_factor": None,
            "init_device": "meta",
            "init_fn": "mitchell",
            "init_std": 0.02,
            "input_emb_norm": False,
            "layer_norm_type": "rms",
            "layer_norm_with_affine": True,
            "mask_token_id": ids["<|mdm_mask|>"],
            "max_sequence_length": max_position_embeddings,
            "mlp_hidden_size": intermediate_size,
            "mlp_ratio": 4,
            "model_type": "llada",
            "multi_query_attention": None,
            "n_heads": num_heads,
            "n_kv_heads": kv,
            "n_layers": num_layers,
            "pad_token_id": ids["<|endoftext|>"],
            "precision": "amp_bf16",
            "residual_dropout": 0.0,
            "rms_norm_eps": 1e-05,
            "rope": True,
            "rope_full_precision": True,
            "rope_theta": 500000.0,
            "scale_logits": False,
            "transformers_version": "4.46.3",
            "use_cache": False,
            "vocab_size": info.vocab_size,
            "weight_tying": False,
        }
    return {
        "architectures": ["DreamModel"],
        "attention_dropout": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_dream.DreamConfig",
            "AutoModel": "modeling_dream.DreamModel",
        },
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|endoftext|>"],
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "mask_token_id": ids["<|mask|>"],
        "max_position_embeddings": max_position_embeddings,
        "max_window_layers": num_layers,
        "model_type": "Dream",
        "num_attention_heads": num_heads,
        "num_hidden_layers": num_layers,
        "num_key_value_heads": kv,
        "pad_token_id": ids["<|endoftext|>"],
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "transformers_version": "4.46.2",
        "use_cache": False,
        "use_sliding_window": False,
        "vocab_size": info.vocab_size,
    }


# ---------------------------------------------------------------------------------------------------------
# weights


def tiny_state_dict_shapes(
    family: Family,
    *,
    num_layers: int,
    hidden_size: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    vocab_size: int,
    qkv_bias: bool = False,
) -> dict[str, tuple[int, ...]]:
    """Checkpoint key -> shape, in module order (``models.md`` 2.3 for LLaDA, 3.2 for Dream).

    ``qkv_bias``: LLaDA's ``include_qkv_bias`` (q/k/v biases); Dream always has them."""
    family = _check_family(family)
    h, i_, v = hidden_size, intermediate_size, vocab_size
    nq = hidden_size
    nkv = num_kv_heads * (hidden_size // num_heads)
    shapes: dict[str, tuple[int, ...]] = {}
    if family == "llada":
        shapes["model.transformer.wte.weight"] = (v, h)
        for layer in range(num_layers):
            p = f"model.transformer.blocks.{layer}."
            shapes[p + "attn_norm.weight"] = (h,)
            for proj, rows in (("q_proj", nq), ("k_proj", nkv), ("v_proj", nkv)):
                shapes[p + proj + ".weight"] = (rows, h)
                if qkv_bias:
                    shapes[p + proj + ".bias"] = (rows,)
            shapes[p + "attn_out.weight"] = (h, nq)
            shapes[p + "ff_norm.weight"] = (h,)
            shapes[p + "ff_proj.weight"] = (i_, h)
            shapes[p + "up_proj.weight"] = (i_, h)
            shapes[p + "ff_out.weight"] = (h, i_)
        shapes["model.transformer.ln_f.weight"] = (h,)
        shapes["model.transformer.ff_out.weight"] = (v, h)
        return shapes
    shapes["model.embed_tokens.weight"] = (v, h)
    for layer in range(num_layers):
        p = f"model.layers.{layer}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "self_attn.q_proj.weight"] = (nq, h)
        shapes[p + "self_attn.q_proj.bias"] = (nq,)
        shapes[p + "self_attn.k_proj.weight"] = (nkv, h)
        shapes[p + "self_attn.k_proj.bias"] = (nkv,)
        shapes[p + "self_attn.v_proj.weight"] = (nkv, h)
        shapes[p + "self_attn.v_proj.bias"] = (nkv,)
        shapes[p + "self_attn.o_proj.weight"] = (h, nq)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes[p + "mlp.gate_proj.weight"] = (i_, h)
        shapes[p + "mlp.up_proj.weight"] = (i_, h)
        shapes[p + "mlp.down_proj.weight"] = (h, i_)
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (v, h)
    return shapes


def _random_tensors(
    shapes: dict[str, tuple[int, ...]], *, seed: int, init_std: float, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Seeded random weights: matrices N(0, init_std), norm weights 1 + N(0, 0.1), biases N(0, init_std)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=gen, dtype=torch.float32)
        if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
            value = 1.0 + 0.1 * noise
        else:  # matrices and biases
            value = init_std * noise
        out[name] = value.to(dtype).contiguous()
    return out


def _split_shards(names: list[str], sizes: dict[str, int], shards: int) -> list[list[str]]:
    """Cut ``names`` (in order) into ``shards`` contiguous, non-empty groups of similar byte size."""
    target = sum(sizes.values()) / shards
    groups: list[list[str]] = [[]]
    acc = 0
    for index, name in enumerate(names):
        to_open = shards - len(groups)
        remaining = len(names) - index
        if groups[-1] and to_open > 0 and (acc >= target or remaining == to_open):
            groups.append([])
            acc = 0
        groups[-1].append(name)
        acc += sizes[name]
    return groups


def _write_weights(folder: Path, tensors: dict[str, torch.Tensor], shards: int) -> None:
    metadata = {"format": "pt"}
    if shards == 1:
        save_file(tensors, str(folder / "model.safetensors"), metadata=metadata)
        return
    names = list(tensors)
    sizes = {n: tensors[n].numel() * tensors[n].element_size() for n in names}
    weight_map: dict[str, str] = {}
    for k, group in enumerate(_split_shards(names, sizes, shards), start=1):
        filename = f"model-{k:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in group}, str(folder / filename), metadata=metadata)
        weight_map.update(dict.fromkeys(group, filename))
    index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
    _write_json(folder / "model.safetensors.index.json", index)


# ---------------------------------------------------------------------------------------------------------
# tokenizer files


def _added_token_entry(content: str) -> dict[str, Any]:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }


def _write_llada_tokenizer(folder: Path, info: TinyTokenizerInfo) -> None:
    (folder / "tokenizer.json").write_text(info.backend().to_str(pretty=True), encoding="utf-8")
    special = {
        "bos_token": _added_token_entry("<|startoftext|>"),
        "eos_token": _added_token_entry("<|endoftext|>"),
        "pad_token": _added_token_entry("<|endoftext|>"),
    }
    additional = ["<role>", "</role>"]
    tok_cfg = {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": {str(i): _added_token_entry(t) for t, i in info.special_ids.items()},
        "additional_special_tokens": additional,
        "bos_token": "<|startoftext|>",
        "chat_template": LLADA_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    _write_json(folder / "tokenizer_config.json", tok_cfg)
    _write_json(folder / "special_tokens_map.json", {"additional_special_tokens": additional, **special})


def _write_dream_tokenizer(folder: Path, info: TinyTokenizerInfo) -> None:
    model = json.loads(info.tokenizer_json)["model"]
    vocab: dict[str, int] = model["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    _write_json(folder / "vocab.json", vocab)
    with open(folder / "merges.txt", "w", encoding="utf-8", newline="\n") as handle:
        handle.write("#version: 0.2\n")
        handle.write("".join(m + "\n" for m in merges))
    additional = ["<|im_start|>", "<|im_end|>"]
    tok_cfg = {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): _added_token_entry(t) for t, i in info.special_ids.items()},
        "additional_special_tokens": additional,
        "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        "bos_token": "<|beginoftext|>",
        "chat_template": DREAM_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "mask_token": "<|mask|>",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "DreamTokenizer",
        "unk_token": None,
    }
    _write_json(folder / "tokenizer_config.json", tok_cfg)
    special_map = {
        "additional_special_tokens": additional,
        "bos_token": _added_token_entry("<|beginoftext|>"),
        "eos_token": _added_token_entry("<|endoftext|>"),
        "mask_token": _added_token_entry("<|mask|>"),
        "pad_token": _added_token_entry("<|endoftext|>"),
    }
    _write_json(folder / "special_tokens_map.json", special_map)


def _write_json(path: Path, obj: Any) -> None:
    """Write JSON the way ``save_pretrained`` does (sorted keys, 2-space indent, trailing newline)."""
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------
# public entry point


def write_tiny_checkpoint(
    path: str | Path,
    family: Family,
    *,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int = 128,
    seed: int = 0,
    shards: int = 1,
    dtype: torch.dtype = torch.float32,
    tokenizer: bool = True,
    init_std: float = 0.02,
    max_position_embeddings: int = 4096,
    qkv_bias: bool = False,
) -> Path:
    """Write a random checkpoint of ``family`` with tiny shapes in the published folder layout.

    ``num_kv_heads`` defaults to ``num_heads`` (LLaDA, MHA) or ``num_heads // 2`` (Dream, GQA).
    ``qkv_bias`` (LLaDA only) sets ``include_qkv_bias`` and writes q/k/v biases.
    ``shards > 1`` writes ``model-0000k-of-0000n.safetensors`` plus ``model.safetensors.index.json``.
    ``path`` must not exist yet or be an empty folder. Returns the folder.
    """
    family = _check_family(family)
    kv = _shape_args(num_layers, hidden_size, num_heads, num_kv_heads, intermediate_size, family)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype (float32, bfloat16, float16), got {dtype!r}")
    if not init_std > 0:
        raise ValueError(f"init_std must be > 0, got {init_std!r}")
    if not isinstance(max_position_embeddings, int) or max_position_embeddings <= 0:
        raise ValueError(f"max_position_embeddings must be a positive int, got {max_position_embeddings!r}")
    if qkv_bias and family != "llada":
        raise ValueError("qkv_bias is LLaDA's include_qkv_bias; Dream checkpoints always have q/k/v biases")
    folder = Path(path)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"{folder} already exists and is not an empty folder; pass a new or empty folder")

    config = tiny_config_dict(
        family,
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_heads=num_heads,
        num_kv_heads=kv,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        dtype=dtype,
        qkv_bias=qkv_bias,
    )
    info = tiny_tokenizer_info(family)
    shapes = tiny_state_dict_shapes(
        family,
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_heads=num_heads,
        num_kv_heads=kv,
        intermediate_size=intermediate_size,
        vocab_size=info.vocab_size,
        qkv_bias=qkv_bias,
    )
    if not isinstance(shards, int) or not 1 <= shards <= len(shapes):
        raise ValueError(f"shards must be an int between 1 and the number of tensors ({len(shapes)}), got {shards!r}")

    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "config.json", config)
    _write_weights(folder, _random_tensors(shapes, seed=seed, init_std=init_std, dtype=dtype), shards)
    if tokenizer:
        if family == "llada":
            _write_llada_tokenizer(folder, info)
        else:
            _write_dream_tokenizer(folder, info)
    return folder
