"""Reference-exact LLaDA and Dream samplers (``sampling.md``)."""

from .generate import GenerationOutput, generate

__all__ = ["GenerationOutput", "generate"]
