"""The Triton W4A16 kernels over the standard layout (qweight int32 [K/8, N] packed along K), by family:

``decode.py`` (shared @triton.jit helpers: int4 decode, scale/zero loads, tile order, split-K epilogue),
``gemv.py`` (decode-sized M), ``gemm.py`` (matrix units), ``dequant.py`` (dense weight for BLAS), and
``launch.py`` (runs a :class:`~awq_compile.kernels.spec.LaunchPlan` on tensors; the split-K workspace).
Which kernel runs with which constexprs is decided by the specs in ``kernels/specs/``, not here.
"""
