"""Repacked weights, looked up by the source tensors the compiled code actually passes.

Dynamo reuses one compiled graph for every instance of a module class (and for per-block compiles),
handing the *current* module's buffers to the compiled code as inputs.  So repacked weights cannot be
baked into the graph: the op looks them up here, keyed on the identity of the source tensors
(storage, offset, shape, dtype, device) and validated against their version counters, so

* a second model instance, or another block sharing the compiled graph, gets its own repack;
* an in-place reload (``load_state_dict``, ``copy_``) bumps the version and triggers a fresh repack;
* a freed model's entries go when their sources die: a finalizer on each source storage removes the
  entry (and the repacked memory with it) at once, so nothing outlives the model and a new tensor that
  reuses the address never meets a stale entry.

Inference tensors (created under ``torch.inference_mode()``) carry no version counter, so an in-place
write to them (``load_state_dict`` inside inference mode) leaves no trace the cache could check, and
there is no exact and cheap substitute (only a full content comparison per call).  Their derived
forms are therefore never cached: each call converts from the tensors as they are (correct, at about
the cost of the user's own eager dequant), and the layer says so once at warning level with the fix
-- create or load the model outside inference mode; running it under inference mode is fine, since
normal tensors keep counting versions there.  Nor are such tensors ever rewritten in place.

The value of an entry (:class:`Prepared`) says which layout each tensor holds: :meth:`Prepared.packed`
returns a :class:`~awq_compile.formats.Packed` in the layer's layout -- ``standard``, or ``kplanes`` when
the layer's plan says so (:attr:`~awq_compile.kernels.registry.Plan.layout`; the layout is part of the
key, and a layer holds exactly one packed copy, in that layout) -- and :meth:`Prepared.form` a
kernel-specific one (``cpu_int4pack``, from a standard entry), all built by
:func:`awq_compile.formats.convert` -- the forward's dispatch and the backward read the layout from there.  The cache holds only what it derived
(standard-layout qweight and zeros, kernel-specific forms); tensors usable as they are (scales, an
already-standard qweight) are taken from the op's arguments at call time, so the cache never keeps a
user's model alive.

Memory: by default the repacked copy lives beside the user's AWQ buffers (about 2x the weight memory).
With ``reuse=True`` (the backend's opt-in ``reuse_weight_memory`` option) an AWQ-layout ``qweight`` /
``qzeros`` is rewritten *in place*, chunk by chunk, into the standard layout -- the two layouts have the
same number of int32 words and a chunk of K rows occupies the same memory range in both -- so nothing
beyond one chunk's temporaries is ever allocated and the weights held stay at 1.0x the AWQ size.  The
user's tensors then hold standard-layout (or kplanes) bits (their eager dequant is no longer valid); the cache
remembers those buffers, and the layout they hold, (until they die or are written again) so that they are never converted twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import threading
import weakref

import torch
from torch.multiprocessing.reductions import StorageWeakRef

from ..formats.convert import convert, in_place_target
from ..formats.packed import Packed
from ..formats.sources import get_format

__all__ = ["Prepared", "WeightCache", "weight_cache", "digest", "watch_signature"]

log = logging.getLogger("awq_compile")


def _version(t: torch.Tensor):
    try:
        return t._version
    except RuntimeError:  # inference tensors carry no version counter
        return None


def watch_signature(tensors) -> tuple:
    """A cheap value that changes when any of ``tensors`` is another tensor or was written since: the
    backend compares it call to call to know when the cache must look at a call's weights again."""
    return tuple((id(t), _version(t)) for t in tensors)


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
    """The cache's value for one layer.  ``None`` tensors mean 'the op's argument, as the layout says'."""

    fmt: str                          # the source format of the op's arguments
    group_size: int
    qweight: torch.Tensor | None      # derived standard int32 [K/8, N]; None: the argument holds it
    qzeros: torch.Tensor | None       # derived standard int32 [K/G, N/8]; None: the argument (or no zeros)
    has_zeros: bool
    in_place: bool = False            # the op's own qweight/qzeros were rewritten into ``layout``
    forms: dict = dataclasses.field(default_factory=dict)   # (layout, dtype) -> Packed, kernel-specific
    layout: str = "standard"          # the layout of qweight: "standard" or "kplanes" (the plan's choice)

    def standard(self, qweight, scales, qzeros=None) -> Packed:
        """The weight in the ``standard`` layout (an entry prepared in another layout refuses: it holds no
        standard copy)."""
        if self.layout != "standard":
            raise ValueError(f"this weight is prepared in the {self.layout} layout, not standard")
        return self.packed(qweight, scales, qzeros)

    def packed(self, qweight, scales, qzeros=None) -> Packed:
        """The weight in the layout it is prepared in (:attr:`layout`), which the kernels and the backward read."""
        q = self.qweight
        if q is None:
            # in place: a view of the argument (the cache keeps no reference to the user's storage)
            q = qweight.view(qweight.shape[0] // 8, qweight.shape[1] * 8) if self.in_place else qweight
        z = None
        if self.has_zeros:
            z = self.qzeros if self.qzeros is not None else qzeros
        return Packed(self.layout, q, z, scales, self.group_size)

    def form(self, layout: str, qweight, scales, qzeros, dtype: torch.dtype) -> Packed:
        """A kernel-specific layout, converted from :meth:`standard` on first use and kept with the entry."""
        f = self.forms.get((layout, dtype))
        if f is None:
            with torch.no_grad():
                f = convert(self.standard(qweight, scales, qzeros), layout, dtype=dtype)
            self.forms[(layout, dtype)] = f
        return f

    def nbytes(self) -> int:
        """Bytes this value holds (the tensors it derived)."""
        n = sum(t.numel() * t.element_size() for t in (self.qweight, self.qzeros) if t is not None)
        return n + sum(f.nbytes() for f in self.forms.values())


def _storages(tensors):
    seen = {}
    for t in tensors:
        st = t.untyped_storage()
        seen.setdefault(st._cdata, st)
    return list(seen.values())


def _finalizers(storages, callback, *args):
    out = []
    for st in storages:
        f = weakref.finalize(st, callback, *args)
        f.atexit = False
        out.append(f)
    return out


class _Entry:
    __slots__ = ("refs", "versions", "prepared", "serial", "finalizers")

    def __init__(self, sources, prepared, serial):
        self.refs = [StorageWeakRef(t.untyped_storage()) for t in sources]
        self.versions = [_version(t) for t in sources]
        self.prepared = prepared
        self.serial = serial
        self.finalizers: list = []

    def valid_for(self, sources) -> bool:
        for ref, ver, t in zip(self.refs, self.versions, sources):
            if ref.expired() or ref.cdata != t.untyped_storage()._cdata or ver != _version(t):
                return False
        return True

    def expired(self) -> bool:
        return any(r.expired() for r in self.refs)

    def detach(self) -> None:
        for f in self.finalizers:
            f.detach()
        self.finalizers = []


def _buffer_key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage()._cdata, t.storage_offset(), tuple(t.shape))


def _on_source_death(cache_ref, table: str, key, serial) -> None:
    """Finalizer of a source storage: drop what was derived from it, now (not at some later lookup)."""
    cache = cache_ref()
    if cache is not None:
        cache._forget(table, key, serial)


class WeightCache:
    def __init__(self):
        self._entries: dict[tuple, _Entry] = {}
        # buffers this cache rewrote in place: key -> (storage weak ref, version after the write, serial, finalizers)
        self._rewritten: dict[tuple, tuple] = {}
        self._lock = threading.RLock()   # re-entrant: a finalizer may run inside a locked section (GC)
        self._serial = itertools.count()
        self.repacks = 0  # how many conversions ran (tests and explain read it)
        self._warned_uncached: set[str] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drop every entry (the record of buffers rewritten in place stays: it describes user memory)."""
        with self._lock:
            for e in list(self._entries.values()):
                e.detach()
            self._entries.clear()

    def nbytes(self) -> int:
        return sum(e.prepared.nbytes() for e in list(self._entries.values()))

    def _forget(self, table: str, key, serial) -> None:
        with self._lock:
            d = self._entries if table == "entries" else self._rewritten
            rec = d.get(key)
            if rec is None:
                return
            if table == "entries" and rec.serial == serial:
                del d[key]
                rec.detach()
            elif table == "rewritten" and rec[2] == serial:
                del d[key]
                for f in rec[3]:
                    f.detach()

    def _holds(self, t: torch.Tensor | None) -> str | None:
        """The layout this cache rewrote ``t``'s memory into, if nothing wrote since (a later
        ``load_state_dict`` puts AWQ bits back and bumps the version: then it is AWQ again); else None."""
        if t is None:
            return None
        rec = self._rewritten.get(_buffer_key(t))
        return rec[4] if rec is not None and not rec[0].expired() and rec[1] == _version(t) else None

    def _remember_rewritten(self, t: torch.Tensor, layout: str) -> None:
        key, serial = _buffer_key(t), next(self._serial)
        old = self._rewritten.pop(key, None)
        if old is not None:
            for f in old[3]:
                f.detach()
        fins = _finalizers([t.untyped_storage()], _on_source_death, weakref.ref(self), "rewritten", key, serial)
        self._rewritten[key] = (StorageWeakRef(t.untyped_storage()), _version(t), serial, fins, layout)

    def get(self, fmt: str, qweight, qzeros, scales, aux=(), *, aux_digest: str = "", layer: str = "",
            reuse: bool = False, layout: str | None = "standard") -> Prepared:
        """The prepared weights of one layer in ``layout`` (the layer's plan's; None: the layout the layer is
        already prepared in, standard if none -- the backward, which reads whatever the forward prepared).
        ``reuse=True`` allows rewriting AWQ-layout source buffers in place (see the module docstring); it
        only matters on the call that repacks."""
        sources = [t for t in (qweight, qzeros, scales, *aux) if t is not None]
        idents = tuple(_ident(t) for t in sources)
        if layout is None:
            layout = self._held_layout(fmt, idents, sources, qweight)
        key = (fmt, layout) + idents
        entry = self._entries.get(key)
        if entry is not None and entry.valid_for(sources):
            return entry.prepared
        return self._insert(key, fmt, qweight, qzeros, scales, aux, sources, aux_digest, layer, reuse, layout)

    def _held_layout(self, fmt: str, idents: tuple, sources, qweight, merged: bool = False) -> str:
        head = ("merged", fmt) if merged else (fmt,)
        for layout in ("kplanes", "standard"):
            entry = self._entries.get(head + (layout,) + idents)
            if entry is not None and entry.valid_for(sources):
                return layout
        return (None if merged else self._holds(qweight)) or "standard"

    def _insert(self, key, fmt, qweight, qzeros, scales, aux, sources, aux_digest, layer, reuse=False,
                layout="standard") -> Prepared:
        if aux and aux_digest and digest(aux) != aux_digest:
            raise RuntimeError(
                f"awq_compile: layer '{layer}': an auxiliary tensor of the dequantisation (reorder index or "
                "g_idx) differs from the one verified at compile time; the rewrite is not valid for these "
                "weights. Recompile (torch._dynamo.reset()) or keep those tensors identical across instances")
        src = get_format(fmt)
        w = Packed(fmt, qweight, qzeros if src.has_zeros else None, scales,
                   src.qweight_rows_to_k(qweight.shape[0]) // scales.shape[0])
        if any(t.is_inference() for t in sources):
            return self._uncached(w, layer, layout)
        # (a per-call conversion inside a CUDA-graph capture is recorded and replayed: it stays correct)
        if qweight.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"awq_compile: layer '{layer}': its weights were not repacked before CUDA-graph capture "
                "(new or modified weight tensors reached a captured graph); run the model once eagerly "
                "with these weights before capturing")
        held = self._holds(qweight) if src.packed_along == "N" else None
        if held is not None and held != layout:
            raise RuntimeError(
                f"awq_compile: layer '{layer}': its weight buffers were rewritten in place into the {held} layout "
                f"(reuse_weight_memory) for another plan, which now asks for {layout}; compile the model for one "
                "target only, or reload the weights")
        rewritten = held is not None and (w.qzeros is None or self._holds(w.qzeros) == layout)
        can_rewrite = reuse and src.packed_along == "N" and qweight.is_contiguous() and (
            w.qzeros is None or w.qzeros.is_contiguous())
        if rewritten or can_rewrite:
            if not rewritten:
                convert(w, layout, out=in_place_target(w))   # the entry below records the versions after
                for t in (w.qweight, w.qzeros):
                    if t is not None:
                        self._remember_rewritten(t, layout)
            prepared = Prepared(fmt, w.group_size, None, None, src.has_zeros, in_place=True, layout=layout)
        else:
            std = convert(w, layout)
            prepared = Prepared(fmt, w.group_size, None if std.qweight is qweight else std.qweight,
                                None if std.qzeros is w.qzeros else std.qzeros, src.has_zeros, layout=layout)
        return self._store(key, sources, prepared, qweight.device, scales.shape[1])

    def _store(self, key, sources, value, device: torch.device, n: int):
        """Keep ``value`` for ``sources`` (expired with their storages) and return it."""
        if device.type == "cuda":
            # the split-K workspace must exist before any CUDA-graph warm-up or capture runs the kernels
            from ..kernels.triton.launch import reserve_workspace
            reserve_workspace(device, n)
        with self._lock:
            entry = _Entry(sources, value, next(self._serial))
            entry.finalizers = _finalizers(_storages(sources), _on_source_death, weakref.ref(self), "entries",
                                           key, entry.serial)
            old = self._entries.pop(key, None)
            if old is not None:
                old.detach()
            self._entries[key] = entry
            self.repacks += 1
        return value

    def get_merged(self, fmt: str, parts, *, layer: str = "", layout: str | None = "standard") -> "MergedPrepared":
        """One weight in ``layout`` for several layers that read the same input (q/k/v, gate/up):
        ``parts`` is a list of ``(qweight, qzeros, scales)`` in the source format, concatenated
        along N in that order (a K permutation commutes with that: the kplanes copy is made once, of the
        concatenation).  Keyed and validated like :meth:`get` on every part's tensors, and dropped
        when any of their storages dies; never rewritten in place (the parts live in separate storages)."""
        sources = [t for part in parts for t in part if t is not None]
        idents = tuple(_ident(t) for t in sources)
        if layout is None:
            layout = self._held_layout(fmt, idents, sources, None, merged=True)
        key = ("merged", fmt, layout) + idents
        entry = self._entries.get(key)
        if entry is not None and entry.valid_for(sources):
            return entry.prepared
        src = get_format(fmt)
        if any(t.is_inference() for t in sources):
            self._warn_uncached(layer)
            return _merge(src, parts, layout)
        q0 = parts[0][0]
        if q0.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"awq_compile: merged layer '{layer}': its weights were not repacked before CUDA-graph capture "
                "(new or modified weight tensors reached a captured graph); run the model once eagerly "
                "with these weights before capturing")
        merged = _merge(src, parts, layout)
        return self._store(key, sources, merged, q0.device, merged.scales.shape[1])

    def _uncached(self, w: Packed, layer: str, layout: str = "standard") -> Prepared:
        """Inference tensors: convert for this call only (see the module docstring)."""
        self._warn_uncached(layer)
        if w.qweight.is_cuda:
            from ..kernels.triton.launch import reserve_workspace
            reserve_workspace(w.qweight.device, w.N)
        std = convert(w, layout)
        self.repacks += 1
        return Prepared(w.layout, w.group_size, None if std.qweight is w.qweight else std.qweight,
                        None if std.qzeros is w.qzeros else std.qzeros, get_format(w.layout).has_zeros,
                        layout=layout)

    def _warn_uncached(self, layer: str) -> None:
        if layer not in self._warned_uncached:
            self._warned_uncached.add(layer)
            log.warning(
                "awq_compile: layer '%s': its weights are inference tensors (created under "
                "torch.inference_mode()), which carry no version counter, so an in-place reload could not be "
                "seen; their repacked form is rebuilt on every call instead of cached (slower). Create or load "
                "the model outside torch.inference_mode() (running it under inference mode is fine)", layer)


@dataclasses.dataclass
class MergedPrepared:
    """The cache's value for a merged group: the parts' weights concatenated along N, in ``prepared.layout``."""

    prepared: Prepared                # owns the concatenated qweight / qzeros
    scales: torch.Tensor              # [K/G, sum N]
    widths: tuple                     # N of each part, in order

    def packed(self) -> Packed:
        return self.prepared.packed(self.prepared.qweight, self.scales, self.prepared.qzeros)

    def nbytes(self) -> int:
        return self.prepared.nbytes() + self.scales.numel() * self.scales.element_size()


def _merge(src, parts, layout: str = "standard") -> MergedPrepared:
    """Convert each part to the standard layout and concatenate along N (qzeros pack along N in whole
    8-column words, so N % 8 == 0 per part keeps the words aligned), then into ``layout``."""
    stds = []
    with torch.no_grad():
        for qweight, qzeros, scales in parts:
            G = src.qweight_rows_to_k(qweight.shape[0]) // scales.shape[0]
            stds.append(convert(Packed(src.name, qweight, qzeros if src.has_zeros else None, scales, G), "standard"))
        q = torch.cat([w.qweight for w in stds], dim=1)
        z = torch.cat([w.qzeros for w in stds], dim=1) if src.has_zeros else None
        s = torch.cat([w.scales for w in stds], dim=1)
        if layout != "standard":
            q = convert(Packed("standard", q, z, s, stds[0].group_size), layout).qweight
    return MergedPrepared(Prepared(src.name, stds[0].group_size, q, z, src.has_zeros, layout=layout), s,
                          tuple(w.N for w in stds))


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
