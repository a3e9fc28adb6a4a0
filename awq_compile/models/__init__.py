"""Models used by the demo, tests and benchmarks: AWQ linears dequantised in plain PyTorch."""

from .awq_linear import AwqLinear, dequantize_awq
from .llama import LlamaConfig, TinyLlama, build_demo_model

__all__ = ["AwqLinear", "dequantize_awq", "LlamaConfig", "TinyLlama", "build_demo_model"]
