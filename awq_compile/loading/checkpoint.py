"""Safetensors checkpoints, single-file or sharded, read one tensor at a time.

``model.safetensors.index.json`` names the shard of every tensor; without it every ``*.safetensors``
file of the directory is opened.  Files stay memory-mapped by ``safe_open``; :meth:`Checkpoint.get`
copies exactly one tensor out, so the host never holds more than the tensor being moved to the device;
:meth:`Checkpoint.get_slice` copies out one range along one dimension (a tensor-parallel rank's shard)
without reading the rest of the tensor.
"""

from __future__ import annotations

import glob
import json
import os

import torch

from .quant_config import CheckpointError

__all__ = ["Checkpoint"]


class Checkpoint:
    def __init__(self, path: str):
        from safetensors import safe_open

        self.path = path
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f).get("weight_map")
            if not weight_map:
                raise CheckpointError(f"{index}: no weight_map")
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(path, "*.safetensors")))
            if not files:
                others = [os.path.basename(p) for p in glob.glob(os.path.join(path, "*.bin"))]
                hint = f" (found {others}: re-save it with safe_serialization=True)" if others else ""
                raise CheckpointError(f"{path}: no *.safetensors files{hint}")
            weight_map = None
        self._handles = {}
        self._where: dict[str, str] = {}
        for fname in files:
            full = os.path.join(path, fname)
            if not os.path.exists(full):
                raise CheckpointError(f"{index}: shard {fname} is listed but missing")
            h = safe_open(full, framework="pt")
            self._handles[fname] = h
            for key in h.keys():
                self._where[key] = fname
        if weight_map is not None:
            for key, fname in weight_map.items():
                if self._where.get(key) != fname:
                    raise CheckpointError(f"{index}: tensor {key} is mapped to {fname} but that shard lacks it")
        self.files = files

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def keys(self):
        return self._where.keys()

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[self._where[name]].get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        if name not in self._where:
            raise CheckpointError(f"{self.path}: tensor {name} is missing from the checkpoint")
        return self._handles[self._where[name]].get_tensor(name)

    def get_slice(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        """Elements ``start:stop`` along ``dim`` of tensor ``name``, read from the file without the rest."""
        if name not in self._where:
            raise CheckpointError(f"{self.path}: tensor {name} is missing from the checkpoint")
        sl = self._handles[self._where[name]].get_slice(name)
        shape = sl.get_shape()
        if not 0 <= dim < len(shape) or not 0 <= start <= stop <= shape[dim]:
            raise CheckpointError(f"tensor {name}: cannot take [{start}:{stop}] along dim {dim} of shape "
                                  f"{tuple(shape)}")
        return sl[(slice(None),) * dim + (slice(start, stop),)].contiguous()

    def maybe(self, name: str) -> torch.Tensor | None:
        return self.get(name) if name in self._where else None
