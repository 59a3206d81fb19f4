"""Offline layer-importance profiles (MaskKV Eq. 8, D13): compute, save with the model's identity, load.

``I(l) = 1 - mean_i cos(h_in_i, h_mid_i)`` where ``h_in`` is the residual stream entering layer
``l`` and ``h_mid`` the stream after its attention residual add, over every position of the first
pass (prompt and masks), averaged over calibration samples.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .budgets import layer_importance

if TYPE_CHECKING:
    from ..models.config import ModelConfig
    from ..models.transformer import DiffusionTransformer

PROFILE_FORMAT = "maskkv-layer-profile/1"
_IDENTITY_FIELDS = ("family", "num_layers", "hidden_size", "num_heads", "num_kv_heads", "vocab_size", "intermediate_size")


def model_identity(config: ModelConfig) -> dict[str, object]:
    """Shape fields plus the weight fingerprint the loader recorded."""
    return {**{name: getattr(config, name) for name in _IDENTITY_FIELDS}, "fingerprint": config.fingerprint}


@torch.inference_mode()
def sample_importance(model: DiffusionTransformer, prompt_ids: torch.Tensor, gen_length: int) -> torch.Tensor:
    """Eq. 8 for one prompt ``[1, P]`` followed by ``gen_length`` masks: ``[num_layers]`` fp32."""
    masks = torch.full((prompt_ids.shape[0], gen_length), model.config.mask_token_id, device=prompt_ids.device)
    x_ids = torch.cat([prompt_ids, masks], dim=1)
    rope = model.rope_table(model.default_position_ids(None, x_ids.shape[1]))
    x = model.embed_tokens(x_ids)
    importance = []
    for layer in model.layers:
        q, k, v = layer.qkv(x, rope)
        mid = x + layer.attend(q, k, v, None)
        importance.append(layer_importance(x, mid).mean())
        x = mid + layer.mlp(mid)
    return torch.stack(importance)


def calibrate(
    model: DiffusionTransformer, prompts: Iterable[torch.Tensor], gen_length: int, *, progress: bool = True
) -> list[float]:
    """Mean per-layer importance over calibration prompts (each ``[1, P]`` token ids)."""
    from tqdm.auto import tqdm

    total, count = None, 0
    for ids in tqdm(list(prompts), desc="calibrating", disable=not progress):
        values = sample_importance(model, ids, gen_length).double().cpu()
        total = values if total is None else total + values
        count += 1
    if count == 0:
        raise ValueError("calibration needs at least one prompt")
    return (total / count).tolist()


def save_profile(path: str | Path, config: ModelConfig, importance: list[float], **metadata: object) -> Path:
    """Write the profile JSON with the model identity and any provenance ``metadata``."""
    if len(importance) != config.num_layers:
        raise ValueError(f"profile has {len(importance)} values for a {config.num_layers}-layer model")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": PROFILE_FORMAT, "model": model_identity(config), "importance": importance, **metadata}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def load_profile(path: str | Path, config: ModelConfig) -> torch.Tensor:
    """The ``[num_layers]`` importance of a saved profile, after checking it was made for this model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"layer profile {path} does not exist; make one with `maskkv calibrate`")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"layer profile {path} is not valid JSON: {err}") from err
    if payload.get("format") != PROFILE_FORMAT:
        raise ValueError(f"{path} is not a maskkv layer profile (format {payload.get('format')!r})")
    theirs, ours = payload.get("model", {}), model_identity(config)
    mismatched = [key for key in _IDENTITY_FIELDS if theirs.get(key) != ours[key]]
    if not mismatched and theirs.get("fingerprint") and ours["fingerprint"] and theirs["fingerprint"] != ours["fingerprint"]:
        mismatched = ["fingerprint (same shapes, different weights)"]
    if mismatched:
        raise ValueError(
            f"layer profile {path} was made for another model (differs in {', '.join(mismatched)}); "
            "run `maskkv calibrate` for this checkpoint"
        )
    return torch.tensor(payload["importance"], dtype=torch.float64)


def weight_fingerprint(tensors: Iterable[torch.Tensor]) -> str:
    """A short hash of a few weight tensors' bytes (cheap, identifies a checkpoint)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
