"""Models used by the demo, tests and benchmarks: AWQ linears dequantised in plain PyTorch."""

from .awq_linear import AwqLinear, dequantize_awq
from .gptq_linear import GptqLinear, dequantize_gptq
from .llama import LlamaConfig, TinyLlama, build_demo_model

__all__ = ["AwqLinear", "GptqLinear", "dequantize_awq", "dequantize_gptq", "LlamaConfig", "TinyLlama", "build_demo_model"]
