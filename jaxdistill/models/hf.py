"""Hugging Face checkpoints: a local HF directory <-> a jaxdistill NNX model, given its family module.

    model = families.load("path/to/hf_dir", mesh=mesh, rules=config.logical_axis_rules)  # any family
    model = hf.load("path/to/hf_dir", llama, mesh=mesh)  # a known family's module
    hf.load_weights(model, "path/to/hf_dir")   # into an existing (sharded) model, in place
    hf.save(model, "out_dir", tokenizer=tok)   # config.json + model.safetensors (+ tokenizer files)

A directory is `config.json` plus `model.safetensors` or sharded `model-0000i-of-0000n.safetensors`
with `model.safetensors.index.json`. Tensors are read one at a time (safetensors, numpy) and
each is placed straight onto the sharding of the parameter it fills, so a checkpoint never sits
whole on one device.

The conversion of a model is its family module's (the contract is in models/families.py): the
module that defines the model's class. This module never imports a family module nor the
registry of them (models/families.py), since every family imports this one.

A model built with `scan_layers` keeps each layer stack's parameters stacked along a leading axis
(models/stack.py); its family's mapping still names each layer's tensors, whose parameters are then
`stack.LayerSlice`s: export reads slice i, import gathers every layer's tensor and places the stacked
array once. The HF directory is the same either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from jaxdistill import files as files_lib
from jaxdistill.models import stack

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One checkpoint tensor: its HF name, the parameter it fills, and the layout changes."""
  name: str
  param: nnx.Param  # or a stack.LayerSlice: one layer of a scanned stack's parameter
  to_ours: Callable[[np.ndarray], np.ndarray] = lambda w: w
  to_hf: Callable[[np.ndarray], np.ndarray] = lambda w: w


def linear(name: str, param: nnx.Param) -> Tensor:
  """A torch `nn.Linear` weight ([out, in]) stored by us as [in, out]."""
  return Tensor(name, param, lambda w: w.T, lambda w: w.T)


def _family(model: nnx.Module) -> types.ModuleType:
  """The family module of a model: the (already imported) module that defines its class."""
  return sys.modules[type(model).__module__]


def require_config(path: str) -> str:
  """`path`/config.json; FileNotFoundError naming the directory when there is none (a model
  directory must hold it: it decides the family and shape, and the tokenizer lives beside it)."""
  if not epath.Path(path).is_dir():
    raise FileNotFoundError(f"{path}: no such directory")
  file = os.path.join(path, CONFIG)
  if not epath.Path(file).is_file():
    raise FileNotFoundError(f"{file} is missing: {path} is not a Hugging Face model directory")
  return file


def read_config(path: str) -> dict[str, Any]:
  file = require_config(path)
  try:
    return json.loads(epath.Path(file).read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{file}: invalid JSON ({e})") from e


# --------------------------------------------------------------------------- reading tensors


class _RemoteSafetensors:
  """A remote safetensors file read whole through epath on first use (safetensors' lazy `safe_open`
  reads only local files), with `safe_open`'s `keys` / `get_tensor`."""

  def __init__(self, path: str):
    self.path = path
    self._tensors: dict[str, np.ndarray] | None = None

  def _load(self) -> dict[str, np.ndarray]:
    if self._tensors is None:
      from safetensors.numpy import load
      self._tensors = load(epath.Path(self.path).read_bytes())
    return self._tensors

  def keys(self) -> list[str]:
    return list(self._load())

  def get_tensor(self, name: str) -> np.ndarray:
    return self._load()[name]


class CheckpointTensors(Mapping[str, np.ndarray]):
  """Lazy name -> numpy view of a directory's safetensors files (single or sharded), local or remote."""

  def __init__(self, path: str):
    from safetensors import safe_open
    self.path = path
    directory = epath.Path(path)
    if (directory / INDEX).is_file():
      weight_map = json.loads((directory / INDEX).read_text())["weight_map"]
      files = sorted(set(weight_map.values()))
    elif (directory / WEIGHTS).is_file():
      files = [WEIGHTS]
      weight_map = None
    else:
      bins = [f for f in directory.iterdir() if f.name.endswith(".bin")] if directory.is_dir() else []
      hint = " (PyTorch .bin found: convert it with transformers' save_pretrained(safe_serialization=True))" if bins else ""
      raise FileNotFoundError(f"{path}: no {WEIGHTS} or {INDEX}{hint}")
    open_file = _RemoteSafetensors if files_lib.is_remote(path) else lambda f: safe_open(f, framework="np")
    self._handles = {f: open_file(os.path.join(path, f)) for f in files}
    if weight_map is None:
      weight_map = dict.fromkeys(self._handles[WEIGHTS].keys(), WEIGHTS)
    self._where = weight_map

  def __getitem__(self, name: str) -> np.ndarray:
    if name not in self._where:
      raise KeyError(f"{self.path}: no tensor {name!r}")
    return self._handles[self._where[name]].get_tensor(name)

  def __iter__(self) -> Iterator[str]:
    return iter(self._where)

  def __len__(self) -> int:
    return len(self._where)


# --------------------------------------------------------------------------- placing


def _concrete_mesh(abstract: jax.sharding.AbstractMesh) -> jax.sharding.Mesh:
  mesh = jax.sharding.get_mesh() if hasattr(jax.sharding, "get_mesh") else None
  if mesh is None or getattr(mesh, "empty", True) or mesh.shape_tuple != abstract.shape_tuple:
    raise ValueError("loading into an abstract model sharded over an AbstractMesh needs the "
                     "concrete mesh active: wrap the call in `with jax.set_mesh(mesh):`")
  return mesh


def place(value: np.ndarray, like: Any, dtype: Any) -> jax.Array:
  """Puts a host array onto the sharding of what it replaces (multi-host safe).

  `like` may be a concrete array or a `jax.ShapeDtypeStruct` (an abstract model from
  `nnx.eval_shape`), so checkpoints load without materialising a random init first.
  """
  value = np.asarray(value, dtype=dtype)
  sharding = getattr(like, "sharding", None)
  if isinstance(sharding, jax.sharding.Sharding) and not isinstance(sharding, jax.sharding.SingleDeviceSharding):
    if isinstance(sharding, jax.sharding.NamedSharding) and isinstance(sharding.mesh, jax.sharding.AbstractMesh):
      sharding = jax.sharding.NamedSharding(_concrete_mesh(sharding.mesh), sharding.spec)
    return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])
  return jnp.asarray(value)


def load_weights(model: nnx.Module, weights: str | Mapping[str, Any], *, strict: bool = True) -> None:
  """Fills every parameter of `model` from HF-named tensors (a directory or a mapping), in place.

  Each value is converted to our layout, checked against the parameter's shape and placed on
  its sharding. `strict`: checkpoint names that are neither mapped nor in the family's
  HF_IGNORED raise (a wrong architecture fails loudly instead of half-loading).
  """
  where = weights if isinstance(weights, str) else "state dict"
  tensors = CheckpointTensors(weights) if isinstance(weights, str) else weights
  family = _family(model)
  rows = family.hf_mapping(model)
  known = {row.name for row in rows}
  tensors = _without_task_prefix(tensors, known, getattr(family, "HF_PREFIXES", ()))
  missing = sorted(known - set(tensors))
  ignored = [re.compile(p) for p in family.HF_IGNORED]
  unexpected = sorted(n for n in set(tensors) - known if not any(p.fullmatch(n) for p in ignored))
  if missing or (strict and unexpected):
    raise ValueError(f"{where}: checkpoint does not match the {family.__name__.rsplit('.', 1)[-1]} model: "
                     f"missing={_head(missing)} unexpected={_head(unexpected)}")
  param_dtype = getattr(model.config, "param_dtype", jnp.float32)
  # The layers of a scanned stack (stack.LayerSlice rows) are gathered and placed as one stacked
  # array once all are read (so at most the stacks being filled sit on the host at once).
  pending: dict[int, tuple[nnx.Variable, dict[int, np.ndarray], str]] = {}
  for row in rows:
    value = row.to_ours(np.asarray(tensors[row.name], np.float32))
    if tuple(value.shape) != tuple(row.param.shape):
      raise ValueError(f"{where}: {row.name} has shape {tuple(value.shape)} (in our layout) but the "
                       f"model expects {tuple(row.param.shape)}; does config.json match the weights?")
    if not isinstance(row.param, stack.LayerSlice):
      row.param.set_value(place(value, row.param.get_value(), param_dtype))
      continue
    variable = row.param.stacked
    _, slices, _ = pending.setdefault(id(variable), (variable, {}, row.name))
    slices[row.param.index] = value
    if len(slices) == variable.shape[0]:
      del pending[id(variable)]
      variable.set_value(place(stack.slices_to_stack(variable, slices, where), variable.get_value(), param_dtype))
  for variable, slices, name in pending.values():
    stack.slices_to_stack(variable, slices, f"{where}: {name}")  # raises: names the layers not filled


class _Renamed(Mapping[str, np.ndarray]):
  def __init__(self, tensors: Mapping[str, Any], prefix: str):
    self._t, self._p = tensors, prefix
    self._names = [n.removeprefix(prefix) for n in tensors]

  def __getitem__(self, name):
    return self._t[self._p + name] if self._p + name in self._t else self._t[name]

  def __iter__(self):
    return iter(self._names)

  def __len__(self):
    return len(self._names)


def _without_task_prefix(tensors, known: set[str], prefixes) -> Mapping[str, Any]:
  """A task model's checkpoint (e.g. `BertForSequenceClassification`: "bert.embeddings...")
  read as the base model's names when the base names are absent."""
  if known & set(tensors):
    return tensors
  for prefix in prefixes:
    if any(prefix + name in tensors for name in known):
      return _Renamed(tensors, prefix)
  return tensors


def _head(names: list[str], n: int = 8) -> str:
  return str(names[:n])[:-1] + (f", ... {len(names) - n} more]" if len(names) > n else "]")


def load(path: str, family: types.ModuleType, *, mesh: jax.sharding.Mesh | None = None, rules=None,
         **overrides: Any) -> nnx.Module:
  """A model of `family` (its module) with the directory's config and weights, sharded over `mesh`
  by `rules` (logical axis rules) when given. `overrides` go to the family's config (dtype, ...).
  `families.load(path)` picks the family from config.json."""
  config = family.config_from_hf(read_config(path), **overrides)
  context = contextlib.nullcontext()
  if mesh is not None:
    context = _mesh_context(mesh, rules)
  with context:
    model = nnx.eval_shape(lambda: family.build(config, nnx.Rngs(0)))
    load_weights(model, path)
  _check_all_loaded(model, path)
  return model


@contextlib.contextmanager
def _mesh_context(mesh, rules):
  rules = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in (rules or ()))
  if stack.LAYERS_AXIS not in dict(rules):  # a scan_layers model's stacked axis: on no mesh axis by default
    rules += ((stack.LAYERS_AXIS, None),)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules), nnx.use_eager_sharding(True):
    yield


def _check_all_loaded(model: nnx.Module, where: str) -> None:
  abstract = [jax.tree_util.keystr(p) for p, v in jax.tree_util.tree_flatten_with_path(nnx.state(model))[0]
              if isinstance(v, jax.ShapeDtypeStruct)]
  if abstract:
    raise ValueError(f"{where}: the checkpoint left parameters unset: {_head(abstract)}")


# --------------------------------------------------------------------------- writing


def state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
  """HF name -> float32 numpy in torch layout (the inverse of `load_weights`)."""
  family = _family(model)
  out = {row.name: np.ascontiguousarray(row.to_hf(np.asarray(jax.device_get(row.param[...]), np.float32)))
         for row in family.hf_mapping(model)}
  return family.hf_aliases(out) if hasattr(family, "hf_aliases") else out


def save(model: nnx.Module, path: str, *, tokenizer=None) -> None:
  """Writes `config.json` and `model.safetensors` (and the tokenizer, when it can save itself)
  so that transformers' `AutoModel*.from_pretrained(path)` loads the model. Written to a
  temporary directory first and renamed into place: an interrupted export leaves no half model."""
  from safetensors.numpy import save_file
  family = _family(model)
  tensors = state_dict(model)
  # safetensors refuses shared memory between tensors: tied aliases are written as copies.
  seen: dict[int, str] = {}
  for name, value in tensors.items():
    if id(value) in seen:
      tensors[name] = value.copy()
    seen[id(value)] = name
  # A killed export's leftovers (PATH.tmp, PATH.old) are cleared by the next one.
  with files_lib.atomic_dir(path) as tmp:  # a local directory, uploaded when `path` is remote
    save_file(tensors, os.path.join(tmp, WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(tmp, CONFIG), "w") as f:
      json.dump(family.hf_config(model.config), f, indent=2, sort_keys=True)
    if tokenizer is not None:  # a transformers tokenizer, or jaxdistill's wrapper of one (`.hf`)
      backend = getattr(tokenizer, "hf", tokenizer)
      if not hasattr(backend, "save_pretrained"):
        raise TypeError(f"hf.save: cannot save tokenizer {tokenizer!r} (no save_pretrained)")
      backend.save_pretrained(tmp)
