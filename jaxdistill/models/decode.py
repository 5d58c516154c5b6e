"""Jitted greedy decoding with a KV cache, shared by model families.

The loop (`greedy_loop`) knows nothing about the model: it drives a pure
`step_fn(params, cache, token [B], position []) -> (logits [B, V], cache)` inside one
`jax.lax.while_loop`, so there is no Python per step and decoding stops as soon as every
row has emitted EOS. A model family supplies the step function and the initial cache:
T5 via `T5.init_cache` / `T5.decode_step`; a decoder-only family (llama) can prefill its
cache from the prompt and reuse `greedy_loop` unchanged.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array
StepFn = Callable[[Any, Any, Array, Array], tuple[Array, Any]]


def greedy_loop(step_fn: StepFn, params: Any, cache: Any, *, batch_size: int, max_len: int,
                eos_id: int, start_id: int = 0, pad_id: int = 0,
                start_position: int | Array = 0) -> Array:
  """Greedy decoding as a while_loop; traceable (call it inside jit).

  Step i feeds the previous token (`start_id` first) at position `start_position + i`
  and writes the argmax to column i. A row is finished after it emits `eos_id` (kept in
  the output); later columns are `pad_id`. Returns int32 [batch_size, max_len].
  """

  def cond(carry):
    step, _, _, _, done = carry
    return (step < max_len) & ~jnp.all(done)

  def body(carry):
    step, token, cache, out, done = carry
    logits, cache = step_fn(params, cache, token, start_position + step)
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    token = jnp.where(done, pad_id, token)
    out = jax.lax.dynamic_update_slice_in_dim(out, token[:, None], step, axis=1)
    return step + 1, token, cache, out, done | (token == eos_id)

  init = (jnp.int32(0), jnp.full((batch_size,), start_id, jnp.int32), cache,
          jnp.full((batch_size, max_len), pad_id, jnp.int32),
          jnp.zeros((batch_size,), bool))
  return jax.lax.while_loop(cond, body, init)[3]


@functools.partial(jax.jit, static_argnames=("graphdef", "max_len"))
def seq2seq_greedy_decode(graphdef: nnx.GraphDef, state: nnx.State, encoder_input_ids: Array,
                          encoder_segment_ids: Array, *, max_len: int,
                          eos_id: int | Array) -> Array:
  """`greedy_decode` on an already split model (no per-call graph traversal).

  `eos_id` is traced (changing it does not recompile); `max_len` is static. The model must
  expose `encode`, `init_cache(encoded, segment_ids, max_len)` and
  `decode_step(token, position, cache)`, as `T5` does. Decoder start token is 0 (pad).
  """
  model = nnx.merge(graphdef, state)
  encoded = model.encode(encoder_input_ids, encoder_segment_ids)
  cache = model.init_cache(encoded, encoder_segment_ids, max_len)

  def step_fn(state, cache, token, position):
    return nnx.merge(graphdef, state).decode_step(token, position, cache)

  return greedy_loop(step_fn, state, cache, batch_size=encoder_input_ids.shape[0],
                     max_len=max_len, eos_id=eos_id)


def greedy_decode(model: nnx.Module, encoder_input_ids: Array,
                  encoder_segment_ids: Array | None = None, *, max_len: int,
                  eos_id: int) -> Array:
  """Greedy seq2seq decoding -> int32 [B, max_len]; tokens after EOS are 0.

  `encoder_segment_ids=None` derives them as `encoder_input_ids != 0`. Jitted; one compile
  per (model structure, input shape, max_len).
  """
  encoder_input_ids = jnp.asarray(encoder_input_ids, jnp.int32)
  if encoder_segment_ids is None:
    encoder_segment_ids = (encoder_input_ids != 0).astype(jnp.int32)
  graphdef, state = nnx.split(model)
  return seq2seq_greedy_decode(graphdef, state, encoder_input_ids,
                               jnp.asarray(encoder_segment_ids, jnp.int32),
                               max_len=max_len, eos_id=jnp.int32(eos_id))
