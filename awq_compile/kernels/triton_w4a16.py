"""Triton W4A16 kernels over the standard layout (qweight int32 [K/8, N] packed along K).

Two kernels share one dequantisation step, ``_dequant_tile``:

* ``gemm`` -- tiled, ``tl.dot`` on the matrix units (mma/wgmma on NVIDIA, MFMA/WMMA on AMD), grouped
  program order for L2 reuse, optional split-K.  fp32 accumulation.
* ``gemv`` -- small M (decode): no matrix units, each program owns a BLOCK_N slice of columns and a
  slice of K, multiplies in fp32 and reduces along K with ``tl.sum``.

Split-K partial sums (both kernels) go to an fp32 workspace with ``tl.atomic_add``; the last program
to finish a tile (counted with a per-tile atomic ticket) reads the sum back, adds bias, casts and
writes the output, so no separate reduction pass over [M, N] runs.

Constraints every config obeys (checked by :func:`prune` before a config is offered):
``BLOCK_K`` divides the group size (one scale/zero row per K tile) and K; BLOCK_K % 8 == 0.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["gemm", "gemv", "launch", "prune", "shared_bytes_estimate", "KERNEL_ARGS"]

# Triton reads TRITON_INTERPRET when it is imported; kernels launched under it run on CPU tensors.
_INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _dequant_tile(qw_ptr, qz_ptr, s_ptr, k0, offs_n, mask_n, stride_qk, stride_zg, stride_sg,
                  BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_SIZE: tl.constexpr,
                  HAS_ZEROS: tl.constexpr):
    """fp32 [BLOCK_K, BLOCK_N] weights for rows k0 .. k0+BLOCK_K of the columns offs_n."""
    offs_k8 = k0 // 8 + tl.arange(0, BLOCK_K // 8)
    packed = tl.load(qw_ptr + offs_k8[:, None] * stride_qk + offs_n[None, :], mask=mask_n[None, :], other=0)
    shifts = tl.arange(0, 8) * 4
    q = (packed[:, None, :] >> shifts[None, :, None]) & 0xF
    q = tl.reshape(q, (BLOCK_K, BLOCK_N)).to(tl.float32)
    g = k0 // GROUP_SIZE
    s = tl.load(s_ptr + g * stride_sg + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    if HAS_ZEROS:
        zw = tl.load(qz_ptr + g * stride_zg + offs_n // 8, mask=mask_n, other=0)
        z = ((zw >> ((offs_n % 8) * 4)) & 0xF).to(tl.float32)
    else:
        z = tl.full((BLOCK_N,), 8.0, tl.float32)
    return (q - z[None, :]) * s[None, :]


@triton.jit
def _finish(acc, out_ptr, ws_ptr, lock_ptr, bias_ptr, offs_m, offs_n, M, N, tile_id,
            stride_om, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Write a [BLOCK_M, BLOCK_N] fp32 tile: directly, or through the split-K workspace + ticket."""
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if SPLIT_K > 1:
        ws = ws_ptr + offs_m[:, None] * N + offs_n[None, :]
        tl.atomic_add(ws, acc, mask=mask, sem="release")
        ticket = tl.atomic_add(lock_ptr + tile_id, 1, sem="acq_rel")
        if ticket == SPLIT_K - 1:
            acc = tl.load(ws, mask=mask, other=0.0, cache_modifier=".cg")
            # leave the workspace and ticket zeroed for the next call (no memset launch)
            tl.store(ws, tl.zeros_like(acc), mask=mask)
            tl.atomic_xchg(lock_ptr + tile_id, 0)
        else:
            return
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    out = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gemm_kernel(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr,
                 M, N, K, stride_xm, stride_qk, stride_zg, stride_sg, stride_om,
                 GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, UPCAST_DOT: tl.constexpr):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # grouped order: GROUP_M row-tiles share each column strip while it is in L2
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_tiles = K // BLOCK_K
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    for t in range(pid_k * per_split, min(k_tiles, (pid_k + 1) * per_split)):
        k0 = t * BLOCK_K
        a = tl.load(x_ptr + offs_m[:, None] * stride_xm + (k0 + offs_k)[None, :], mask=mask_m[:, None], other=0.0)
        w = _dequant_tile(qw_ptr, qz_ptr, s_ptr, k0, offs_n, mask_n, stride_qk, stride_zg, stride_sg,
                          BLOCK_K, BLOCK_N, GROUP_SIZE, HAS_ZEROS)
        w = w.to(a.dtype)  # round the weight like the user's dequant did
        if UPCAST_DOT:  # interpreter only: its bf16 dot is wrong; fp32 of bf16 values is the same product
            acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc)
        else:
            acc = tl.dot(a, w, acc)
    _finish(acc, out_ptr, ws_ptr, lock_ptr, bias_ptr, offs_m, offs_n, M, N, pid_m * num_n + pid_n,
            stride_om, SPLIT_K, HAS_BIAS)


@triton.jit
def _gemv_kernel(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, ws_ptr, lock_ptr,
                 M, N, K, stride_xm, stride_qk, stride_zg, stride_sg, stride_om,
                 GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 SPLIT_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_tiles = K // BLOCK_K
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    for t in range(pid_k * per_split, min(k_tiles, (pid_k + 1) * per_split)):
        k0 = t * BLOCK_K
        a = tl.load(x_ptr + offs_m[:, None] * stride_xm + (k0 + offs_k)[None, :], mask=mask_m[:, None],
                    other=0.0).to(tl.float32)
        w = _dequant_tile(qw_ptr, qz_ptr, s_ptr, k0, offs_n, mask_n, stride_qk, stride_zg, stride_sg,
                          BLOCK_K, BLOCK_N, GROUP_SIZE, HAS_ZEROS)
        acc += tl.sum(a[:, :, None] * w[None, :, :], axis=1)
    _finish(acc, out_ptr, ws_ptr, lock_ptr, bias_ptr, offs_m, offs_n, M, N, pid_m * tl.num_programs(0) + pid_n,
            stride_om, SPLIT_K, HAS_BIAS)


KERNELS = {"triton_gemm": _gemm_kernel, "triton_gemv": _gemv_kernel}
# Config keys that are launch options rather than constexpr kernel arguments.
LAUNCH_KEYS = ("num_warps", "num_stages", "waves_per_eu", "matrix_instr_nonkdim", "kpack")
KERNEL_ARGS = {"triton_gemm": ("BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT_K", "GROUP_M"),
               "triton_gemv": ("BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT_K")}


def shared_bytes_estimate(kernel_id: str, cfg: dict, act_bytes: int = 2) -> int:
    """Upper estimate of shared/LDS bytes for a config (pipelined A and packed-B tiles per stage).

    Only a pruning guide: ``check-target`` reads the real figure from the compiled kernel.
    """
    bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    stages = max(1, cfg.get("num_stages", 2))
    if kernel_id == "triton_gemv":
        return 0 if stages <= 1 else (stages - 1) * (bm * bk * act_bytes + bk * bn // 2)
    per_stage = bm * bk * act_bytes + bk * bn // 2
    # the dequantised B operand is staged through shared memory once for the dot
    return max(stages - 1, 1) * per_stage + bk * bn * act_bytes


def prune(kernel_id: str, cfg: dict, *, K: int, N: int, group_size: int, shared_limit: int,
          act_bytes: int = 2) -> str | None:
    """None if ``cfg`` is legal for this problem and target's memory, else the reason it is dropped."""
    bk = cfg["BLOCK_K"]
    if bk % 8 or bk < 16:
        return f"BLOCK_K={bk} must be a multiple of 8 and at least 16"
    if bk > group_size or group_size % bk:
        return f"BLOCK_K={bk} must divide the group size {group_size} (one scale row per K tile)"
    if K % bk:
        return f"BLOCK_K={bk} does not divide K={K}"
    if cfg.get("SPLIT_K", 1) > K // bk:
        return f"SPLIT_K={cfg['SPLIT_K']} exceeds the {K // bk} K tiles"
    if kernel_id == "triton_gemm" and cfg["BLOCK_M"] < 16:
        return "tl.dot needs BLOCK_M >= 16"
    need = shared_bytes_estimate(kernel_id, cfg, act_bytes)
    if shared_limit and need > shared_limit:
        return f"needs ~{need} B of shared memory, target has {shared_limit} B"
    return None


class _Workspace:
    """Per-device fp32 split-K workspace and tile tickets, kept zeroed by the kernels themselves."""

    def __init__(self):
        self._bufs: dict = {}

    def get(self, device, numel: int, tiles: int):
        key = (device.type, device.index)
        ws, lock = self._bufs.get(key, (None, None))
        if ws is None or ws.numel() < numel or lock.numel() < tiles:
            n = max(numel, 0 if ws is None else ws.numel())
            t = max(tiles, 0 if lock is None else lock.numel())
            ws = torch.zeros(max(n, 1), dtype=torch.float32, device=device)
            lock = torch.zeros(max(t, 1), dtype=torch.int32, device=device)
            self._bufs[key] = (ws, lock)
        return ws, lock


_WORKSPACE = None


def _workspace() -> _Workspace:
    global _WORKSPACE
    if _WORKSPACE is None:
        _WORKSPACE = _Workspace()
    return _WORKSPACE


def launch(kernel_id: str, x2d, qweight, qzeros, scales, bias, out, group_size: int, cfg: dict):
    """Run ``kernel_id`` with ``cfg`` on 2-D contiguous-last-dim x [M, K]; writes out [M, N]."""
    M, K = x2d.shape
    N = qweight.shape[1]
    bm, bn, split = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg.get("SPLIT_K", 1)
    tiles_m, tiles_n = triton.cdiv(M, bm), triton.cdiv(N, bn)
    if split > 1:
        ws, lock = _workspace().get(x2d.device, M * N, tiles_m * tiles_n)
    else:
        ws, lock = out, out  # unused
    consts = {k: cfg[k] for k in KERNEL_ARGS[kernel_id] if k in cfg}
    consts.setdefault("SPLIT_K", 1)
    if kernel_id == "triton_gemm":
        consts.setdefault("GROUP_M", 8)
        consts["UPCAST_DOT"] = _INTERPRETER and x2d.dtype == torch.bfloat16
        grid = (tiles_m * tiles_n, split)
    else:
        grid = (tiles_n, split, tiles_m)
    opts = {k: cfg[k] for k in LAUNCH_KEYS if k in cfg and (k in ("num_warps", "num_stages")
                                                            or torch.version.hip)}
    KERNELS[kernel_id][grid](
        x2d, qweight, qzeros if qzeros is not None else qweight, scales,
        bias if bias is not None else scales, out, ws, lock,
        M, N, K, x2d.stride(0), qweight.stride(0),
        qzeros.stride(0) if qzeros is not None else 0, scales.stride(0), out.stride(0),
        GROUP_SIZE=group_size, HAS_ZEROS=qzeros is not None, HAS_BIAS=bias is not None,
        **consts, **opts)
    return out


def gemm(x2d, qweight, qzeros, scales, bias, group_size, cfg, out=None):
    out = out if out is not None else torch.empty((x2d.shape[0], qweight.shape[1]), dtype=x2d.dtype, device=x2d.device)
    return launch("triton_gemm", x2d, qweight, qzeros, scales, bias, out, group_size, cfg)


def gemv(x2d, qweight, qzeros, scales, bias, group_size, cfg, out=None):
    out = out if out is not None else torch.empty((x2d.shape[0], qweight.shape[1]), dtype=x2d.dtype, device=x2d.device)
    return launch("triton_gemv", x2d, qweight, qzeros, scales, bias, out, group_size, cfg)
