"""Quantised linear layers whose forward spells the 4-bit dequant in one of many real-world ways.

:class:`Spelling` names one choice per axis (shift operator, code dtype, masking, flattening, reorder,
group broadcast, combine, matmul form, input rank, casts, bias, grad mode, scale re-cast) and the source
layout (AWQ, symmetric AWQ-like, GPTQ v1/v2/symmetric, with or without ``g_idx``).  :class:`SpelledLinear`
holds freshly generated random weights in that layout and computes ``y = x @ W (+ bias)`` the chosen way;
its forward is plain PyTorch written from the layout facts (docs/formats.md), not taken from any library.
:func:`reference` computes the same layer in float64 from the *unpacked* codes, independently of any
spelling.

Some axis values are near-misses that compute something else (3- or 8-bit packing, the wrong nibble
order, tiled instead of grouped scales, ...): the backend must refuse them, and
:attr:`Spelling.must_refuse` says whether a spelling is one.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from awq_compile.formats import Unpacked, to_awq, to_gptq
from awq_compile.formats.awq import REVERSE

FORMATS = ("awq", "awq_sym", "gptq_v1", "gptq_v2", "gptq_sym")


@dataclasses.dataclass(frozen=True)
class Spelling:
    fmt: str = "awq"               # one of FORMATS
    shift: str = "fn"              # "fn": torch.bitwise_right_shift | "op": >>
    expand: str = "index"          # "index": t[:, :, None] | "unsqueeze": t.unsqueeze(-1) (K-packed: .expand)
    codes: str = "int8"            # dtype of the codes: "int8" (.to(int8) after the shift) | "int32" | "int64"
    mask: str = "after"            # "after" the reorder | "before" it | "twice" (both)
    mask_op: str = "fn"            # "fn": torch.bitwise_and | "op": &
    flatten: str = "view"          # "view" | "reshape" | "flatten"
    noop_slice: bool = False       # codes[:, :N] / [:K] that changes nothing
    reorder: str = "index"         # AWQ nibble order undone by: "index" (t[:, idx], idx computed) |
                                   # "buffer" (idx a registered buffer) | "index_select" | "view8" (t.view(.., 8)[..., REVERSE])
    group: str = "repeat_interleave"  # "repeat_interleave" | "unflatten" | "view" | "gather" (s[g_idx])
    combine: str = "sub_mul"       # "sub_mul": (q - z) * s | "mul_sub": q * s - z * s
    matmul: str = "matmul"         # "matmul" | "at" (x @ W) | "linear" (F.linear(x, W.t())) | "at_t" (x @ Wnk.t()) | "mm"
    x3d: str = "flat"              # "flat": x.reshape(-1, K) and back | "3d": matmul on the 3-D input
    cast: bool = False             # x.to(scales dtype) in, out.to(input dtype) out
    bias: str = "none"             # "none" | "add" | "iadd" | "add_" | "addmm" | "linear"
    no_grad: bool = False          # the dequant + matmul inside `with torch.no_grad()`
    recast_scales: bool = False    # scales.to(x.dtype) inside forward (GPTQModel AwqTorchLinear style)
    g_idx: str = "none"            # GPTQ: "none" | "trivial" (buffer arange(K) // G) | "act_order" (a permutation)
    # near-misses (each makes the computed weight something other than the 4-bit dequant)
    bits: int = 4                  # 3 or 8: another packing
    wrong_order: bool = False      # AWQ: the packing order used as if it were the unpacking order
    tiled_scales: bool = False     # scales.repeat(K/G, 1) instead of repeat_interleave(G, 0)
    runtime_scale: bool = False    # the weight is multiplied by a function of the input
    ragged: bool = False           # K not a multiple of G: the last group cut short by slicing [:K]

    @property
    def packed_along_k(self) -> bool:
        return self.fmt.startswith("gptq")

    @property
    def has_zeros(self) -> bool:
        return not self.fmt.endswith("sym")

    def must_refuse(self, K: int, G: int) -> bool:
        return (self.bits != 4 or self.wrong_order or self.runtime_scale or self.ragged
                or (self.g_idx == "act_order" and K // G > 1) or (self.tiled_scales and K // G > 1))

    def refusal(self) -> str:
        """A fragment the refusal reason of this near-miss must contain."""
        if self.runtime_scale:
            return "runtime input"
        if self.ragged:
            return "not a multiple of the group size"
        if self.g_idx == "act_order":
            return "act-order"
        return "4-bit"


def normalized(sp: Spelling) -> Spelling:
    """Drop choices that do not apply to the layout (so equal spellings compare equal)."""
    changes = {}
    if sp.packed_along_k:
        changes.update(reorder="index", wrong_order=False)
    else:
        changes.update(g_idx="none")
    if sp.bias in ("addmm",):
        changes.update(x3d="flat")
    if sp.matmul == "mm":
        changes.update(x3d="flat")
    if sp.bias == "linear" and sp.matmul != "linear":
        changes.update(bias="add")
    if sp.bias == "addmm" and sp.matmul not in ("matmul", "at", "mm"):
        changes.update(bias="add")
    if sp.bits != 4:
        changes.update(fmt="awq" if sp.has_zeros else "awq_sym", reorder="index", wrong_order=False)
    if sp.g_idx != "none" and sp.packed_along_k:
        changes.update(group="gather")
    if sp.ragged:
        changes.update(tiled_scales=False, bits=4, noop_slice=False)
        if changes.get("group", sp.group) in ("unflatten", "view"):
            changes.update(group="repeat_interleave")
    if sp.recast_scales:
        changes.update(cast=False)
    return dataclasses.replace(sp, **changes)


# ---------------------------------------------------------------------------------------------- weights

def random_unpacked(K: int, N: int, G: int, *, symmetric: bool, dtype=torch.float16, generator=None,
                    min_zero: int = 0) -> Unpacked:
    """Uniform random codes and zeros (``min_zero=1`` for GPTQ v1, which cannot store a zero point of 0)."""
    g = generator
    codes = torch.randint(0, 16, (K, N), dtype=torch.uint8, generator=g)
    zeros = None if symmetric else torch.randint(min_zero, 16, (K // G, N), dtype=torch.uint8, generator=g)
    scales = (torch.rand(K // G, N, generator=g) * 0.02 + 0.002).to(dtype)
    return Unpacked(codes, zeros, scales, G)


def _pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [R, C] -> int32 [R, C / (32 // bits)], sequential, for the 3/8-bit near-misses."""
    per = 32 // bits
    R, C = codes.shape
    words = torch.zeros(R, C // per, dtype=torch.int64)
    c = codes.to(torch.int64).view(R, C // per, per)
    for i in range(per):
        words |= (c[:, :, i] & ((1 << bits) - 1)) << (bits * i)
    return (words - ((words >= 2 ** 31).to(torch.int64) << 32)).to(torch.int32)


class SpelledLinear(nn.Module):
    """``y = x @ W + bias`` with W dequantised from packed 4-bit buffers the way ``sp`` says (K = in, N = out)."""

    def __init__(self, sp: Spelling, K: int, N: int, G: int, *, dtype=torch.float16, bias=None, seed: int = 0):
        super().__init__()
        self.sp, self.K, self.N, self.G = sp, K, N, G
        gen = torch.Generator().manual_seed(seed)
        K_full = -(-K // G) * G  # == K unless ragged
        if sp.ragged:
            u = random_unpacked(K_full, N, G, symmetric=not sp.has_zeros, dtype=dtype, generator=gen,
                                min_zero=1 if sp.fmt == "gptq_v1" else 0)
        elif sp.bits == 4:
            u = random_unpacked(K, N, G, symmetric=not sp.has_zeros, dtype=dtype, generator=gen,
                                min_zero=1 if sp.fmt == "gptq_v1" else 0)
        else:  # near-miss: codes of another width (still kept in u for the reference)
            hi = 1 << sp.bits
            codes = torch.randint(0, hi, (K, N), dtype=torch.uint8, generator=gen)
            zeros = torch.randint(0, hi, (K // G, N), dtype=torch.uint8, generator=gen) if sp.has_zeros else None
            u = Unpacked(codes, zeros, (torch.rand(K // G, N, generator=gen) * 0.02 + 0.002).to(dtype), G)
        self.unpacked = u
        if sp.bits != 4:
            per = 32 // sp.bits
            N_pad = -(-N // per) * per
            codes = torch.zeros(K, N_pad, dtype=torch.uint8)
            codes[:, :N] = u.codes
            self.register_buffer("qweight", _pack_bits(codes, sp.bits))
            if u.zeros is not None:
                z = torch.zeros(K // G, N_pad, dtype=torch.uint8)
                z[:, :N] = u.zeros
                self.register_buffer("qzeros", _pack_bits(z, sp.bits))
            else:
                self.qzeros = None
            self.scales_ = None
            self.register_buffer("scales", u.scales)
        elif sp.packed_along_k:
            qw, qz, s = to_gptq(u, v1=sp.fmt == "gptq_v1")
            self.register_buffer("qweight", qw[: K // 8].clone())
            self.register_buffer("qzeros", qz) if qz is not None else setattr(self, "qzeros", None)
            self.register_buffer("scales", s)
        else:
            qw, qz, s = to_awq(u)
            self.register_buffer("qweight", qw[:K].clone())
            self.register_buffer("qzeros", qz) if qz is not None else setattr(self, "qzeros", None)
            self.register_buffer("scales", s)
        if sp.g_idx == "trivial":
            self.register_buffer("g_idx", torch.arange(K, dtype=torch.int32) // G)
        elif sp.g_idx == "act_order":
            perm = torch.randperm(K, generator=gen)
            self.register_buffer("g_idx", (perm // G).to(torch.int32))
        if sp.reorder == "buffer" and not sp.packed_along_k:
            self.register_buffer("reorder_idx", self._reverse_index(N, torch.device("cpu")))
        if bias is not None:
            self.register_buffer("bias", bias.to(dtype))
        else:
            self.bias = None

    # ----------------------------------------------------------------------------------- pieces
    def _reverse_index(self, N, device):
        order = self.sp.wrong_order and [0, 2, 4, 6, 1, 3, 5, 7] or list(REVERSE)
        base = torch.arange(N, device=device).view(-1, 8)
        return base[:, order].reshape(-1)

    def _shifts(self, device):
        sp = self.sp
        dtype = torch.int32 if sp.codes == "int32" else torch.int64
        return torch.arange(0, 32 - (32 % sp.bits), sp.bits, dtype=dtype, device=device)

    def _shift(self, t, s):
        return torch.bitwise_right_shift(t, s) if self.sp.shift == "fn" else t >> s

    def _mask(self, t):
        m = (1 << self.sp.bits) - 1
        return torch.bitwise_and(t, m) if self.sp.mask_op == "fn" else t & m

    def _flat(self, t, rows):
        f = self.sp.flatten
        if f == "view":
            return t.view(rows, -1)
        if f == "reshape":
            return t.reshape(rows, -1)
        return t.flatten(1)

    def _unpack_n(self, packed, rows):
        """[rows, W] words packed along N -> [rows, N] codes (AWQ order undone unless sp says otherwise)."""
        sp = self.sp
        s = self._shifts(packed.device)
        if sp.expand == "index":
            c = self._shift(packed[:, :, None], s[None, None, :])
        else:
            c = self._shift(packed.unsqueeze(-1), s.view(1, 1, -1))
        if sp.codes == "int8":
            c = c.to(torch.int8)
        if sp.mask in ("before", "twice"):
            c = self._mask(c)
        c = self._flat(c, rows)
        if sp.noop_slice or sp.bits != 4:
            c = c[:, : self.N]
        if not sp.packed_along_k and sp.bits == 4:
            c = self._reorder(c, rows)
        if sp.mask in ("after", "twice"):
            c = self._mask(c)
        return c

    def _reorder(self, c, rows):
        sp = self.sp
        if sp.reorder == "buffer":
            return c[:, self.reorder_idx]
        if sp.reorder == "view8":
            order = [0, 2, 4, 6, 1, 3, 5, 7] if sp.wrong_order else list(REVERSE)
            return c.view(rows, -1, 8)[:, :, order].reshape(rows, -1)
        idx = self._reverse_index(self.N, c.device)
        if sp.reorder == "index_select":
            return torch.index_select(c, 1, idx)
        return c[:, idx]

    def _unpack_k(self, packed):
        """[K/8, N] words packed along K -> [K, N] codes."""
        sp = self.sp
        s = self._shifts(packed.device)
        if sp.expand == "index":
            c = self._shift(packed[:, None, :], s[None, :, None])
        else:
            c = self._shift(packed.unsqueeze(1).expand(-1, s.numel(), -1), s.view(1, -1, 1))
        if sp.codes == "int8":
            c = c.to(torch.int8)
        if sp.mask in ("before", "twice"):
            c = self._mask(c)
        c = c.reshape(self.K, -1) if sp.flatten == "reshape" else c.view(self.K, -1) if sp.flatten == "view" \
            else c.flatten(0, 1)
        if sp.noop_slice:
            c = c[: self.K]
        if sp.mask in ("after", "twice"):
            c = self._mask(c)
        return c

    def _zeros(self, groups):
        """[K/G, N] integer zero points, or the symmetric implicit 8."""
        sp = self.sp
        if not sp.has_zeros:
            return 8
        if sp.packed_along_k:  # GPTQ zeros are packed along N, sequential
            s = self._shifts(self.qzeros.device)
            z = self._mask(self._shift(self.qzeros[:, :, None], s[None, None, :])).view(groups, -1)
            if sp.codes == "int8":
                z = z.to(torch.int8)
            return z + 1 if sp.fmt == "gptq_v1" else z
        return self._unpack_n(self.qzeros, groups)

    def dequant(self, dtype):
        """The [K, N] weight."""
        sp, K, G = self.sp, self.K, self.G
        groups = self.scales.shape[0]
        q = self._unpack_k(self.qweight) if sp.packed_along_k else self._unpack_n(self.qweight, K)
        z = self._zeros(groups)
        s = self.scales.to(dtype) if sp.recast_scales else self.scales
        sym = isinstance(z, int)
        if sp.tiled_scales:
            zz = z if sym else z.repeat(G, 1)
            ss = s.repeat(G, 1)
            return (q - zz) * ss if sp.combine == "sub_mul" else q * ss - zz * ss
        if sp.group in ("repeat_interleave", "gather"):
            if sp.group == "gather":
                g_idx = self.g_idx if hasattr(self, "g_idx") else torch.arange(K, device=q.device) // G
                zz = z if sym else z[g_idx]
                ss = s[g_idx]
            else:
                zz = z if sym else z.repeat_interleave(G, dim=0)
                ss = s.repeat_interleave(G, dim=0)
                if sp.ragged:
                    zz = zz if sym else zz[:K]
                    ss = ss[:K]
            return (q - zz) * ss if sp.combine == "sub_mul" else q * ss - zz * ss
        q3 = q.unflatten(0, (K // G, G)) if sp.group == "unflatten" else q.view(K // G, G, -1)
        zz = z if sym else z[:, None, :]
        ss = s[:, None, :]
        w = (q3 - zz) * ss if sp.combine == "sub_mul" else q3 * ss - zz * ss
        return w.reshape(K, -1)

    def _matmul(self, x, dtype):
        sp = self.sp
        w = self.dequant(dtype)
        if sp.runtime_scale:
            w = w * x.abs().mean()
        bias = self.bias if self.bias is None or not sp.recast_scales else self.bias.to(dtype)
        if sp.bias == "addmm":
            return torch.addmm(bias, x, w), True
        if sp.matmul == "matmul":
            return torch.matmul(x, w), False
        if sp.matmul == "at":
            return x @ w, False
        if sp.matmul == "mm":
            return torch.mm(x, w), False
        if sp.matmul == "linear":
            if sp.bias == "linear":
                return F.linear(x, w.t(), bias), True
            return F.linear(x, w.t()), False
        w_nk = w.t().contiguous()
        return x @ w_nk.t(), False

    def forward(self, x):
        sp = self.sp
        in_dtype = x.dtype
        out_shape = x.shape[:-1] + (self.N,)
        dtype = x.dtype if sp.recast_scales else self.scales.dtype
        if sp.cast:
            x = x.to(self.scales.dtype)
        if sp.x3d == "flat":
            x = x.reshape(-1, self.K)
        if sp.no_grad:
            with torch.no_grad():
                out, has_bias = self._matmul(x, dtype)
        else:
            out, has_bias = self._matmul(x, dtype)
        if self.bias is not None and not has_bias:
            bias = self.bias.to(dtype) if sp.recast_scales else self.bias
            if sp.bias == "iadd":
                out += bias
            elif sp.bias == "add_":
                out.add_(bias)
            else:
                out = out + bias
        if sp.x3d == "flat":
            out = out.reshape(out_shape)
        if sp.cast:
            out = out.to(in_dtype)
        return out


def reference(mod: SpelledLinear, x: torch.Tensor) -> torch.Tensor:
    """float64 ``x @ ((q - z) * s) + b`` from the unpacked codes, independent of the spelling."""
    u, K = mod.unpacked, mod.K
    G = u.group_size
    q = u.codes.double()[:K]
    z = 8.0 if u.zeros is None else u.zeros.double().repeat_interleave(G, 0)[:K]
    w = (q - z) * u.scales.double().repeat_interleave(G, 0)[:K]
    if mod.sp.g_idx == "act_order":
        g = mod.g_idx.long()
        zz = 8.0 if u.zeros is None else u.zeros.double()[g]
        w = (q - zz) * u.scales.double()[g]
    y = x.double() @ w
    if mod.bias is not None:
        y = y + mod.bias.double().to(y.device)
    return y
