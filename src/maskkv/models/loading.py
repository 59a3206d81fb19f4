"""Load LLaDA and Dream checkpoints: local folders or hub ids, safetensors only, no remote code.

Weights are read tensor by tensor from (possibly sharded) safetensors files and assigned to a model
built on the meta device, so no second full copy of the weights is ever alive (``models.md`` 5).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import safetensors
from safetensors import safe_open

from ..validation import check_number
from . import dream, llada
from .config import ModelConfig
from .transformer import DiffusionTransformer, PackedLMHead, can_pack_lm_head

logger = logging.getLogger(__name__)

ADAPTERS: dict[str, ModuleType] = {llada.MODEL_TYPE: llada, dream.MODEL_TYPE: dream}
_HUB_PATTERNS = ["*.json", "*.safetensors", "merges.txt", "vocab.json", "*.jinja"]


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded as it is; the message says what to do."""


# The weight dtypes a user can name (``--dtype``, ``dtype=`` in model_args), by name.
WEIGHT_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

def _looks_like_hub_id(text: str) -> bool:
    """Hub ids are exactly ``owner/name``; anything else is a local path."""
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and "\\" not in text


def resolve_checkpoint(
    path_or_hub_id: str | Path, allow_patterns: list[str] | tuple[str, ...] | None = None, *, what: str = "checkpoint"
) -> Path:
    """A local folder as is, or a hub id downloaded (only ``allow_patterns``) through huggingface_hub.

    Raises FileNotFoundError for a missing local folder and ConnectionError when the hub cannot serve
    the id (offline, unknown or gated repository).
    """
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the checkpoint folder that holds the {what} files")
    text = str(path_or_hub_id)
    if isinstance(path_or_hub_id, Path) or not _looks_like_hub_id(text):
        raise FileNotFoundError(
            f"{what} folder {text} does not exist; pass an existing checkpoint folder or a hub id like "
            "'GSAI-ML/LLaDA-8B-Instruct'"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=text, allow_patterns=list(allow_patterns or _HUB_PATTERNS)))
    except Exception as err:  # offline, unknown repo, gated...
        raise ConnectionError(
            f"could not fetch the {what} files of {text!r} from the Hugging Face hub ({type(err).__name__}: "
            f"{err}); the hub could not be reached or the repository is not available, and no local folder "
            f"named {text!r} exists: download it elsewhere and pass the local checkpoint folder instead"
        ) from err


def read_config(folder: Path, *, rope_scaling_factor: float = 1.0) -> ModelConfig:
    """``config.json`` -> :class:`ModelConfig` through the family adapter named by ``model_type``."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder} has no config.json; is this a Hugging Face checkpoint folder?")
    raw = _json_object(config_path)
    model_type = raw.get("model_type")
    if model_type not in ADAPTERS:
        raise CheckpointError(
            f"{config_path}: unknown model_type {model_type!r}; maskkv supports {sorted(ADAPTERS)}"
        )
    adapter = ADAPTERS[model_type]
    config = adapter.config_from_dict(raw, source=str(config_path))
    eot = config.eot_token_id if config.eot_token_id is not None else _special_token_id(folder, adapter.EOT_TOKEN)
    return replace(config, eot_token_id=eot, rope_scaling_factor=rope_scaling_factor, name=str(folder))


def _json_object(path: Path) -> dict[str, Any]:
    """A JSON object file of the checkpoint, or a :class:`CheckpointError` naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); re-download or re-create the file") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(data).__name__}; re-download the file")
    return data


def _special_token_id(folder: Path, token: str) -> int | None:
    """The id of an added token, read from tokenizer.json or tokenizer_config.json when present."""
    tok_json = folder / "tokenizer.json"
    if tok_json.is_file():
        for entry in _json_object(tok_json).get("added_tokens", []):
            if isinstance(entry, dict) and entry.get("content") == token:
                return int(entry["id"])
    tok_config = folder / "tokenizer_config.json"
    if tok_config.is_file():
        for idx, entry in _json_object(tok_config).get("added_tokens_decoder", {}).items():
            if isinstance(entry, dict) and entry.get("content") == token:
                return int(idx)
    return None


@contextmanager
def _open_safetensors(path: Path) -> Iterator[Any]:
    """``safe_open(path)`` whose header and tensor errors name the file and say what to do."""
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            yield f
    except (safetensors.SafetensorError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise CheckpointError(
            f"{path} is not a valid safetensors file ({err}); it is probably truncated or corrupt (an interrupted "
            "download or copy): delete it and download or copy it again"
        ) from err


def _weight_files(folder: Path) -> dict[str, list[str]]:
    """Shard file -> tensor names, from the index file or the single ``model.safetensors``."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _json_object(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no 'weight_map' object")
        shards: dict[str, list[str]] = defaultdict(list)
        for name, shard in weight_map.items():
            shards[shard].append(name)
        for shard in shards:
            if not (folder / shard).is_file():
                raise CheckpointError(f"{index} lists shard {shard}, which is missing from {folder}")
        return dict(shards)
    single = folder / "model.safetensors"
    if single.is_file():
        with _open_safetensors(single) as f:
            return {single.name: list(f.keys())}
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth")):
        raise CheckpointError(
            f"{folder} holds only pickled weights (*.bin/*.pt), which maskkv never unpickles. Convert them "
            "once with a trusted tool, e.g. `python -c \"import torch, safetensors.torch as st; "
            "st.save_file(torch.load('pytorch_model.bin', weights_only=True), 'model.safetensors', "
            "metadata={'format': 'pt'})\"` (shard it if it is large), then load the folder again."
        )
    raise CheckpointError(f"{folder} has no model.safetensors or model.safetensors.index.json")


def load_model(
    path_or_hub_id: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    rope_scaling_factor: float = 1.0,
) -> DiffusionTransformer:
    """Load a LLaDA or Dream checkpoint into a :class:`DiffusionTransformer` in eval mode.

    ``dtype=None`` means float32 on CPU (bf16 matmuls are very slow there) and bfloat16 elsewhere.
    ``rope_scaling_factor`` multiplies ``rope_theta`` (LongLLaDA NTK scaling, ``models.md`` 6).
    """
    check_number("rope_scaling_factor", rope_scaling_factor, low=0.0, low_open=True, hint="1 leaves rope_theta as is")
    folder = resolve_checkpoint(path_or_hub_id)
    config = read_config(folder, rope_scaling_factor=rope_scaling_factor)
    device = torch.device(device)
    if dtype is None:
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    key_map = ADAPTERS["llada" if config.family == "llada" else "Dream"].checkpoint_keys(config)
    # An untied fp32 CPU head becomes a PackedLMHead as it is read, so the dense head never needs memory of
    # its own beside the packed copy.
    pack_head = not config.tie_word_embeddings and can_pack_lm_head(torch.empty(0, dtype=dtype, device=device))

    with torch.device("meta"):
        model = DiffusionTransformer(config)
    params = dict(model.named_parameters())
    found: set[str] = set()
    unexpected: list[str] = []
    for shard, names in _weight_files(folder).items():
        with _open_safetensors(folder / shard) as f:
            for name in names:
                ours = key_map.get(name)
                if ours is None:
                    unexpected.append(name)
                    continue
                tensor = f.get_tensor(name)
                expected = tuple(params[ours].shape)
                if tuple(tensor.shape) != expected:
                    raise CheckpointError(
                        f"{folder / shard}: tensor {name} has shape {tuple(tensor.shape)}, but config.json "
                        f"implies {expected}; the weights and config.json do not belong together"
                    )
                tensor = tensor.to(device=device, dtype=dtype)
                if ours == "lm_head.weight" and pack_head:
                    model.lm_head = PackedLMHead(tensor)
                    found.add(name)
                    continue
                if tensor.data_ptr() % 64:  # a view into the mmapped file: give it its own aligned memory
                    tensor = tensor.clone()
                _assign(model, ours, tensor)
                found.add(name)
    missing = sorted(set(key_map) - found)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CheckpointError(f"{folder}: checkpoint is missing tensor(s) {shown}")
    if unexpected:
        shown = ", ".join(sorted(unexpected)[:5])
        raise CheckpointError(
            f"{folder}: unexpected tensor(s) {shown} for model_type {config.family!r}; "
            "is config.json from another architecture?"
        )
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    from ..presses.profile import weight_fingerprint

    fingerprint = weight_fingerprint([model.embed_tokens.weight[:4], model.final_norm.weight, model.layers[0].q_proj.weight[:4]])
    model.config = replace(config, fingerprint=fingerprint)
    for layer in model.layers:
        layer.config = model.config
    model.to(device)  # rebuilds the fp32 RoPE frequencies on the device
    return model.eval().requires_grad_(False)


def _assign(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    setattr(module, attr, torch.nn.Parameter(tensor, requires_grad=False))
