"""maskkv: KV-cache eviction for long-context inference with diffusion LLMs (LLaDA, Dream).

The public surface is small: load a checkpoint and its tokenizer, then generate. Names are
imported lazily so that ``import maskkv`` stays cheap (no transformers import until needed).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "load_model": "maskkv.models.loading",
    "load_tokenizer": "maskkv.models.tokenizer",
    "generate": "maskkv.sampling.generate",
    "GenerationOutput": "maskkv.sampling.generate",
    "DLLMCache": "maskkv.cache.dllm_cache",
    "FastDLLMCache": "maskkv.cache.fast_dllm",
}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'maskkv' has no attribute {name!r}")
