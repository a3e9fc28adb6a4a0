"""awq_compile: a torch.compile backend for AWQ 4-bit models.

``torch.compile(model, backend="awq")`` finds the plain-PyTorch AWQ dequant + matmul subgraphs, verifies
them on the real weights, repacks the weights to a standard layout and runs a Triton W4A16 GEMM chosen
for the target (CUDA, ROCm, or a CPU path).  ``awq_compile.explain(model, *args)`` reports what it found.
``awq_compile.load_pretrained(path, device=...)`` loads AWQ / GPTQ / compressed-tensors checkpoints for it.

The package imports lazily: ``import awq_compile`` is cheap (torch's import may load it through the
``torch.backends`` entry point that registers the ``awq`` log name).
"""

__version__ = "0.1.0"

__all__ = ["explain", "export", "awq_backend", "shape_generic", "load_pretrained", "convert_modules", "Target",
           "Options", "Report", "__version__"]


def __getattr__(name):
    if name == "explain":
        from .explaining import explain

        return explain
    if name == "export":
        from .exporting import export

        return export
    if name == "load_pretrained":
        from .loading import load_pretrained

        return load_pretrained
    if name == "convert_modules":
        from .loading.convert import convert_modules

        return convert_modules
    if name == "Report":
        from .report import Report

        return Report
    if name in ("awq_backend", "shape_generic"):
        from . import backend

        return getattr(backend, name)
    if name == "Target":
        from .target import Target

        return Target
    if name == "Options":
        from .options import Options

        return Options
    raise AttributeError(f"module 'awq_compile' has no attribute {name!r}")
