"""Pure-PyTorch Transformer components that compose into comparable models.

``from variants import ModelConfig, build_model, REGISTRIES``
"""

# Importing the component modules registers their entries.
from variants import attention, ffn, init, norms, positions  # noqa: F401
from variants.attention import KVCache
from variants.config import ModelConfig
from variants.models import DecoderLM, EncoderDecoder, build_model
from variants.registry import REGISTRIES, Registry

__all__ = ["ModelConfig", "build_model", "REGISTRIES", "Registry", "DecoderLM", "EncoderDecoder",
           "KVCache"]
