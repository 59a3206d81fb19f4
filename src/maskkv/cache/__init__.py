"""Caches: the dLLM-Cache feature cache and its per-request engine."""

from .dllm_cache import DLLMCache
from .engine import CachedDenoiser
from .state import CacheStats, LayerCache

__all__ = ["CacheStats", "CachedDenoiser", "DLLMCache", "LayerCache"]
