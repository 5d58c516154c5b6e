"""Device mesh, logical-axis rules and shardings.

Parameters carry *logical* axis names ("embed", "mlp", "heads", ...); the config's
`logical_axis_rules` map them to the mesh axes ("data", "fsdp", "tensor"). Everything
sharding-related lives here so the train loop only asks for shardings.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from flax.core import spmd as core_spmd
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the global batch is split over both data-parallel axes


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves axis sizes from the config; one axis may be -1 ("the rest")."""
  sizes = [int(mesh_config[a]) for a in MESH_AXES]
  free = [i for i, s in enumerate(sizes) if s == -1]
  if len(free) > 1:
    raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if free:
    if num_devices % known:
      raise ValueError(f"config.mesh: {num_devices} devices are not divisible by {known}")
    sizes[free[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(
        f"config.mesh: {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, have {num_devices}")
  return tuple(sizes)


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def _fit_to_shape(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
  """Drops mesh axes from dims they do not divide (small vocabularies, odd head counts)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[a] for a in names)
    fitted.append(axes if names and dim % size == 0 else None)
  return P(*fitted)


def _rules(rules: Sequence[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
  return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in rules)  # ConfigDict lists -> tuples


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Iterator[None]:
  """Inside a traced step: the models' `common.constrain` pins activations over `mesh` by `rules`.
  (An abstract mesh, which may be entered under jit, unlike `jax.set_mesh`.)"""
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), core_spmd.logical_axis_rules(_rules(rules)):
    yield


def state_shardings(state: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
  """NamedShardings for an (abstract) nnx.State whose Params carry logical axis names."""
  with core_spmd.logical_axis_rules(_rules(rules)):
    specs = nnx.get_partition_spec(state)

  def to_sharding(spec, leaf):
    shape = getattr(leaf, "shape", ())
    return NamedSharding(mesh, _fit_to_shape(spec if isinstance(spec, P) else P(), shape, mesh))

  return jax.tree.map(to_sharding, specs, state, is_leaf=lambda x: isinstance(x, P))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each host's slice of the batch into one global array sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def describe(mesh: Mesh) -> str:
  return " x ".join(f"{name}={size}" for name, size in mesh.shape.items()) + f" ({mesh.size} devices)"
