"""The architecture registry: one module per decoder family, each registering its class on import."""

from edgekit.exporters.arch import llama  # noqa: F401  (registers llama, mistral, qwen2)
from edgekit.exporters.arch.base import ARCHITECTURES, Architecture, Metadata, architecture_class

__all__ = ["ARCHITECTURES", "Architecture", "Metadata", "architecture_class"]
