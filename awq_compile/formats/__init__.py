"""Weight layouts: the sources (AWQ, GPTQ), the standard packed layout, torch's CPU int4 layout, and
:func:`convert` between them through one unpacked form.

Nothing here knows about graphs or kernels.  See docs/formats.md for bit diagrams.
"""

from .awq import ORDER, REVERSE, pack_n_interleaved, pack_n_sequential, unpack_n_interleaved, unpack_n_sequential
from .quantize import quantize, to_awq, to_gptq
from .convert import convert
from .packed import Packed
from .sources import SOURCE_FORMATS, SourceFormat, get_format
from .standard import from_unpacked, pack_k, to_unpacked, unpack_k
from .unpacked import SYMMETRIC_ZERO, Unpacked, dequantize

__all__ = [
    "ORDER", "REVERSE", "SOURCE_FORMATS", "SYMMETRIC_ZERO", "SourceFormat", "Packed", "Unpacked",
    "convert", "dequantize", "from_unpacked", "get_format", "pack_k", "pack_n_interleaved", "pack_n_sequential",
    "quantize", "to_awq", "to_gptq", "to_unpacked", "unpack_k", "unpack_n_interleaved", "unpack_n_sequential",
]
