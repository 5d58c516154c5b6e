"""Small pieces every model family shares: annotated parameters, activation constraints, masks, positions.

Parameters carry logical axis names (`nnx.with_partitioning`); `partitioning.py` maps them to
mesh axes with the config's rules. Flax shards a Variable at creation when
`nnx.using_eager_sharding()` is on, which needs a mesh: we only ask for it when one is active
(`jax.set_mesh`), so building a model without a mesh (tests, CPU demo) just records the names.

Activations are pinned with `constrain` at a few places (the residual stream between layers, the
logits): without it XLA may follow the fsdp-sharded weights and keep full-batch activations on every
device. It acts only inside `partitioning.activation_sharding` (the train step, evaluation and its
decoding), else it is a no-op.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import spmd as core_spmd
from jax.sharding import PartitionSpec as P

Array = jax.Array
DType = Any

# Masked scores use the float32 minimum (not -inf): an all-padding query row then gets a
# uniform softmax instead of NaN.
NEG = float(np.finfo(np.float32).min)


def eager_sharding() -> bool:
  """Shard at creation only when flax asks for it *and* a mesh is active."""
  return nnx.using_eager_sharding() and not jax.sharding.get_abstract_mesh().empty


def param(rngs: nnx.Rngs, init, shape: tuple[int, ...], axes: tuple[str | None, ...],
          dtype: DType) -> nnx.Param:
  """An `nnx.Param` initialised by `init` and annotated with logical `axes`."""
  annotated = nnx.with_partitioning(init, axes)
  return nnx.Param(annotated(rngs.params(), shape, dtype), eager_sharding=eager_sharding())


def constrain(x: Array, logical_axes: tuple[str | None, ...]) -> Array:
  """x sharded as its logical axes map under the active rules (a mesh axis that does not divide its
  dim is dropped); x itself when no mesh and rules are active (see partitioning.activation_sharding)."""
  mesh, rules = jax.sharding.get_abstract_mesh(), dict(core_spmd.get_logical_axis_rules())
  if mesh.empty or not rules:
    return x
  spec = []
  for dim, name in zip(x.shape, logical_axes):
    axes = rules.get(name) if name else None
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    spec.append(axes if names and dim % math.prod(mesh.shape[a] for a in names) == 0 else None)
  return jax.lax.with_sharding_constraint(x, P(*spec))


def constrain_hidden(x: Array) -> Array:
  """[B, L, D] hidden states: split over the batch axes, whole along length and features."""
  return constrain(x, ("batch", None, None))


def constrain_logits(x: Array) -> Array:
  """[B, L, V] logits: split over the batch axes and, with tensor parallelism, the vocabulary."""
  return constrain(x, ("batch", None, "vocab"))


def normal(std: float):
  return nnx.initializers.normal(stddev=std)


def segment_mask(q_segments: Array, k_segments: Array, *, causal: bool = False) -> Array:
  """[B,Q], [B,K] segment ids (0 = padding) -> bool [B,1,Q,K]: same segment, key not
  padding, and (causal) key index <= query index."""
  m = (q_segments[:, :, None] == k_segments[:, None, :]) & (k_segments[:, None, :] != 0)
  if causal:
    q, k = q_segments.shape[1], k_segments.shape[1]
    m = m & (jnp.arange(k)[None, :] <= jnp.arange(q)[:, None])[None]
  return m[:, None]


def default_positions(ids: Array) -> Array:
  """0..L-1 for every row of [B, L] ids (an unpacked batch)."""
  return jnp.broadcast_to(jnp.arange(ids.shape[-1], dtype=jnp.int32), ids.shape)


def default_segments(ids: Array, pad_id: int = 0) -> Array:
  """1 for real tokens, 0 for padding (an unpacked batch)."""
  return (ids != pad_id).astype(jnp.int32)


class LayerNorm(nnx.Module):
  """LayerNorm with scale and bias (BERT / DeBERTa), statistics in float32."""

  def __init__(self, dim: int, eps: float, dtype: DType, param_dtype: DType, *, rngs: nnx.Rngs):
    self.eps, self.dtype = eps, dtype
    self.scale = param(rngs, nnx.initializers.ones, (dim,), ("embed",), param_dtype)
    self.bias = param(rngs, nnx.initializers.zeros, (dim,), ("embed",), param_dtype)

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(self.dtype)


def mean_pool(hidden: Array, mask: Array) -> Array:
  """Mean of hidden [B, L, D] over positions where mask [B, L] is nonzero (float32)."""
  m = mask.astype(jnp.float32)[..., None]
  return (hidden.astype(jnp.float32) * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1e-9)


class TrainingWrapper(nnx.Module):
  """A training-only module around a student, kept at `.student` (methods/base.py wrap_student):
  evaluation, decoding, checkpoints of the best model and export see only the student."""

  student: nnx.Module


def unwrap(model: nnx.Module) -> nnx.Module:
  """The student inside any TrainingWrappers."""
  while isinstance(model, TrainingWrapper):
    model = model.student
  return model
