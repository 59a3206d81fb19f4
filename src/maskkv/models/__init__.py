"""Models: one transformer, per-family adapters, loaders."""

from .config import ModelConfig
from .loading import CheckpointError, load_model, read_config
from .transformer import DiffusionTransformer

__all__ = ["CheckpointError", "DiffusionTransformer", "ModelConfig", "load_model", "read_config"]
