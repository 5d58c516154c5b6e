"""Small pieces every model family shares: annotated parameters, masks, positions.

Parameters carry logical axis names (`nnx.with_partitioning`); `partitioning.py` maps them to
mesh axes with the config's rules. Flax shards a Variable at creation when
`nnx.using_eager_sharding()` is on, which needs a mesh: we only ask for it when one is active
(`jax.set_mesh`), so building a model without a mesh (tests, CPU demo) just records the names.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

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
