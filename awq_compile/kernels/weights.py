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
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import weakref

import torch
from torch.multiprocessing.reductions import StorageWeakRef

from ..formats.sources import get_format

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

    def standard(self, qweight, scales):
        """(qweight_std, qzeros_std, scales) for the kernels."""
        return (self.qweight if self.qweight is not None else qweight,
                self.qzeros if self.has_zeros else None, scales)

    def nbytes(self) -> int:
        n = sum(t.numel() * t.element_size() for t in (self.qweight, self.qzeros) if t is not None)
        for v in self.extra.values():
            for t in (v if isinstance(v, tuple) else (v,)):
                if isinstance(t, torch.Tensor):
                    n += t.numel() * t.element_size()
        return n


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

    def get(self, fmt: str, qweight, qzeros, scales, aux=(), *, aux_digest: str = "", layer: str = "") -> Prepared:
        sources = [t for t in (qweight, qzeros, scales, *aux) if t is not None]
        key = (fmt,) + tuple(_ident(t) for t in sources)
        entry = self._entries.get(key)
        if entry is not None and entry.valid_for(sources):
            return entry.prepared
        return self._insert(key, fmt, qweight, qzeros, scales, aux, sources, aux_digest, layer)

    def _insert(self, key, fmt, qweight, qzeros, scales, aux, sources, aux_digest, layer) -> Prepared:
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
        with torch.no_grad():
            std = src.to_standard(qweight, qzeros, scales)
        prepared = Prepared(fmt, std.group_size, None if std.qweight is qweight else std.qweight,
                            std.qzeros, src.has_zeros)
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
