"""The architecture registry: one module per decoder family, each registering its class on import."""

from edgekit.exporters.arch import gemma3, llama, qwen3  # noqa: F401  (each registers its classes)
from edgekit.exporters.arch.base import ARCHITECTURES, Architecture, Metadata, architecture_class

__all__ = ["ARCHITECTURES", "Architecture", "Metadata", "architecture_class"]
