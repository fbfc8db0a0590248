"""Weight formats: the in-memory form of block-quantized weights and their bit packing."""

from edgekit.formats.block_weight import BlockQuantWeight
from edgekit.formats.packing import pack_codes, unpack_codes

__all__ = ["BlockQuantWeight", "pack_codes", "unpack_codes"]
