"""Quantize on export: group-wise int8/4/3/2 weights by round-to-nearest or GPTQ (see docs/cli.md)."""

from edgekit.exporters.quantize.source import QuantizedSource, quantize_source
from edgekit.exporters.quantize.spec import CalibrationConfig, QuantConfig

from edgekit.formats import GridFormat

__all__ = ["CalibrationConfig", "GridFormat", "QuantConfig", "QuantizedSource", "quantize_source"]
