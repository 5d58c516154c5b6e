"""Layer stacks: a family's repeated layers run as a Python loop or scanned, each optionally rematerialised.

    self.layers = stack.build(lambda: Layer(config, rngs=rngs), n, scan=config.scan_layers)
    x, ys = stack.run(self.layers, fn, x, xs, remat=config.remat, rngs=rngs)  # fn(layer, x, xs[i], rngs) -> (x, y)

`build` makes the n layers one after another (so a scanned and an unscanned model made from the same
seed hold the same weights) and keeps them
  - unscanned: an `nnx.List` (parameter paths layers/0/..., layers/1/...), run by a Python loop;
  - scanned (`scan=True`): a `Stacked` module holding one layer module whose every Variable has a
    leading axis of n, named LAYERS_AXIS ("layers", which the default logical-axis rules map to no mesh
    axis, so each layer's own dims shard as before), run by `jax.lax.scan`: the traced program, HLO size
    and compile time do not grow with depth.

Remat (`remat`, REMAT_POLICIES) wraps each layer's call in `jax.checkpoint` (`nnx.remat` in the loop,
inside the scanned body when scanned): "none" keeps every activation for the backward pass, "full"
keeps only each layer's input and recomputes the layer, "dots" also keeps the outputs of matmuls without
batch dimensions (the projections; `jax.checkpoint_policies.dots_with_no_batch_dims_saveable`), so the
backward pass recomputes only the cheap elementwise work and the attention scores.

Between layers the residual stream (a [B, L, D] carry) is pinned to the batch axes
(`common.constrain_hidden`; a no-op outside a train step's activation sharding).

Dropout in a scanned stack: each layer gets its own key split from one `rngs.dropout()` draw (the masks
differ from the loop's, which draws from the shared stream layer after layer; both are valid dropout).

Per layer, a `Stacked` reads like the list: `layers[i]` / iteration give `LayerView`s whose Variables
are `LayerSlice`s (slice i of the stacked array), so a family's `hf_mapping` is written once, per layer,
for both layouts; `hf.load_weights` stacks the slices it fills.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import spmd as core_spmd

from jaxdistill.models import common

LAYERS_AXIS = "layers"
# model.remat -> the jax.checkpoint policy (None: save nothing but the layer's inputs).
REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    "none": None,
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
REMAT = tuple(REMAT_POLICIES)

# fn(layer, carry, x, rngs) -> (carry, y)
LayerFn = Callable[[nnx.Module, Any, Any, nnx.Rngs | None], tuple[Any, Any]]


def check_remat(remat: str) -> None:
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat={remat!r}: expected one of {', '.join(REMAT)}")


# --------------------------------------------------------------------------- building


class Stacked(nnx.Module):
  """n layers of one structure as one module (`layer`) whose Variables carry a leading layer axis."""

  def __init__(self, layer: nnx.Module, count: int):
    self.layer = layer
    self.count = count

  def __len__(self) -> int:
    return self.count

  def __getitem__(self, i: int) -> LayerView:
    if not -self.count <= i < self.count:
      raise IndexError(f"layer {i} of {self.count}")
    return LayerView(self.layer, i % self.count)

  def __iter__(self) -> Iterator[LayerView]:
    return (LayerView(self.layer, i) for i in range(self.count))


def _stacked_variable(variables: list[nnx.Variable]) -> nnx.Variable:
  first = variables[0]
  metadata = first.get_metadata()
  for key in ("hijax", "ref", "eager_sharding"):  # constructor arguments, set anew below
    metadata.pop(key, None)
  if "out_sharding" in metadata and metadata["out_sharding"] is not None:
    metadata["out_sharding"] = (LAYERS_AXIS, *metadata["out_sharding"])
  eager = common.eager_sharding()
  if eager and LAYERS_AXIS not in dict(core_spmd.get_logical_axis_rules()):
    # Without a rule flax would read "layers" as a mesh axis name and fail obscurely.
    raise ValueError(f"scan_layers under a mesh needs a logical-axis rule for {LAYERS_AXIS!r}, e.g. "
                     f"({LAYERS_AXIS!r}, None) as in config.logical_axis_rules")
  value = jnp.stack([v.get_value() for v in variables])
  return type(first)(value, eager_sharding=eager, **metadata)


def stack_layers(layers: list[nnx.Module]) -> Stacked:
  """The layers (of one structure) as one `Stacked` module; their Variables are stacked in order."""
  graphdef, first = nnx.split(layers[0])
  states = [first] + [nnx.split(layer)[1] for layer in layers[1:]]
  for i, layer in enumerate(layers[1:], 1):
    if nnx.graphdef(layer) != graphdef:
      raise ValueError(f"stack_layers: layer {i} differs in structure from layer 0")
  is_var = lambda x: isinstance(x, nnx.Variable)
  stacked = jax.tree.map(lambda *vs: _stacked_variable(list(vs)), *states, is_leaf=is_var)
  return Stacked(nnx.merge(graphdef, stacked), len(layers))


def build(make: Callable[[], nnx.Module], n: int, *, scan: bool) -> nnx.List | Stacked:
  """n layers, each `make()` (called in order): an `nnx.List`, or with `scan` one `Stacked` module."""
  layers = [make() for _ in range(n)]
  if scan and n > 0:
    return stack_layers(layers)
  return nnx.List(layers)


# --------------------------------------------------------------------------- running


def run(layers: nnx.List | Stacked, fn: LayerFn, carry: Any, xs: Any = None, *, remat: str = "none",
        rngs: nnx.Rngs | None = None) -> tuple[Any, Any]:
  """Applies `fn(layer, carry, x, rngs) -> (carry, y)` layer by layer, x = layer i's part of `xs`.

  Returns (carry, ys): unscanned, `xs` is a per-layer sequence (or None) and ys a list; scanned, the
  leaves of `xs` and of ys have a leading layer axis (`jax.lax.scan`'s xs and ys).
  """
  check_remat(remat)
  carry = _pin(carry)
  if isinstance(layers, Stacked):
    return _scan(layers, fn, carry, xs, remat, rngs)
  call = fn if remat == "none" else nnx.remat(fn, policy=REMAT_POLICIES[remat])
  ys = []
  for i, layer in enumerate(layers):
    carry, y = call(layer, carry, None if xs is None else xs[i], rngs)
    carry = _pin(carry)
    ys.append(y)
  return carry, ys


def _pin(carry: Any) -> Any:
  """A [B, L, D] residual stream between layers stays split over the batch axes (common.constrain)."""
  return common.constrain_hidden(carry) if isinstance(carry, jax.Array) and carry.ndim == 3 else carry


def _scan(layers: Stacked, fn: LayerFn, carry: Any, xs: Any, remat: str, rngs: nnx.Rngs | None):
  graphdef, state = nnx.split(layers.layer)
  params = jax.tree.map(lambda v: v.get_value(), state, is_leaf=lambda v: isinstance(v, nnx.Variable))
  keys = None if rngs is None else jax.random.split(rngs.dropout(), layers.count)

  def one_layer(params, carry, x, key):
    with nnx.use_eager_sharding(False):  # per-layer slices: the stacked sharding names do not apply
      layer = nnx.merge(graphdef, params)
    return fn(layer, carry, x, None if key is None else nnx.Rngs(dropout=key))

  if remat != "none":
    # prevent_cse=False: scan already keeps the recomputation from being merged with the forward.
    one_layer = jax.checkpoint(one_layer, policy=REMAT_POLICIES[remat], prevent_cse=False)

  def body(carry, inputs):
    params, x, key = inputs
    carry, y = one_layer(params, carry, x, key)
    return _pin(carry), y

  return jax.lax.scan(body, carry, (params, xs, keys))


def per_layer(layers: nnx.List | Stacked, make: Callable[[], Any]) -> Any:
  """A per-layer `xs` for `run` with every layer's value `make()` (e.g. an empty KV cache): a list,
  or (scanned) its leaves broadcast along a leading layer axis."""
  if isinstance(layers, Stacked):
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (layers.count, *jnp.shape(a))), make())
  return [make() for _ in range(len(layers))]


def each(layers: nnx.List | Stacked, fn: Callable[[nnx.Module], Any]) -> Any:
  """`fn(layer)` of every layer: a list, or (scanned) one pytree with a leading layer axis."""
  return run(layers, lambda layer, carry, x, rngs: (carry, fn(layer)), None)[1]


# --------------------------------------------------------------------------- per-layer views


class LayerSlice:
  """Layer `index` of a stacked Variable, read like a Variable (shape, `[...]`, get_value / set_value)."""

  def __init__(self, stacked: nnx.Variable, index: int):
    self.stacked, self.index = stacked, index

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.stacked.shape[1:])

  @property
  def dtype(self):
    return self.stacked.get_value().dtype

  def get_value(self) -> Any:
    value = self.stacked.get_value()
    if isinstance(value, jax.ShapeDtypeStruct):  # an abstract model (nnx.eval_shape)
      return jax.ShapeDtypeStruct(value.shape[1:], value.dtype)
    return value[self.index]

  def __getitem__(self, key) -> Any:
    return self.get_value()[key]

  def set_value(self, value: Any) -> None:
    """Writes this layer's slice (a whole-array update; hf.load_weights stacks all layers at once)."""
    self.stacked.set_value(self.stacked.get_value().at[self.index].set(value))

  def __repr__(self) -> str:
    return f"LayerSlice({type(self.stacked).__name__}{list(self.stacked.shape)}, index={self.index})"


class LayerView:
  """Layer `index` of a stacked module: its Variables read as `LayerSlice`s, its submodules as views,
  other attributes (static config: shapes, flags) as they are."""

  def __init__(self, module: nnx.Module, index: int):
    object.__setattr__(self, "_module", module)
    object.__setattr__(self, "_index", index)

  def __getattr__(self, name: str) -> Any:
    value = getattr(self._module, name)
    if isinstance(value, nnx.Variable):
      return LayerSlice(value, self._index)
    if isinstance(value, nnx.Module):
      return LayerView(value, self._index)
    return value

  def __setattr__(self, name: str, value: Any) -> None:
    raise AttributeError(f"a LayerView is read-only ({name!r}); set a slice's value with set_value")

  def __repr__(self) -> str:
    return f"LayerView({type(self._module).__name__}, index={self._index})"


def slices_to_stack(stacked: nnx.Variable, values: dict[int, np.ndarray], where: str) -> np.ndarray:
  """The full stacked array from every layer's slice (hf.load_weights); names what is missing."""
  count = stacked.shape[0]
  missing = sorted(set(range(count)) - set(values))
  if missing:
    raise ValueError(f"{where}: layers {missing} of a stacked parameter were not filled")
  return np.stack([values[i] for i in range(count)])
