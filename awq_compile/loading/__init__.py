"""Loading real 4-bit checkpoints (AutoAWQ GEMM, GPTQ, compressed-tensors) and writing AWQ ones.

``load_pretrained`` builds a transformers model whose quantised linears are our plain-PyTorch modules
(:mod:`awq_compile.models`), ready for ``generate()`` compiled with ``backend="awq"``.  See docs/checkpoints.md.
"""

from .load import LoadInfo, load_pretrained, setup_compile
from .quant_config import CheckpointError, LinearScheme, QuantConfig, parse_quant_config, read_quant_config

__all__ = ["CheckpointError", "LinearScheme", "LoadInfo", "QuantConfig", "load_pretrained", "parse_quant_config",
           "read_quant_config", "setup_compile"]
