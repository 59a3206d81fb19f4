"""Caches: the dLLM-Cache feature cache, Fast-dLLM's block cache, and their per-request engines."""

from .dllm_cache import DLLMCache
from .engine import CachedDenoiser
from .fast_dllm import FastDLLMCache, FastDLLMDenoiser
from .state import CacheStats, LayerCache

__all__ = ["CacheStats", "CachedDenoiser", "DLLMCache", "FastDLLMCache", "FastDLLMDenoiser", "LayerCache"]
