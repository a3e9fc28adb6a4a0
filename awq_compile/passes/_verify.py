"""Semantic verification: is this evaluated weight the 4-bit dequantisation of these constants?

Given W (the user's dequantised [K, N] weight, evaluated on the real tensors) and the tensors the
computation read, try every known source layout (:data:`~awq_compile.formats.SOURCE_FORMATS`) with
every role assignment the shapes allow (qweight, qzeros, scales), dequantise our way, and compare:

* bit-exact: ``(q - z) * s`` computed in float32 and rounded once equals W exactly -- the usual case,
  since 4-bit codes times a 16-bit scale are exact in float32;
* within rounding: the graph rounds differently (``q*s - z*s`` in fp16 rounds each product), so
  every element must lie within a few units of rounding of ``16 * |s|``.  A wrong reorder, 3- or
  8-bit packing or non-group scales misses by whole quantisation steps and is refused.

The result names the roles, the layout and the group size, or says why nothing matched.
"""

from __future__ import annotations

import dataclasses
import itertools

import torch

from ..formats.sources import SOURCE_FORMATS, SourceFormat

__all__ = ["Verified", "verify_weight"]

_UNIT_ROUNDOFF = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8, torch.float32: 2.0 ** -24,
                  torch.float64: 2.0 ** -53}
_CHUNK_ELEMS = 1 << 24


@dataclasses.dataclass
class Verified:
    fmt: SourceFormat
    qweight: object       # the leaf nodes (or keys) playing each role
    qzeros: object
    scales: object
    group_size: int
    exact: bool


def _roles(fmt: SourceFormat, leaves: dict, K: int, N: int):
    ints = [k for k, t in leaves.items() if t.dtype == torch.int32 and t.dim() == 2]
    floats = [k for k, t in leaves.items() if t.is_floating_point() and t.dim() == 2 and t.shape[1] == N
              and t.shape[0] > 0 and K % t.shape[0] == 0]
    for qw, s in itertools.product(ints, floats):
        zs = [z for z in ints if z is not qw] if fmt.has_zeros else [None]
        for z in zs:
            if fmt.check(leaves[qw], leaves.get(z) if z is not None else None, leaves[s], K, N) is None:
                yield qw, z, s


def _compare(W: torch.Tensor, fmt: SourceFormat, qweight, qzeros, scales) -> tuple[bool, bool, str]:
    """(matches, exact, detail) comparing W [K, N] with our dequantisation, in row chunks."""
    try:
        u = fmt.to_unpacked(qweight, qzeros, scales)
    except ValueError as e:
        return False, False, str(e)
    K, N = W.shape
    G = u.group_size
    rows = max(G, (_CHUNK_ELEMS // max(N, 1)) // G * G)
    exact = True
    u_round = _UNIT_ROUNDOFF.get(W.dtype, 2.0 ** -11)
    for k0 in range(0, K, rows):
        k1 = min(K, k0 + rows)
        g0, g1 = k0 // G, (k1 + G - 1) // G
        zeros = None if u.zeros is None else u.zeros[g0:g1]
        from ..formats.unpacked import dequantize

        ref = dequantize(u.codes[k0:k1], zeros, u.scales[g0:g1], G, torch.float32)
        got = W[k0:k1].to(torch.float32)
        if exact and torch.equal(ref.to(W.dtype).to(torch.float32), got):
            continue
        exact = False
        bound = 3 * u_round * 16 * u.scales[g0:g1].abs().to(torch.float32).repeat_interleave(G, 0)[: k1 - k0]
        bound = bound + 1e-30
        diff = (got - ref).abs()
        if not bool((diff <= bound).all()):
            bad = int((diff > bound).sum())
            return False, False, (f"{bad} of {diff.numel()} weights in rows {k0}..{k1} differ by more than "
                                  f"rounding (max |diff| {float(diff.max()):.3g})")
    return True, exact, ""


def verify_weight(W: torch.Tensor, leaves: dict) -> Verified | str:
    """``leaves`` maps a key (the leaf node) to its real tensor.  Returns :class:`Verified` or why not."""
    if W.dim() != 2 or not W.is_floating_point():
        return f"the weight is not a 2-D float matrix (found {W.dtype} of shape {tuple(W.shape)})"
    K, N = W.shape
    if not any(t.dtype == torch.int32 for t in leaves.values()):
        kinds = ", ".join(sorted({str(t.dtype).removeprefix('torch.') for t in leaves.values()}))
        return f"not quantized: the weight is computed from {kinds} tensors, no int32 packed codes"
    if K % 8 or N % 8:
        return f"K={K} and N={N} must be multiples of 8 for 4-bit packing"
    misses = []
    for fmt in SOURCE_FORMATS:
        for qw, z, s in _roles(fmt, leaves, K, N):
            ok, exact, detail = _compare(W, fmt, leaves[qw], leaves.get(z) if z is not None else None, leaves[s])
            if ok:
                return Verified(fmt, qw, z, s, K // leaves[s].shape[0], exact)
            misses.append(f"{fmt.name}: {detail}")
    if not misses:
        shapes = ", ".join(f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}" for t in leaves.values())
        return (f"no 4-bit layout fits the tensors read ({shapes}) for a [{K}, {N}] weight: expected AWQ "
                f"qweight int32 [{K}, {N // 8}] or GPTQ qweight int32 [{K // 8}, {N}], float scales "
                f"[K/G, {N}] and int32 qzeros [K/G, {N // 8}]")
    return ("the dequantised weight equals no known 4-bit layout of these tensors (wrong nibble order, "
            "other bit width, non-group scales or an act-order permutation?): " + "; ".join(misses[:3]))
