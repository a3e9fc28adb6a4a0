"""Tensor-parallel sharding rules: which linear is split how, the checks, and each rank's slice of a tensor.

Megatron/vLLM style over a 1-D mesh of ``world`` ranks (docs/distributed.md):

- column-parallel (``self_attn.q_proj/k_proj/v_proj``, ``mlp.gate_proj/up_proj``; fused ``self_attn.qkv_proj``
  and ``mlp.gate_up_proj`` per sub-projection): rank r keeps output columns ``[r*N/W, (r+1)*N/W)`` of each
  sub-projection, so its q/k/v hold whole attention heads and its gate/up matching halves of the MLP.
  Packed AWQ / GPTQ zero words hold 8 columns: ``N/W % 8 == 0``.
- row-parallel (``self_attn.o_proj``, ``mlp.down_proj``): rank r keeps input rows ``[r*K/W, (r+1)*K/W)``;
  its output is a partial sum, all-reduced by :class:`~awq_compile.loading.parallel.RowParallelLinear`,
  bias added once after the reduction.  ``K/W`` must be a whole number of groups (one group over all of K,
  per-channel, splits into one group per rank) and, for layouts packed along K (GPTQ, compressed-tensors),
  of 8-row words.
- everything else (embeddings, norms, ``lm_head``, linears outside the decoder layers) is replicated.

:func:`plan` checks every size against the world size and raises one :class:`CheckpointError` listing
every indivisible size, naming the layer, before any tensor is read.  :class:`ShardReader` reads a
rank's slice of a layer's tensors with safetensors' ``get_slice``: no rank reads a tensor it does not
own in full.
"""

from __future__ import annotations

import copy
import dataclasses
import re

from .quant_config import CheckpointError, LinearScheme

__all__ = ["LinearShard", "TensorParallelPlan", "ShardReader", "plan", "local_config", "text_config"]

COLWISE, ROWWISE = "colwise", "rowwise"

# module path suffix -> style; fused projections name their sub-projections by a function of the config
_RULES = {
    "self_attn.q_proj": COLWISE, "self_attn.k_proj": COLWISE, "self_attn.v_proj": COLWISE,
    "self_attn.qkv_proj": COLWISE, "self_attn.o_proj": ROWWISE,
    "mlp.gate_proj": COLWISE, "mlp.up_proj": COLWISE, "mlp.gate_up_proj": COLWISE, "mlp.down_proj": ROWWISE,
}
_LAYER = re.compile(r"(^|\.)layers\.\d+\.")
_MOE_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")

# Where N and K live in each stored tensor: suffix -> (N dim, N elements per stored entry,
#                                                      K dim, K rows per entry or "groups")
_DIMS = {
    "awq": {"qweight": (1, 8, 0, 1), "qzeros": (1, 8, 0, "groups"), "scales": (1, 1, 0, "groups"),
            "bias": (0, 1, None, None)},
    "gptq": {"qweight": (1, 1, 0, 8), "qzeros": (1, 8, 0, "groups"), "scales": (1, 1, 0, "groups"),
             "g_idx": (None, None, 0, 1), "bias": (0, 1, None, None)},
    "pack-quantized": {"weight_packed": (0, 1, 1, 8), "weight_scale": (0, 1, 1, "groups"),
                       "weight_zero_point": (0, 8, 1, "groups"), "bias": (0, 1, None, None)},
    "float": {"weight": (0, 1, 1, 1), "bias": (0, 1, None, None)},
}
_DIMS["gptq_v1"] = _DIMS["gptq_v2"] = _DIMS["gptq"]


@dataclasses.dataclass(frozen=True)
class LinearShard:
    """Rank ``rank`` of ``world``'s part of linear ``name`` (global sizes ``in_features`` K, ``out_features`` N)."""
    name: str
    style: str                    # "colwise" | "rowwise"
    rank: int
    world: int
    in_features: int
    out_features: int
    group_size: int               # global group size along K (K itself for one group / per channel)
    parts: tuple[int, ...]        # column-parallel: the sub-projections' widths along N (sum = N)

    @property
    def local_in(self) -> int:
        return self.in_features // self.world if self.style == ROWWISE else self.in_features

    @property
    def local_out(self) -> int:
        return self.out_features // self.world if self.style == COLWISE else self.out_features

    def n_ranges(self) -> list[tuple[int, int]]:
        """The global output columns this rank keeps, one range per sub-projection."""
        if self.style != COLWISE:
            return [(0, self.out_features)]
        out, start = [], 0
        for width in self.parts:
            w = width // self.world
            out.append((start + self.rank * w, start + (self.rank + 1) * w))
            start += width
        return out

    def k_range(self) -> tuple[int, int]:
        """The global input rows this rank keeps."""
        if self.style != ROWWISE:
            return 0, self.in_features
        k = self.in_features // self.world
        return self.rank * k, (self.rank + 1) * k


@dataclasses.dataclass(frozen=True)
class TensorParallelPlan:
    world: int
    rank: int
    layers: dict            # name -> LinearShard, every sharded linear (quantised or float)
    replicated: tuple       # the linears every rank holds whole (lm_head, ...)


def text_config(config):
    get = getattr(config, "get_text_config", None)
    return get() if get is not None else config


def _head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _heads(cfg) -> tuple[int, int]:
    """(attention heads, KV heads); a config without ``num_key_value_heads`` has one KV head per head."""
    H = cfg.num_attention_heads
    return H, getattr(cfg, "num_key_value_heads", None) or H


def _parts(suffix: str, N: int, cfg) -> tuple[int, ...]:
    if suffix == "self_attn.qkv_proj":
        hd, (H, KV) = _head_dim(cfg), _heads(cfg)
        return (H * hd, KV * hd, KV * hd)
    if suffix == "mlp.gate_up_proj":
        return (N // 2, N // 2)
    return (N,)


def _rule(name: str) -> tuple[str, str] | None:
    for suffix, style in _RULES.items():
        if name == suffix or name.endswith("." + suffix):
            return suffix, style
    return None


def _summarise(problems: list[tuple[str, str]]) -> list[str]:
    """One line per distinct problem: the first layer named, how many more share it."""
    seen: dict[str, list[str]] = {}
    for layer, what in problems:
        seen.setdefault(what, []).append(layer)
    lines = []
    for what, layers in seen.items():
        more = f" (and {len(layers) - 1} more layer(s) alike)" if len(layers) > 1 else ""
        lines.append(f"layer {layers[0]}: {what}{more}")
    return lines


def plan(model, config, schemes: dict[str, LinearScheme | None], world: int, rank: int) -> TensorParallelPlan:
    """The sharding of ``model`` (built on meta from the *global* ``config``) over ``world`` ranks.

    ``schemes``: every quantised linear's scheme (the loader's choice); other ``nn.Linear`` s are float.
    Raises one :class:`CheckpointError` naming every layer whose size the world size does not divide.
    """
    from torch import nn

    cfg = text_config(config)
    where = f"tensor parallelism over {world} ranks"
    for field in _MOE_FIELDS:
        if getattr(cfg, field, None):
            raise CheckpointError(f"{where}: the model is a mixture of experts ({field}={getattr(cfg, field)}); "
                                  f"expert sharding is not supported")
    problems: list[tuple[str, str]] = []
    H, KV = _heads(cfg)
    inter = getattr(cfg, "intermediate_size", None)
    attn = next((n for n, _ in model.named_modules() if n.endswith("self_attn")), "self_attn")
    mlp = next((n for n, _ in model.named_modules() if n.endswith(".mlp")), "mlp")
    if H % world:
        problems.append((attn, f"num_attention_heads={H} is not divisible by the world size {world}"))
    if KV % world:
        problems.append((attn, f"num_key_value_heads={KV} is not divisible by the world size {world} "
                               f"(KV heads are split, not replicated)"))
    if inter is not None and inter % world:
        problems.append((mlp, f"intermediate_size={inter} is not divisible by the world size {world}"))

    layers, replicated = {}, []
    for name, mod in model.named_modules():
        scheme = schemes.get(name)
        if scheme is None and not isinstance(mod, nn.Linear):
            continue
        rule = _rule(name)
        if rule is None:
            if _LAYER.search(name):
                raise CheckpointError(f"{where}: layer {name} ({type(mod).__name__}) inside a decoder layer "
                                      f"has no sharding rule (known: {', '.join(_RULES)})")
            replicated.append(name)
            continue
        suffix, style = rule
        K, N = mod.in_features, mod.out_features
        G = K if scheme is None or scheme.group_size == -1 else scheme.group_size
        parts = _parts(suffix, N, cfg) if style == COLWISE else (N,)
        if sum(parts) != N:
            raise CheckpointError(f"layer {name}: a fused projection of width {N}, but the config's sub-projections "
                                  f"are {list(parts)} (sum {sum(parts)})")
        tag = "column-parallel" if style == COLWISE else "row-parallel"
        if style == COLWISE:
            for width in parts:
                what = f"a sub-projection of out_features {width}" if len(parts) > 1 else f"out_features={width}"
                if width % world:
                    problems.append((name, f"{tag}: {what} is not divisible by the world size {world}"))
                elif scheme is not None and (width // world) % 8:
                    problems.append((name, f"{tag}: {what} split {world} ways is {width // world} columns per rank, "
                                           f"not whole 8-column packed words (needs a multiple of {8 * world})"))
        else:
            if K % world:
                problems.append((name, f"{tag}: in_features={K} is not divisible by the world size {world}"))
            elif scheme is not None:
                k_local = K // world
                if G != K and k_local % G:
                    problems.append((name, f"{tag}: in_features={K} split {world} ways is {k_local} rows per rank, "
                                           f"not whole groups of {G} (needs a multiple of {G * world})"))
                elif scheme.layout != "awq" and k_local % 8:
                    problems.append((name, f"{tag}: in_features={K} split {world} ways is {k_local} rows per rank, "
                                           f"not whole 8-row packed words of the {scheme.layout} layout"))
        layers[name] = LinearShard(name, style, rank, world, K, N, G, parts)
    if problems:
        raise CheckpointError(f"{where}: sizes the world size does not divide (nothing was loaded):\n  "
                              + "\n  ".join(_summarise(problems)))
    if not layers:
        raise CheckpointError(f"{where}: no layer of {type(model).__name__} matches a sharding rule "
                              f"(known: {', '.join(_RULES)})")
    return TensorParallelPlan(world, rank, layers, tuple(replicated))


def local_config(config, world: int):
    """A copy of ``config`` with this rank's head counts and MLP width; ``head_dim`` explicit (it stays global)."""
    local = copy.deepcopy(config)
    cfg, src = text_config(local), text_config(config)
    hd, (H, KV) = _head_dim(src), _heads(src)
    cfg.head_dim = hd
    cfg.num_attention_heads = H // world
    if hasattr(src, "num_key_value_heads"):
        cfg.num_key_value_heads = KV // world
    if getattr(src, "intermediate_size", None) is not None:
        cfg.intermediate_size = src.intermediate_size // world
    return local


class ShardReader:
    """Reads layer ``shard.name``'s tensors of ``layout`` as this rank's slices (``get`` / ``maybe`` like a Checkpoint)."""

    def __init__(self, ckpt, shard: LinearShard, layout: str):
        self.ckpt, self.shard, self.dims = ckpt, shard, _DIMS[layout]
        self.read: dict[str, tuple[int, ...]] = {}    # tensor -> the shape read (what the tests check)

    def maybe(self, name: str):
        return self.get(name) if name in self.ckpt else None

    def get(self, name: str):
        import torch

        suffix = name.rpartition(".")[2]
        dims = self.dims.get(suffix)
        s = self.shard
        if dims is None:      # not a sharded tensor (weight_shape): read whole
            t = self.ckpt.get(name)
        elif s.style == COLWISE and dims[0] is not None:
            dim, per = dims[0], dims[1]
            pieces = []
            for a, b in s.n_ranges():
                if a % per or b % per:
                    raise CheckpointError(f"layer {s.name}: {name}: columns [{a}:{b}] are not whole "
                                          f"{per}-column words")
                pieces.append(self.ckpt.get_slice(name, dim, a // per, b // per))
            t = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim)
        elif s.style == ROWWISE and dims[2] is not None:
            dim, per = dims[2], dims[3]
            a, b = s.k_range()
            if per == "groups":
                groups = self.ckpt.shape(name)[dim]
                if groups == 1:         # one group over all of K (per channel): every rank keeps it
                    t = self.ckpt.get(name)
                    self.read[name] = tuple(t.shape)
                    return t
                if s.in_features % groups:
                    raise CheckpointError(f"layer {s.name}: {name} has {groups} groups, not a divisor of "
                                          f"in_features={s.in_features}")
                per = s.in_features // groups
            if a % per or b % per:
                raise CheckpointError(f"layer {s.name}: {name}: rows [{a}:{b}] are not whole {per}-row units")
            t = self.ckpt.get_slice(name, dim, a // per, b // per)
        else:                 # the tensor does not span the split dimension (a row-parallel bias)
            t = self.ckpt.get(name)
        self.read[name] = tuple(t.shape)
        return t
