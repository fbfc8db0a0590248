"""Weight formats: one registry of block formats (GGUF types, edgekit's grids), the in-memory form of
block-quantized weights, and their bit packing."""

from edgekit.formats import gguf as _gguf  # noqa: F401  (registers the GGUF block types)
from edgekit.formats.base import FORMATS, BlockFormat, register_parser, weight_format
from edgekit.formats.block_weight import BlockQuantWeight
from edgekit.formats.grid import GridFormat
from edgekit.formats.packing import pack_codes, unpack_codes

__all__ = ["FORMATS", "BlockFormat", "BlockQuantWeight", "GridFormat", "pack_codes", "register_parser",
           "unpack_codes", "weight_format"]
