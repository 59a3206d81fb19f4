"""Offline tokenizer loading for LLaDA and Dream (models.md section 4)."""

from __future__ import annotations

import json
import shutil
import unicodedata
from functools import lru_cache
from pathlib import Path

import pytest
import regex

from maskkv.models.tiny import write_tiny_checkpoint
from maskkv.models.tokenizer import QWEN2_PRETOKENIZE_REGEX, load_tokenizer


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "llada", "llada")


@pytest.fixture(scope="module")
def dream_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "dream", "dream")


TRICKY = (
    "Hello  world!\r\n\r\n  Numbers: 12345, 3.14;\ttabs\t\there.   Trailing   \n"
    "<|im_start|>user\nNaïve café — 日本語のテキスト, Ünïcödé e\u0301 (combining) 😀<|mask|><|mask|>"
    " it's we'LL   \n\n\n<|endoftext|>   end  "
)


# ------------------------------------------------------------------------------------------- LLaDA


def test_llada_chat_template_single_turn(llada_dir: Path) -> None:
    tok = load_tokenizer(llada_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "  What is 2+2?\n "}], tokenize=False)
    assert text == (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llada_chat_template_multi_turn(llada_dir: Path) -> None:
    tok = load_tokenizer(llada_dir)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": " Hello! "},
        {"role": "user", "content": "Bye"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert text.count("<|startoftext|>") == 1 and text.startswith("<|startoftext|><|start_header_id|>system")
    assert "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>" in text
    # the hub template appends the assistant header even without add_generation_prompt
    assert text.endswith("Bye<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_llada_special_ids_match_config(llada_dir: Path) -> None:
    tok = load_tokenizer(llada_dir)
    cfg = json.loads((llada_dir / "config.json").read_text())
    assert tok.mask_token == "<|mdm_mask|>" and tok.mask_token_id == cfg["mask_token_id"]
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == cfg["eos_token_id"]
    assert tok.pad_token_id == cfg["pad_token_id"]
    assert tok.bos_token == "<|startoftext|>"
    assert tok.eot_token == "<|eot_id|>" and tok.eot_token_id == tok.convert_tokens_to_ids("<|eot_id|>")
    assert tok.padding_side == "left"
    assert len(tok) < cfg["vocab_size"]
    for special in ("<|mdm_mask|>", "<|eot_id|>", "<|start_header_id|>", "<role>"):
        assert len(tok.encode(special, add_special_tokens=False)) == 1


def test_llada_round_trip_and_no_implicit_bos(llada_dir: Path) -> None:
    tok = load_tokenizer(llada_dir)
    ids = tok.encode(TRICKY)
    assert ids == tok.encode(TRICKY, add_special_tokens=False)  # add_bos_token false
    assert tok.decode(ids) == TRICKY
    masked = tok.encode("A<|mdm_mask|><|mdm_mask|>B", add_special_tokens=False)
    assert masked.count(tok.mask_token_id) == 2


def test_left_padding(llada_dir: Path) -> None:
    tok = load_tokenizer(llada_dir)
    batch = tok(["a", "a much longer sentence here"], padding=True)
    first = batch["input_ids"][0]
    assert first[0] == tok.pad_token_id and batch["attention_mask"][0][0] == 0
    assert batch["attention_mask"][0][-1] == 1


# ------------------------------------------------------------------------------------------- Dream


def test_dream_chat_template(dream_dir: Path) -> None:
    tok = load_tokenizer(dream_dir)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi there"}], tokenize=False, add_generation_prompt=True
    )
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    )
    own = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Yo"}]
    text = tok.apply_chat_template(own, tokenize=False, add_generation_prompt=False)
    assert text == "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nYo<|im_end|>\n"


def test_dream_special_ids_match_config(dream_dir: Path) -> None:
    tok = load_tokenizer(dream_dir)
    cfg = json.loads((dream_dir / "config.json").read_text())
    assert tok.mask_token == "<|mask|>" and tok.mask_token_id == cfg["mask_token_id"]
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == cfg["eos_token_id"] == cfg["pad_token_id"]
    assert tok.pad_token_id == cfg["pad_token_id"]
    assert tok.bos_token == "<|beginoftext|>"
    assert tok.eot_token == "<|im_end|>" and tok.eot_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.padding_side == "left"


def test_dream_round_trip(dream_dir: Path) -> None:
    tok = load_tokenizer(dream_dir)
    ids = tok.encode(TRICKY)
    assert ids == tok.encode(TRICKY, add_special_tokens=False)
    assert tok.decode(ids) == unicodedata.normalize("NFC", TRICKY)  # NFC normaliser, as in Qwen2


@lru_cache(maxsize=1)
def _byte_to_symbol() -> dict[int, str]:
    """GPT-2 byte-level alphabet: printable bytes map to themselves, the rest to code points from 256 up."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _reference_dream_encode(folder: Path, text: str) -> list[int]:
    """Slow pure-Python byte-level BPE written from the DreamTokenizer description (models.md 4.2)."""
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
    ranks = {tuple(line.split(" ")): r for r, line in enumerate(x for x in lines[1:] if x)}
    added = {
        v["content"]: int(k)
        for k, v in json.loads((folder / "tokenizer_config.json").read_text())["added_tokens_decoder"].items()
    }
    table = _byte_to_symbol()
    pattern = regex.compile(QWEN2_PRETOKENIZE_REGEX)
    specials = regex.compile("(" + "|".join(regex.escape(t) for t in sorted(added, key=len, reverse=True)) + ")")

    def bpe(word: str) -> list[str]:
        parts = list(word)
        while len(parts) > 1:
            pairs = [
                (ranks.get((a, b), float("inf")), i) for i, (a, b) in enumerate(zip(parts, parts[1:], strict=False))
            ]
            best, i = min(pairs)
            if best == float("inf"):
                break
            pair = (parts[i], parts[i + 1])
            merged: list[str] = []
            j = 0
            while j < len(parts):
                if j + 1 < len(parts) and (parts[j], parts[j + 1]) == pair:
                    merged.append(parts[j] + parts[j + 1])
                    j += 2
                else:
                    merged.append(parts[j])
                    j += 1
            parts = merged
        return parts

    ids: list[int] = []
    for chunk in specials.split(unicodedata.normalize("NFC", text)):
        if chunk in added:
            ids.append(added[chunk])
            continue
        for piece in pattern.findall(chunk):
            symbols = "".join(table[b] for b in piece.encode("utf-8"))
            ids.extend(vocab[s] for s in bpe(symbols))
    return ids


def test_dream_matches_reference_tokenizers(dream_dir: Path) -> None:
    from transformers import Qwen2Tokenizer

    ours = load_tokenizer(dream_dir)
    reference = Qwen2Tokenizer.from_pretrained(str(dream_dir))
    samples = [TRICKY, "plain text", "  leading spaces\r\rCR only\n\r\n", "x" * 40 + "  99 bottles", "ÅΩ≈ç√ ß∂ƒ©"]
    for text in samples:
        mine = ours.encode(text, add_special_tokens=False)
        assert mine == _reference_dream_encode(dream_dir, text), text
        assert mine == reference.encode(text, add_special_tokens=False), text
        assert ours.convert_ids_to_tokens(mine) == reference.convert_ids_to_tokens(mine)


# ------------------------------------------------------------------------------------------- loading paths


def test_family_from_argument_and_without_config(tmp_path: Path, dream_dir: Path) -> None:
    folder = tmp_path / "tok_only"
    shutil.copytree(dream_dir, folder)
    (folder / "config.json").unlink()
    tok = load_tokenizer(folder)  # detected from the special tokens
    assert tok.mask_token == "<|mask|>" and tok.eot_token == "<|im_end|>"
    tok = load_tokenizer(folder, family="Dream")
    assert tok.eot_token == "<|im_end|>"
    with pytest.raises(ValueError, match="family"):
        load_tokenizer(folder, family="gpt2")
    with pytest.raises(ValueError, match="eot_token"):  # LLaDA's <|eot_id|> is not in a Dream vocab
        load_tokenizer(folder, family="llada")


def test_unknown_model_type(tmp_path: Path, llada_dir: Path) -> None:
    folder = tmp_path / "other"
    shutil.copytree(llada_dir, folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type"):
        load_tokenizer(folder)


def test_chat_template_jinja_file_wins(tmp_path: Path, llada_dir: Path) -> None:
    folder = tmp_path / "jinja"
    shutil.copytree(llada_dir, folder)
    (folder / "chat_template.jinja").write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    tok = load_tokenizer(folder)
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == "[x]"


def test_missing_tokenizer_files(tmp_path: Path) -> None:
    folder = tmp_path / "weights_only"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x02not a real pickle")
    (folder / "config.json").write_text(json.dumps({"model_type": "llada"}))
    with pytest.raises(FileNotFoundError, match="tokenizer.json") as info:
        load_tokenizer(folder)
    assert str(folder) in str(info.value) and "merges.txt" in str(info.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    (folder / "vocab.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        load_tokenizer(folder)


def test_hub_id_downloads_only_tokenizer_files(monkeypatch: pytest.MonkeyPatch, llada_dir: Path) -> None:
    import huggingface_hub

    calls: list[dict] = []

    def fake_snapshot_download(**kwargs: object) -> str:
        calls.append(kwargs)
        return str(llada_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    tok = load_tokenizer("GSAI-ML/LLaDA-8B-Instruct")
    assert tok.mask_token == "<|mdm_mask|>"
    (call,) = calls
    assert call["repo_id"] == "GSAI-ML/LLaDA-8B-Instruct"
    patterns = set(call["allow_patterns"])
    assert {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "config.json"} <= patterns
    assert not any(p.endswith((".py", ".safetensors", ".bin")) or "*" in p for p in patterns)


def test_hub_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def offline(**kwargs: object) -> str:
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ConnectionError, match="could not be reached.*local checkpoint folder"):
        load_tokenizer("Dream-org/Dream-v0-Instruct-7B")
