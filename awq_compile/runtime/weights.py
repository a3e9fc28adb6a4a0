"""Repacked weights, looked up by the source tensors the compiled code actually passes.

Dynamo reuses one compiled graph for every instance of a module class (and for per-block compiles),
handing the *current* module's buffers to the compiled code as inputs.  So repacked weights cannot be
baked into the graph: the op looks them up here, keyed on the identity of the source tensors
(storage, offset, shape, dtype, device) and validated against their version counters, so

* a second model instance, or another block sharing the compiled graph, gets its own repack;
* an in-place reload (``load_state_dict``, ``copy_``) bumps the version and triggers a fresh repack;
* a freed model's entries expire (weak references to the storages) instead of aliasing new tensors
  that happen to reuse the address.

The cache holds only what it derived (standard-layout qweight and zeros, kernel-specific forms); tensors
usable as they are (scales, an already-standard qweight) are taken from the op's arguments at call time,
so the cache never keeps a user's model alive.

Memory: by default the repacked copy lives beside the user's AWQ buffers (about 2x the weight memory).
With ``reuse=True`` (the backend's opt-in ``reuse_weight_memory`` option) an AWQ-layout ``qweight`` /
``qzeros`` is rewritten *in place*, chunk by chunk, into the standard layout -- the two layouts have the
same number of int32 words and a chunk of K rows occupies the same memory range in both -- so nothing
beyond one chunk's temporaries is ever allocated and the weights held stay at 1.0x the AWQ size.  The
user's tensors then hold standard-layout bits (their eager dequant is no longer valid); their storages
are remembered so that they are never converted twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import weakref

import torch
from torch.multiprocessing.reductions import StorageWeakRef

from ..formats.sources import chunk_rows, get_format

__all__ = ["Prepared", "WeightCache", "weight_cache", "digest"]


def _version(t: torch.Tensor):
    try:
        return t._version
    except RuntimeError:  # inference tensors carry no version counter
        return None


def _ident(t: torch.Tensor) -> tuple:
    return (t.device.type, t.device.index, t.data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
            t.dtype)


def digest(tensors) -> str:
    """Content hash of small auxiliary tensors (reorder indices, g_idx) the verifier relied on."""
    h = hashlib.sha1()
    for t in tensors:
        c = t.detach().contiguous().cpu()
        h.update(str((c.dtype, tuple(c.shape))).encode())
        h.update(c.view(torch.uint8).numpy().tobytes() if c.numel() else b"")
    return h.hexdigest()[:16]


@dataclasses.dataclass
class Prepared:
    """Derived tensors for one layer; ``None`` fields mean 'use the op's argument as it is'."""

    fmt: str
    group_size: int
    qweight: torch.Tensor | None      # int32 [K/8, N]
    qzeros: torch.Tensor | None       # int32 [K/G, N/8] (None with has_zeros=False)
    has_zeros: bool
    extra: dict = dataclasses.field(default_factory=dict)   # kernel id -> kernel-specific form
    in_place: bool = False            # the op's own qweight/qzeros hold the standard layout (reuse)

    def standard(self, qweight, scales, qzeros=None):
        """(qweight_std, qzeros_std, scales) for the kernels."""
        if self.in_place:
            # views of the arguments: the cache keeps no reference to the user's storage
            K, W = qweight.shape
            return qweight.view(K // 8, W * 8), (qzeros if self.has_zeros else None), scales
        return (self.qweight if self.qweight is not None else qweight,
                self.qzeros if self.has_zeros else None, scales)

    def nbytes(self) -> int:
        n = sum(t.numel() * t.element_size() for t in (self.qweight, self.qzeros) if t is not None)
        for v in self.extra.values():
            for t in (v if isinstance(v, tuple) else (v,)):
                if isinstance(t, torch.Tensor):
                    n += t.numel() * t.element_size()
        return n


# storages rewritten in place into the standard layout:
# (cdata, offset, shape) -> (weak ref of the storage, version counter right after the rewrite)
_REWRITTEN: dict[tuple, tuple] = {}


def _rewritten_key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage()._cdata, t.storage_offset(), tuple(t.shape))


def was_rewritten(t: torch.Tensor | None) -> bool:
    """True when ``t``'s memory holds what :func:`repack_in_place` wrote and nothing has written since
    (a later ``load_state_dict`` puts AWQ bits back and bumps the version: then it is AWQ again)."""
    if t is None:
        return False
    key = _rewritten_key(t)
    rec = _REWRITTEN.get(key)
    if rec is None:
        return False
    ref, version = rec
    if ref.expired() or version != _version(t):
        del _REWRITTEN[key]
        return False
    return True


def repack_in_place(src, qweight: torch.Tensor, qzeros: torch.Tensor | None, *, rows: int | None = None):
    """Rewrite AWQ (N-packed) ``qweight``/``qzeros`` into the standard layout in their own memory.

    Returns ``(qweight_std, qzeros_std)``: views [K/8, N] and [K/G, N/8] of the same storages.  Row chunks of
    K are converted through a temporary copy of the chunk only (no full-size temporaries).
    """
    from ..formats.standard import pack_k
    from ..formats.awq import pack_n_sequential

    if not qweight.is_contiguous() or (qzeros is not None and not qzeros.is_contiguous()):
        raise ValueError("in-place repack needs contiguous qweight/qzeros")
    K, W = qweight.shape
    N = W * 8
    if rows is None:
        rows = chunk_rows(K, N)
    flat = qweight.view(-1)
    with torch.no_grad():
        for k0 in range(0, K, rows):
            k1 = min(K, k0 + rows)
            block = pack_k(src.unpack_weight(qweight[k0:k1]))      # [(k1-k0)/8, N]; reads before the write
            flat[k0 * W:k1 * W].copy_(block.view(-1))
        q_std = flat.view(K // 8, N)
        z_std = None
        if qzeros is not None:
            z = pack_n_sequential(src.zeros_of(qzeros))
            qzeros.copy_(z)
            z_std = qzeros
    for t in (qweight, qzeros):
        if t is not None:
            _REWRITTEN[_rewritten_key(t)] = (StorageWeakRef(t.untyped_storage()), _version(t))
    for k in [k for k, (r, _) in _REWRITTEN.items() if r.expired()]:
        del _REWRITTEN[k]
    return q_std, z_std


class _Entry:
    __slots__ = ("refs", "versions", "prepared")

    def __init__(self, sources, prepared):
        self.refs = [StorageWeakRef(t.untyped_storage()) for t in sources]
        self.versions = [_version(t) for t in sources]
        self.prepared = prepared

    def valid_for(self, sources) -> bool:
        for ref, ver, t in zip(self.refs, self.versions, sources):
            if ref.expired() or ref.cdata != t.untyped_storage()._cdata or ver != _version(t):
                return False
        return True

    def expired(self) -> bool:
        return any(r.expired() for r in self.refs)


class WeightCache:
    def __init__(self):
        self._entries: dict[tuple, _Entry] = {}
        self._lock = threading.Lock()
        self.repacks = 0  # how many conversions ran (tests and explain read it)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def nbytes(self) -> int:
        return sum(e.prepared.nbytes() for e in self._entries.values())

    def get(self, fmt: str, qweight, qzeros, scales, aux=(), *, aux_digest: str = "", layer: str = "",
            reuse: bool = False) -> Prepared:
        """The prepared weights of one layer.  ``reuse=True`` allows rewriting AWQ-layout source buffers in
        place (see the module docstring); it only matters on the call that repacks."""
        sources = [t for t in (qweight, qzeros, scales, *aux) if t is not None]
        key = (fmt,) + tuple(_ident(t) for t in sources)
        entry = self._entries.get(key)
        if entry is not None and entry.valid_for(sources):
            return entry.prepared
        return self._insert(key, fmt, qweight, qzeros, scales, aux, sources, aux_digest, layer, reuse)

    def _insert(self, key, fmt, qweight, qzeros, scales, aux, sources, aux_digest, layer, reuse=False) -> Prepared:
        if qweight.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"awq_compile: layer '{layer}': its weights were not repacked before CUDA-graph capture "
                "(new or modified weight tensors reached a captured graph); run the model once eagerly "
                "with these weights before capturing")
        if aux and aux_digest and digest(aux) != aux_digest:
            raise RuntimeError(
                f"awq_compile: layer '{layer}': an auxiliary tensor of the dequantisation (reorder index or "
                "g_idx) differs from the one verified at compile time; the rewrite is not valid for these "
                "weights. Recompile (torch._dynamo.reset()) or keep those tensors identical across instances")
        src = get_format(fmt)
        zeros_src = qzeros if src.has_zeros else None
        # already rewritten in place by an earlier repack and untouched since (its entry was dropped)
        rewritten = src.packed_along == "N" and was_rewritten(qweight) and (
            zeros_src is None or was_rewritten(zeros_src))
        can_rewrite = reuse and src.packed_along == "N" and qweight.is_contiguous() and (
            qzeros is None or qzeros.is_contiguous())
        if rewritten or can_rewrite:
            if not rewritten:
                repack_in_place(src, qweight, zeros_src)  # _Entry below records the versions after the write
            prepared = Prepared(fmt, qweight.shape[0] // scales.shape[0], None, None, src.has_zeros, in_place=True)
        else:
            with torch.no_grad():
                std = src.to_standard(qweight, qzeros, scales)
            prepared = Prepared(fmt, std.group_size, None if std.qweight is qweight else std.qweight,
                                std.qzeros, src.has_zeros)
        if qweight.is_cuda:
            # the split-K workspace must exist before any CUDA-graph warm-up or capture runs the kernels
            from ..kernels.triton.launch import reserve_workspace
            reserve_workspace(qweight.device, scales.shape[1])
        with self._lock:
            for k in [k for k, e in self._entries.items() if e.expired()]:
                del self._entries[k]
            self._entries[key] = _Entry(sources, prepared)
            self.repacks += 1
        return prepared


_CACHE: WeightCache | None = None
_CACHE_LOCK = threading.Lock()


def weight_cache() -> WeightCache:
    """The process-wide cache the custom op uses (created on first use)."""
    global _CACHE
    if _CACHE is None:
        with _CACHE_LOCK:
            if _CACHE is None:
                _CACHE = WeightCache()
    return _CACHE


# keep weakref imported for readers looking for how expiry works
_ = weakref
