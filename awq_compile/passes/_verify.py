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

One example proves little when the example is degenerate: a model compiled before its checkpoint is
loaded holds all-zero buffers, whose "dequantisation" is zero in every layout, wrong nibble orders and
3-bit packings included.  So a match on the real tensors is confirmed by a *probe*
(:func:`probe_tensors`): the same subgraph evaluated on random tensors of the matched layout must
equal our dequantisation of those too (``find_awq_linears`` runs it).
"""

from __future__ import annotations

import dataclasses
import itertools

import torch

from ..formats.sources import SOURCE_FORMATS, SourceFormat
from ..formats.unpacked import dequantize

__all__ = ["Verified", "verify_weight", "probe_tensors", "compare", "diagnose"]

_UNIT_ROUNDOFF = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8, torch.float32: 2.0 ** -24,
                  torch.float64: 2.0 ** -53}
_CHUNK_ELEMS = 1 << 24


def _rounding_bound(row_scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Largest |W - (q - z)·s| that a spelling's own rounding explains, per element: a few units of
    rounding of 16·|s| in ``dtype`` (``row_scales`` holds each row's scale, already expanded)."""
    u_round = _UNIT_ROUNDOFF.get(dtype, 2.0 ** -11)
    return 3 * u_round * 16 * row_scales.abs().to(torch.float32) + 1e-30


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
    for k0 in range(0, K, rows):
        k1 = min(K, k0 + rows)
        g0, g1 = k0 // G, (k1 + G - 1) // G
        zeros = None if u.zeros is None else u.zeros[g0:g1]
        ref = dequantize(u.codes[k0:k1], zeros, u.scales[g0:g1], G, torch.float32)
        got = W[k0:k1].to(torch.float32)
        if exact and torch.equal(ref.to(W.dtype).to(torch.float32), got):
            continue
        exact = False
        bound = _rounding_bound(u.scales[g0:g1].repeat_interleave(G, 0)[: k1 - k0], W.dtype)
        diff = (got - ref).abs()
        if not bool((diff <= bound).all()):
            bad = int((~(diff <= bound)).sum())  # NaN counts as differing
            return False, False, (f"{bad} of {diff.numel()} weights in rows {k0}..{k1} differ by more than "
                                  f"rounding (max |diff| {float(diff.max()):.3g})")
    return True, exact, ""


def compare(W: torch.Tensor, fmt: SourceFormat, qweight, qzeros, scales) -> str | None:
    """None if W equals ``fmt``'s dequantisation of these tensors (within rounding), else why not."""
    if not isinstance(W, torch.Tensor) or W.dim() != 2 or not W.is_floating_point():
        return f"expected a 2-D float weight, found {getattr(W, 'dtype', type(W))}"
    try:
        ok, _, detail = _compare(W, fmt, qweight, qzeros, scales)
    except RuntimeError as e:
        return f"{type(e).__name__}: {e}"
    return None if ok else detail


def probe_tensors(fmt: SourceFormat, qweight, qzeros, scales, seed: int = 0x5EED):
    """Random tensors of ``fmt``'s layout with the shapes, dtypes and device of the given ones.

    Every nibble of the codes is uniform in 0..15; zero points in 0..14 (GPTQ v1 stores z - 1, and a
    stored 15 would mean 16); scales positive, of the scales' dtype.  A private generator leaves the
    global random state alone.
    """
    from ..formats.awq import pack_n_sequential

    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-2 ** 31, 2 ** 31 - 1, tuple(qweight.shape), dtype=torch.int32, generator=g)
    z = None
    if qzeros is not None:
        rows, words = qzeros.shape
        z = pack_n_sequential(torch.randint(0, 15, (rows, words * 8), dtype=torch.uint8, generator=g))
    s = torch.rand(tuple(scales.shape), generator=g) * 0.05 + 0.01
    dev = qweight.device
    return q.to(dev), None if z is None else z.to(dev), s.to(device=scales.device, dtype=scales.dtype)


def _groupless_hint(leaves: dict, K: int, N: int) -> str | None:
    """A specific reason when the scales cannot be group-wise for a [K, N] weight."""
    for t in leaves.values():
        if t.is_floating_point() and t.dim() == 2 and t.shape[1] == N and t.shape[0] > 0 and K % t.shape[0]:
            rows = t.shape[0]
            return (f"K={K} is not a multiple of the group size: the {rows} rows of scales do not split the {K} "
                    f"input features into equal groups (expected scales [K/G, {N}] with G dividing K); pad K to "
                    "a multiple of the group size")
    return None


def _ragged_groups(W: torch.Tensor, leaves: dict, K: int, N: int) -> str | None:
    """Is W a 4-bit dequantisation whose last group is cut short (K not a multiple of G)?"""
    ints = [t for t in leaves.values() if t.dtype == torch.int32 and t.dim() == 2]
    floats = [t for t in leaves.values() if t.is_floating_point() and t.dim() == 2 and t.shape[1] == N
              and 1 < t.shape[0] < K]
    got = W.to(torch.float32)
    for fmt in SOURCE_FORMATS:
        for qw in (t for t in ints if tuple(t.shape) == fmt.qweight_shape(K, N)):
            codes = fmt.unpack_weight(qw).to(torch.float32)
            for s in floats:
                rows = s.shape[0]
                zs = [None] if not fmt.has_zeros else [z for z in ints if tuple(z.shape) == (rows, N // 8)]
                for z in zs:
                    try:
                        zeros = None if z is None else fmt.zeros_of(z).to(torch.float32)
                    except ValueError:
                        continue
                    lo, hi = -(-K // rows), -(-K // (rows - 1)) - 1
                    for G in range(lo, hi + 1):
                        if K % G == 0 or -(-K // G) != rows or (G % 8 and hi - lo > 64):
                            continue

                        def fits(cols):
                            zz = 8.0 if zeros is None else zeros[:, cols].repeat_interleave(G, 0)[:K]
                            ss = s[:, cols].to(torch.float32).repeat_interleave(G, 0)[:K]
                            bound = _rounding_bound(ss, W.dtype)
                            return bool(((got[:, cols] - (codes[:, cols] - zz) * ss).abs() <= bound).all())

                        if fits(slice(0, min(N, 64))) and fits(slice(None)):
                            return (f"K={K} is not a multiple of the group size G={G}: the weight is the {fmt.name} "
                                    f"dequantisation with {rows} groups, the last one cut to {K - (rows - 1) * G} "
                                    f"rows; expected G to divide K (the kernels need whole groups). Pad in_features to {rows * G} (zero "
                                    "codes and zero input features) to use this backend")
    return None


def _nonfinite_scales(leaves: dict, N: int) -> str | None:
    """NaN or Inf in a scales-shaped tensor: no layout can be verified, and the reason is the values."""
    for t in leaves.values():
        if t.is_floating_point() and t.dim() == 2 and t.shape[1] == N and t.numel():
            bad = ~torch.isfinite(t)
            if bool(bad.any()):
                n_nan, n_bad = int(t.isnan().sum()), int(bad.sum())
                what = " and ".join(f"{c} {k}" for c, k in ((n_nan, "NaN"), (n_bad - n_nan, "Inf")) if c)
                g, n = (int(i) for i in bad.nonzero()[0])
                return (f"the scales {str(t.dtype).removeprefix('torch.')}{list(t.shape)} hold {what} at compile "
                        f"time (first at [{g}, {n}]), so the dequantisation cannot be verified against any 4-bit "
                        "layout; the layer runs as written. If the checkpoint is loaded after compiling, load it "
                        "first (or torch._dynamo.reset() and compile again once it is loaded)")
    return None


def diagnose(leaves: dict, K: int, N: int, W: torch.Tensor | None = None) -> str | None:
    """A specific, actionable reason for a refusal when one can be read off the tensors."""
    nonfinite = _nonfinite_scales(leaves, N)
    if nonfinite:
        return nonfinite
    if W is not None:
        ragged = _ragged_groups(W, leaves, K, N)
        if ragged:
            return ragged
    hint = _groupless_hint(leaves, K, N)
    if hint:
        return hint
    scale_rows = {t.shape[0] for t in leaves.values()
                  if t.is_floating_point() and t.dim() == 2 and t.shape[1] == N and K % t.shape[0] == 0}
    for t in leaves.values():
        if t.dim() == 1 and t.numel() == K and not t.is_floating_point() and t.dtype != torch.bool:
            for rows in scale_rows:
                trivial = torch.arange(K, device=t.device) // (K // rows)
                if int(t.min()) >= 0 and int(t.max()) < rows and not torch.equal(t.to(torch.int64), trivial):
                    return (f"act-order g_idx: the [{K}] group index is not arange(K) // {K // rows} (rows of K are "
                            f"not grouped contiguously, desc_act=True); expected sorted groups, act-order is not supported. "
                            f"Use a checkpoint quantised with desc_act=False, or reorder the layer's input "
                            f"features so that g_idx is sorted")
    for t in leaves.values():
        if t.dtype == torch.int32 and t.dim() == 2:
            for axis, dim in (("N", 1), ("K", 0)):
                full = K if axis == "K" else N
                if t.shape[dim] and full % t.shape[dim] == 0 and t.shape[1 - dim] == (N if axis == "K" else K):
                    per = full // t.shape[dim]
                    if per in (4, 2, 1):
                        return (f"int32 {list(t.shape)} holds {per} value(s) per word along {axis} "
                                f"({32 // per}-bit packing), expected 8 (4-bit); only 4-bit weights are supported")
    return None


def verify_weight(W: torch.Tensor, leaves: dict) -> Verified | str:
    """``leaves`` maps a key (the leaf node) to its real tensor.  Returns :class:`Verified` or why not."""
    if W.dim() != 2 or not W.is_floating_point():
        return f"the weight is not a 2-D float matrix: expected [K, N] float, found {W.dtype} of shape {tuple(W.shape)}"
    K, N = W.shape
    if not any(t.dtype == torch.int32 for t in leaves.values()):
        kinds = ", ".join(sorted({str(t.dtype).removeprefix('torch.') for t in leaves.values()}))
        return (f"not quantized: the weight is computed from {kinds} tensors; expected int32 packed 4-bit codes "
                "(AWQ or GPTQ layout)")
    if K % 8 or N % 8:
        return f"expected K and N to be multiples of 8 (eight 4-bit codes per int32 word), found K={K}, N={N}"
    misses = []
    for fmt in SOURCE_FORMATS:
        for qw, z, s in _roles(fmt, leaves, K, N):
            ok, exact, detail = _compare(W, fmt, leaves[qw], leaves.get(z) if z is not None else None, leaves[s])
            if ok:
                return Verified(fmt, qw, z, s, K // leaves[s].shape[0], exact)
            misses.append(f"{fmt.name}: {detail}")
    hint = diagnose(leaves, K, N, W)
    if not misses:
        shapes = ", ".join(f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}" for t in leaves.values())
        return ((hint + "; " if hint else "") +
                f"no 4-bit layout fits the tensors read ({shapes}) for a [{K}, {N}] weight: expected AWQ "
                f"qweight int32 [{K}, {N // 8}] or GPTQ qweight int32 [{K // 8}, {N}], float scales "
                f"[K/G, {N}] and int32 qzeros [K/G, {N // 8}]")
    if hint:
        return hint
    return ("the dequantised weight equals no known 4-bit layout of these tensors (expected the AWQ nibble "
            "order [0, 4, 1, 5, 2, 6, 3, 7] along N or sequential nibbles along K, 4-bit codes, and scales "
            "repeated group-wise along K; found a wrong nibble order, another bit width, non-group scales or "
            "an act-order permutation); the layer runs as written. Details: " + "; ".join(misses[:3]))
