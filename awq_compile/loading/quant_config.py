"""What a checkpoint's ``quantization_config`` says, checked once, before anything is loaded.

Three families are read (docs/checkpoints.md):

- ``quant_method: awq`` (transformers' spelling: ``bits``, ``group_size``, ``zero_point``, ``version``,
  ``modules_to_not_convert``) or AutoAWQ's own ``quant_config.json`` (``w_bit``, ``q_group_size``,
  ``zero_point``, ``version: "GEMM"``);
- ``quant_method: gptq`` (``bits``, ``group_size``, ``sym``, ``desc_act``, ``checkpoint_format`` /
  ``format``: ``gptq`` = v1 zeros stored minus one, ``gptq_v2`` = raw zeros);
- ``quant_method: compressed-tensors`` with ``format: pack-quantized`` and ``config_groups`` whose weights
  are 4-bit ``int`` with the ``group`` or ``channel`` strategy, ``targets`` / ``ignore`` with ``re:`` patterns.

Anything else raises :class:`CheckpointError` naming the field and what was expected.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

__all__ = ["CheckpointError", "LinearScheme", "QuantConfig", "read_quant_config"]


class CheckpointError(ValueError):
    """A checkpoint we cannot load exactly; the message names the tensor or config field."""


@dataclasses.dataclass(frozen=True)
class LinearScheme:
    """How one linear layer's weight is stored."""
    layout: str            # "awq" | "gptq_v1" | "gptq_v2" | "pack-quantized"
    group_size: int        # -1: one group over all of K ("channel")
    symmetric: bool


@dataclasses.dataclass(frozen=True)
class _Group:
    targets: tuple[str, ...]
    scheme: LinearScheme


def _matches(pattern: str, name: str, class_name: str) -> bool:
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None
    return pattern == name or pattern == class_name


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    method: str                               # "awq" | "gptq" | "compressed-tensors"
    groups: tuple[_Group, ...]
    modules_to_not_convert: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    desc_act: bool = False
    lm_head: bool = False                     # GPTQ's `lm_head: true`: lm_head is quantised too
    source: str = "config.json"

    @property
    def presence_driven(self) -> bool:
        """AWQ/GPTQ configs do not list their layers: a linear is quantised when the checkpoint has its qweight."""
        return self.method in ("awq", "gptq")

    def scheme_for(self, name: str, class_name: str = "Linear") -> LinearScheme | None:
        """The scheme of module ``name``, or None when the config leaves it in float."""
        if any(_matches(p, name, class_name) for p in self.ignore):
            return None
        # transformers' rule for modules_to_not_convert: a listed name anywhere in the module path
        if any(key and key in name for key in self.modules_to_not_convert):
            return None
        if self.method in ("awq", "gptq"):
            if name.split(".")[-1] == "lm_head" and not self.lm_head and self.method == "gptq":
                return None
            return self.groups[0].scheme
        for g in self.groups:
            if any(_matches(t, name, class_name) for t in g.targets):
                return g.scheme
        return None


def _field(cfg: dict, *names, default=None, where: str):
    for n in names:
        if n in cfg:
            return cfg[n]
    if default is not None:
        return default
    raise CheckpointError(f"{where}: missing field {' / '.join(repr(n) for n in names)}")


def _bits(value, where: str, field: str) -> None:
    if value != 4:
        raise CheckpointError(f"{where}: {field}={value!r}; only 4-bit weights are supported (expected 4)")


def _group_size(value, where: str, field: str) -> int:
    if value is None or value == -1:
        return -1
    if not isinstance(value, int) or value <= 0 or value % 8:
        raise CheckpointError(f"{where}: {field}={value!r}; expected a positive multiple of 8 or -1 (per channel)")
    return value


def _parse_awq(cfg: dict, where: str) -> QuantConfig:
    _bits(_field(cfg, "bits", "w_bit", where=where), where, "bits")
    gs = _group_size(_field(cfg, "group_size", "q_group_size", where=where), where, "group_size")
    if not _field(cfg, "zero_point", default=True, where=where):
        raise CheckpointError(f"{where}: zero_point=false; AutoAWQ GEMM checkpoints are asymmetric "
                              f"(expected zero_point: true)")
    version = str(_field(cfg, "version", default="gemm", where=where)).lower()
    if version != "gemm":
        raise CheckpointError(f"{where}: version={version!r}; only the AutoAWQ 'gemm' layout is supported "
                              f"(gemv, marlin and exllama layouts are not)")
    skip = tuple(cfg.get("modules_to_not_convert") or ())
    return QuantConfig("awq", (_Group((), LinearScheme("awq", gs, False)),), modules_to_not_convert=skip,
                       source=where)


def _parse_gptq(cfg: dict, where: str) -> QuantConfig:
    _bits(_field(cfg, "bits", where=where), where, "bits")
    gs = _group_size(_field(cfg, "group_size", default=-1, where=where), where, "group_size")
    fmt = str(cfg.get("checkpoint_format") or cfg.get("format") or "gptq").lower()
    if fmt not in ("gptq", "gptq_v2"):
        raise CheckpointError(f"{where}: checkpoint_format={fmt!r}; expected 'gptq' (v1) or 'gptq_v2'")
    layout = "gptq_v2" if fmt == "gptq_v2" else "gptq_v1"
    sym = bool(cfg.get("sym", True))
    skip = tuple(cfg.get("modules_to_not_convert") or ())
    return QuantConfig("gptq", (_Group((), LinearScheme(layout, gs, sym)),), modules_to_not_convert=skip,
                       desc_act=bool(cfg.get("desc_act", False)), lm_head=bool(cfg.get("lm_head", False)),
                       source=where)


def _parse_compressed_tensors(cfg: dict, where: str) -> QuantConfig:
    top_format = cfg.get("format")
    groups = []
    config_groups = cfg.get("config_groups")
    if not isinstance(config_groups, dict) or not config_groups:
        raise CheckpointError(f"{where}: config_groups missing or empty; expected at least one scheme")
    for gname, g in config_groups.items():
        gw = f"{where}: config_groups.{gname}"
        fmt = g.get("format") or top_format
        if fmt != "pack-quantized":
            raise CheckpointError(f"{gw}: format={fmt!r}; only 'pack-quantized' (W4A16) is supported")
        if g.get("input_activations") or g.get("output_activations"):
            raise CheckpointError(f"{gw}: input_activations/output_activations set; only weight-only "
                                  f"quantisation (W4A16) is supported")
        w = g.get("weights")
        if not w:
            raise CheckpointError(f"{gw}.weights: missing")
        _bits(w.get("num_bits"), gw, "weights.num_bits")
        if w.get("type", "int") != "int":
            raise CheckpointError(f"{gw}: weights.type={w.get('type')!r}; expected 'int'")
        strategy = w.get("strategy")
        if strategy == "group":
            gs = _group_size(w.get("group_size"), gw, "weights.group_size")
        elif strategy == "channel":
            gs = -1
        else:
            raise CheckpointError(f"{gw}: weights.strategy={strategy!r}; expected 'group' or 'channel'")
        actorder = w.get("actorder")
        if actorder not in (None, False, "static", "weight"):
            # "group" act-order stores a g_idx permutation; "static"/"weight" keep groups in order.
            raise CheckpointError(f"{gw}: weights.actorder={actorder!r}; act-order with a g_idx permutation "
                                  f"is not supported (expected null, 'static' or 'weight')")
        if w.get("dynamic"):
            raise CheckpointError(f"{gw}: weights.dynamic=true; expected static weight quantisation")
        targets = tuple(g.get("targets") or ())
        if not targets:
            raise CheckpointError(f"{gw}.targets: empty; expected module names, classes or 're:' patterns")
        groups.append(_Group(targets, LinearScheme("pack-quantized", gs, bool(w.get("symmetric", True)))))
    return QuantConfig("compressed-tensors", tuple(groups), ignore=tuple(cfg.get("ignore") or ()), source=where)


_PARSERS = {"awq": _parse_awq, "gptq": _parse_gptq, "compressed-tensors": _parse_compressed_tensors}


def parse_quant_config(cfg: dict, where: str = "config.json: quantization_config") -> QuantConfig:
    method = str(cfg.get("quant_method", "")).lower() or None
    if method is None and ("w_bit" in cfg or "q_group_size" in cfg):
        method = "awq"  # AutoAWQ's quant_config.json names no method
    if method not in _PARSERS:
        raise CheckpointError(f"{where}: quant_method={cfg.get('quant_method')!r}; expected one of "
                              f"{sorted(_PARSERS)}")
    return _PARSERS[method](cfg, where)


def read_quant_config(path: str, config_dict: dict | None = None) -> QuantConfig:
    """The quantisation config of the checkpoint directory ``path``: config.json's, else quant_config.json's."""
    if config_dict is None:
        with open(os.path.join(path, "config.json")) as f:
            config_dict = json.load(f)
    qc = config_dict.get("quantization_config")
    if qc:
        return parse_quant_config(qc)
    alt = os.path.join(path, "quant_config.json")
    if os.path.exists(alt):
        with open(alt) as f:
            return parse_quant_config(json.load(f), "quant_config.json")
    raise CheckpointError(f"{path}: config.json has no quantization_config and there is no quant_config.json; "
                          f"this is not a quantised checkpoint (expected AWQ, GPTQ or compressed-tensors)")
