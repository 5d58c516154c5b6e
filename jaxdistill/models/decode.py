"""Jitted greedy decoding with a KV cache, shared by model families.

The loop (`greedy_loop`) knows nothing about the model: it drives a pure
`step_fn(params, cache, token [B], position []) -> (logits [B, V], cache)` inside one
`jax.lax.while_loop`, so there is no Python per step and decoding stops as soon as every
row has emitted EOS. A model family supplies the step function and the initial cache:
T5 via `T5.init_cache` / `T5.decode_step`; a decoder-only family (llama) prefills its
cache from the prompt and reuses `greedy_loop` (`causal_lm_generate`).

Sampling goes through the loop's `select` argument (`sampler(...)`: temperature, top-k,
top-p), for both paths: `seq2seq_generate` (T5) and `causal_lm_generate`.

The teacher's decode (`causal_lm_sample`, used by `jaxdistill.teachers.local`) is the same loop
(`decode_loop`) with per-row sampling (`row_sampler`: each row its own PRNG key derived from
(seed, sample index), its own temperature / top-k / top-p / max_tokens), optionally recording
each generated token's logprob and the top-k alternatives under the raw logits. With those
records off it traces to exactly the plain loop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array
StepFn = Callable[[Any, Any, Array, Array], tuple[Array, Any]]
# (logits [B, V] float32, step index []) -> token ids [B]
SelectFn = Callable[[Array, Array], Array]


def greedy_select(logits: Array, step: Array) -> Array:
  del step
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def greedy_loop(step_fn: StepFn, params: Any, cache: Any, *, batch_size: int, max_len: int,
                eos_id: int | Array, start_id: int | Array = 0, pad_id: int = 0,
                start_position: int | Array = 0, select: SelectFn | None = None) -> Array:
  """Greedy decoding as a while_loop; traceable (call it inside jit).

  Step i feeds the previous token (`start_id` first: a scalar or one per row [B]) at
  position `start_position + i` and writes the selected token to column i: the argmax, or
  `select(logits, i)` (e.g. `sampler(...)`). A row is finished after it emits `eos_id` (a
  scalar, or several ids [N]; kept in the output); later columns are `pad_id`. Returns
  int32 [batch_size, max_len].
  """
  return decode_loop(step_fn, params, cache, batch_size=batch_size, max_len=max_len, eos_id=eos_id,
                     start_id=start_id, pad_id=pad_id, start_position=start_position,
                     select=select)["tokens"]


def decode_loop(step_fn: StepFn, params: Any, cache: Any, *, batch_size: int, max_len: int,
                eos_id: int | Array, start_id: int | Array = 0, pad_id: int = 0,
                start_position: int | Array = 0, select: SelectFn | None = None,
                limit: Array | None = None, top_logprobs: int | None = None) -> dict[str, Array]:
  """`greedy_loop` that may also stop rows early and record log-probabilities.

  `limit` [B] (optional): row r finishes after `limit[r]` tokens (a per-row max_tokens in a
  batch decoded to the longest). `top_logprobs` None records nothing more (the plain loop);
  0 records each chosen token's logprob, k > 0 also the k most likely ids and their logprobs,
  all under log_softmax of the raw step logits (temperature 1, before any top-k / top-p
  filtering: the teacher's own distribution, what distillation needs). Returns {"tokens"
  [B,T] int32, and with top_logprobs: "logprobs" [B,T], "top_ids" [B,T,k], "top_logprobs"
  [B,T,k]}; columns after a row finished are `pad_id` / 0.
  """
  if select is None:
    select = greedy_select
  eos = jnp.reshape(jnp.asarray(eos_id, jnp.int32), (1, -1))
  out = {"tokens": jnp.full((batch_size, max_len), pad_id, jnp.int32)}
  if top_logprobs is not None:
    out["logprobs"] = jnp.zeros((batch_size, max_len), jnp.float32)
    if top_logprobs > 0:
      out["top_ids"] = jnp.zeros((batch_size, max_len, top_logprobs), jnp.int32)
      out["top_logprobs"] = jnp.zeros((batch_size, max_len, top_logprobs), jnp.float32)

  def cond(carry):
    step, _, _, _, done = carry
    return (step < max_len) & ~jnp.all(done)

  def body(carry):
    step, token, cache, out, done = carry
    logits, cache = step_fn(params, cache, token, start_position + step)
    token = select(logits, step).astype(jnp.int32)
    token = jnp.where(done, pad_id, token)
    new = {"tokens": token}
    if top_logprobs is not None:
      new.update(token_logprobs(logits, token, top_logprobs, done))
    out = {k: jax.lax.dynamic_update_slice_in_dim(v, new[k][:, None].astype(v.dtype), step, axis=1)
           for k, v in out.items()}
    finished = jnp.any(token[:, None] == eos, axis=1)
    if limit is not None:
      finished = finished | (step + 1 >= limit)
    return step + 1, token, cache, out, done | finished

  init = (jnp.int32(0), jnp.broadcast_to(jnp.asarray(start_id, jnp.int32), (batch_size,)), cache,
          out, jnp.zeros((batch_size,), bool))
  return jax.lax.while_loop(cond, body, init)[3]


def token_logprobs(logits: Array, token: Array, k: int, done: Array) -> dict[str, Array]:
  """One step's records for `decode_loop`: the chosen token's logprob [B] and (k > 0) the top-k
  ids / logprobs [B,k] under log_softmax(logits) in float32; zeros for finished rows."""
  logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  chosen = jnp.take_along_axis(logprobs, token[:, None], axis=-1)[:, 0]
  out = {"logprobs": jnp.where(done, 0.0, chosen)}
  if k > 0:
    values, ids = jax.lax.top_k(logprobs, k)
    out["top_logprobs"] = jnp.where(done[:, None], 0.0, values)
    out["top_ids"] = jnp.where(done[:, None], 0, ids)
  return out


def _seq2seq_loop(graphdef, state, encoder_input_ids, encoder_segment_ids, max_len, eos_id, select=None):
  """Encode once, project the cross-attention cache, then `greedy_loop` over `decode_step`."""
  model = nnx.merge(graphdef, state)
  encoded = model.encode(encoder_input_ids, encoder_segment_ids)
  cache = model.init_cache(encoded, encoder_segment_ids, max_len)

  def step_fn(state, cache, token, position):
    return nnx.merge(graphdef, state).decode_step(token, position, cache)

  return greedy_loop(step_fn, state, cache, batch_size=encoder_input_ids.shape[0], max_len=max_len,
                     eos_id=eos_id, select=select)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_len"))
def seq2seq_greedy_decode(graphdef: nnx.GraphDef, state: nnx.State, encoder_input_ids: Array,
                          encoder_segment_ids: Array, *, max_len: int,
                          eos_id: int | Array) -> Array:
  """`greedy_decode` on an already split model (no per-call graph traversal).

  `eos_id` is traced (changing it does not recompile); `max_len` is static. The model must
  expose `encode`, `init_cache(encoded, segment_ids, max_len)` and
  `decode_step(token, position, cache)`, as `T5` does. Decoder start token is 0 (pad).
  """
  return _seq2seq_loop(graphdef, state, encoder_input_ids, encoder_segment_ids, max_len, eos_id)


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


# --------------------------------------------------------------------------- sampling


def sampler(rng: Array, *, temperature: float | Array, top_k: int = 0,
            top_p: float = 1.0) -> SelectFn:
  """A `select` for `greedy_loop` that samples from softmax(logits / temperature > 0), keeping
  the `top_k` most likely tokens (0: all) and then the smallest set whose probability
  reaches `top_p` (1.0: all), in transformers' order. Step i draws with
  `fold_in(rng, i)`, so a fixed `rng` reproduces the same tokens. `top_k` / `top_p` are
  Python values (static under jit); `temperature` may be traced."""

  def select(logits: Array, step: Array) -> Array:
    logits = logits.astype(jnp.float32) / temperature
    if top_k > 0:
      kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][:, -1:]
      logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
      ordered = jnp.sort(logits, axis=-1)[:, ::-1]
      probs = jax.nn.softmax(ordered, axis=-1)
      before = jnp.cumsum(probs, axis=-1) - probs  # mass of the more likely tokens
      # Keep a token while the mass before it is < top_p (the most likely one always).
      kept = jnp.where(before < top_p, ordered, jnp.inf)
      logits = jnp.where(logits < jnp.min(kept, axis=-1, keepdims=True), -jnp.inf, logits)
    return jax.random.categorical(jax.random.fold_in(rng, step), logits, axis=-1).astype(jnp.int32)

  return select


def row_keys(base_seed: Array | int, seeds: Array, sample_ids: Array) -> Array:
  """Per-row PRNG keys [B]: fold_in(fold_in(key(base_seed), seed[r]), sample_id[r]). A row's
  randomness depends only on (base seed, its seed, its sample index), never on its batch."""
  base = jax.random.key(jnp.asarray(base_seed, jnp.uint32))
  return jax.vmap(lambda s, i: jax.random.fold_in(jax.random.fold_in(base, s), i))(
      jnp.asarray(seeds, jnp.uint32), jnp.asarray(sample_ids, jnp.uint32))


def row_sampler(keys: Array, temperature: Array, top_k: Array | None = None,
                top_p: Array | None = None) -> SelectFn:
  """A `select` with per-row keys [B] and per-row parameters [B], so rows of different
  requests share a batch and a row draws the same tokens in any batch.

  Row r at step i draws from softmax(logits / temperature[r]) with `fold_in(keys[r], i)`
  (vmapped over rows: the noise of a row is a function of its key alone), keeping the
  `top_k[r]` most likely tokens (0: all) and then the smallest set whose probability reaches
  `top_p[r]` (>= 1: all), in transformers' order, as `sampler` does. temperature[r] == 0 is
  greedy (argmax). `top_k` / `top_p` None skip the filter for every row (no vocabulary sort).
  """

  def select(logits: Array, step: Array) -> Array:
    logits = logits.astype(jnp.float32)
    hot = temperature > 0
    scaled = logits / jnp.where(hot, temperature, 1.0)[:, None]
    if top_k is not None or top_p is not None:
      scaled = _filtered(scaled, top_k, top_p)
    draw = jax.vmap(lambda key, row: jax.random.categorical(jax.random.fold_in(key, step), row))(
        keys, scaled)
    return jnp.where(hot, draw, jnp.argmax(logits, axis=-1)).astype(jnp.int32)

  return select


def _filtered(logits: Array, top_k: Array | None, top_p: Array | None) -> Array:
  """logits [B,V] with tokens outside each row's top-k, then top-p, set to -inf."""
  ordered = jnp.sort(logits, axis=-1)[:, ::-1]  # most likely first
  cutoff = jnp.full(logits.shape[:1], -jnp.inf)
  if top_k is not None:
    k = jnp.clip(top_k, 1, logits.shape[-1]).astype(jnp.int32)
    kth = jnp.take_along_axis(ordered, (k - 1)[:, None], axis=-1)[:, 0]
    cutoff = jnp.where(top_k > 0, kth, cutoff)
    ordered = jnp.where(ordered < cutoff[:, None], -jnp.inf, ordered)
  if top_p is not None:
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the more likely tokens
    # Keep a token while the mass before it is < top_p (the most likely one always).
    kept = jnp.where(before < top_p[:, None], ordered, jnp.inf)
    cutoff = jnp.where(top_p < 1.0, jnp.maximum(cutoff, jnp.min(kept, axis=-1)), cutoff)
  return jnp.where(logits < cutoff[:, None], -jnp.inf, logits)


def _select(greedy: bool, rng: Array | None, temperature: Array, top_k: int,
            top_p: float) -> SelectFn | None:
  return None if greedy else sampler(rng, temperature=temperature, top_k=top_k, top_p=top_p)


def _rng_and_temperature(temperature: float, rng: Array | None) -> tuple[Array, Array]:
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  if temperature > 0 and rng is None:
    raise ValueError("sampling (temperature > 0) needs an rng key")
  return (jax.random.key(0) if rng is None else rng), jnp.float32(temperature)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_len", "top_k", "top_p", "greedy"))
def seq2seq_generate(graphdef: nnx.GraphDef, state: nnx.State, encoder_input_ids: Array,
                     encoder_segment_ids: Array, rng: Array, temperature: Array, *,
                     max_len: int, eos_id: int | Array, top_k: int = 0, top_p: float = 1.0,
                     greedy: bool = False) -> Array:
  """`seq2seq_greedy_decode` with the token choice of `sampler` (or argmax when `greedy`)."""
  return _seq2seq_loop(graphdef, state, encoder_input_ids, encoder_segment_ids, max_len, eos_id,
                       _select(greedy, rng, temperature, top_k, top_p))


# --------------------------------------------------------------------------- decoder-only


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "top_k", "top_p",
                                             "greedy", "pad_id"))
def causal_lm_decode(graphdef: nnx.GraphDef, state: nnx.State, prompt_ids: Array,
                     prompt_mask: Array, eos_id: Array, rng: Array, temperature: Array, *,
                     max_new_tokens: int, top_k: int = 0, top_p: float = 1.0,
                     greedy: bool = True, pad_id: int = 0) -> Array:
  """`causal_lm_generate` on an already split model (no per-call graph traversal).

  The model must expose `init_cache(prompt_mask, max_len)`, `extend(ids [B,Q], index,
  cache) -> (logits, cache)` and `decode_step(token, position, cache)`, as `Llama` does
  (see `_prefilled`).
  """
  cache, step_fn = _prefilled(graphdef, state, prompt_ids, prompt_mask, max_new_tokens)
  return greedy_loop(step_fn, state, cache, batch_size=prompt_ids.shape[0], max_len=max_new_tokens,
                     eos_id=eos_id, start_id=prompt_ids[:, -1], pad_id=pad_id,
                     start_position=prompt_ids.shape[1] - 1,
                     select=_select(greedy, rng, temperature, top_k, top_p))


def _prefilled(graphdef: nnx.GraphDef, state: nnx.State, prompt_ids: Array, prompt_mask: Array,
               max_new_tokens: int) -> tuple[Any, StepFn]:
  """The cache with the prompt but its last column prefilled in one call, and the step
  function; the loop then feeds the last column (the last real token of every left-padded
  row) at slot P-1, and so on."""
  model = nnx.merge(graphdef, state)
  length = prompt_ids.shape[1]
  cache = model.init_cache(prompt_mask, length + max_new_tokens - 1)
  if length > 1:
    _, cache = model.extend(prompt_ids[:, :-1], 0, cache)  # its logits are unused: XLA drops them

  def step_fn(state, cache, token, position):
    return nnx.merge(graphdef, state).decode_step(token, position, cache)

  return cache, step_fn


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "filter_top_k",
                                             "filter_top_p", "top_logprobs", "pad_id"))
def causal_lm_sample(graphdef: nnx.GraphDef, state: nnx.State, prompt_ids: Array,
                     prompt_mask: Array, eos_id: Array, base_seed: Array, seeds: Array,
                     sample_ids: Array, temperature: Array, top_k: Array, top_p: Array,
                     limit: Array, *, max_new_tokens: int, filter_top_k: bool = False,
                     filter_top_p: bool = False, top_logprobs: int | None = None,
                     pad_id: int = 0) -> dict[str, Array]:
  """Per-row sampled continuation of left-padded prompts (the teacher's decode), one program.

  Every per-row argument is [B]: `seeds` / `sample_ids` give row r the key
  `row_keys(base_seed, seeds, sample_ids)[r]` (so its tokens do not depend on the batch it is
  in), `temperature` (0: greedy), `top_k` (0: off), `top_p` (1: off) and `limit` (its
  max_tokens <= max_new_tokens) are that row's sampling parameters. `filter_top_k` /
  `filter_top_p` (static) enable the filters for the batch (off: no vocabulary sort per
  step). `top_logprobs` as in `decode_loop`. Returns `decode_loop`'s dict.
  """
  cache, step_fn = _prefilled(graphdef, state, prompt_ids, prompt_mask, max_new_tokens)
  select = row_sampler(row_keys(base_seed, seeds, sample_ids), temperature,
                       top_k if filter_top_k else None, top_p if filter_top_p else None)
  return decode_loop(step_fn, state, cache, batch_size=prompt_ids.shape[0],
                     max_len=max_new_tokens, eos_id=eos_id, start_id=prompt_ids[:, -1],
                     pad_id=pad_id, start_position=prompt_ids.shape[1] - 1, select=select,
                     limit=limit, top_logprobs=top_logprobs)


def causal_lm_generate(model: nnx.Module | tuple[nnx.GraphDef, nnx.State], prompt_ids: Array,
                       prompt_mask: Array, *, max_new_tokens: int, eos_id: int | list[int],
                       temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                       rng: Array | None = None, pad_id: int = 0) -> Array:
  """Continues left-padded prompts -> int32 [B, max_new_tokens] new tokens.

  `model` is a decoder-only model (`Llama`) or its `nnx.split` (graphdef, state), which
  saves the graph traversal on repeated calls. `prompt_ids` [B,P] are right-aligned (left
  padding, `prompt_mask` 0 there; rotary positions start at 0 at each row's first real
  token). Greedy when `temperature == 0`, else sampled with `rng` (see `sampler`). Rows stop
  after an `eos_id` (one id or several) and then emit `pad_id`. Jitted: one compile per
  (model structure, prompt shape, max_new_tokens, top_k, top_p, greedy or not).
  """
  graphdef, state = model if isinstance(model, tuple) else nnx.split(model)
  prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
  if prompt_ids.ndim != 2 or prompt_ids.shape[1] < 1:
    raise ValueError(f"prompt_ids must be [B, P] with P >= 1, got {prompt_ids.shape}")
  rng, temp = _rng_and_temperature(temperature, rng)
  greedy = temperature == 0
  return causal_lm_decode(graphdef, state, prompt_ids, jnp.asarray(prompt_mask, jnp.int32),
                          jnp.asarray(eos_id, jnp.int32), rng, temp,
                          max_new_tokens=max_new_tokens, top_k=0 if greedy else top_k,
                          top_p=1.0 if greedy else float(top_p), greedy=greedy, pad_id=pad_id)


# --------------------------------------------------------------------------- encoder students' explanations

@functools.partial(jax.jit, static_argnames=("graphdef", "max_len"))
def _explain(graphdef: nnx.GraphDef, state: nnx.State, input_ids: Array, segment_ids: Array, max_len: int,
             start_id: Array, eos_id: Array) -> Array:
  model = nnx.merge(graphdef, state)
  encoded = model.encoder(input_ids, segment_ids, None)
  batch = input_ids.shape[0]
  tokens = jnp.full((batch, max_len + 1), start_id, jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(max_len, dtype=jnp.int32), (batch, max_len))
  ones = jnp.ones((batch, max_len), jnp.int32)

  def step(carry):
    t, tokens, done = carry
    # The decoder reads the whole buffer; its causal mask keeps position t blind to what follows.
    # Only position t goes through the output layer: the [B, T, V] logits would cost T times more.
    hidden = model.explainer.hidden(tokens[:, :max_len], ones, positions, encoded, segment_ids)
    logits = model.explainer.logits(jax.lax.dynamic_slice_in_dim(hidden, t, 1, axis=1))
    token = jnp.where(done, 0, jnp.argmax(logits[:, 0], -1).astype(jnp.int32))
    return t + 1, tokens.at[:, t + 1].set(token), done | (token == eos_id)

  # Stops once every row has its EOS; the positions not reached are the zeros they would be anyway.
  tokens = tokens.at[:, 1:].set(0)
  _, tokens, _ = jax.lax.while_loop(lambda c: (c[0] < max_len) & ~jnp.all(c[2]), step,
                                    (jnp.int32(0), tokens, jnp.zeros((batch,), bool)))
  return tokens[:, 1:]


def explain_greedy(model: nnx.Module, input_ids: Array, segment_ids: Array, *, max_len: int, start_id: int,
                   eos_id: int) -> Array:
  """Greedy explanations of an encoder student (models/heads.py EncoderStudent: its explanation
  decoder over the encoder states) -> int32 [B, max_len], 0 after EOS. No KV cache: the decoder is
  two small layers and an explanation a few dozen tokens, so each step recomputes the prefix's hidden
  states, but only the newest position's logits."""
  graphdef, state = nnx.split(model)
  return _explain(graphdef, state, jnp.asarray(input_ids, jnp.int32), jnp.asarray(segment_ids, jnp.int32),
                  max_len=max_len, start_id=jnp.int32(start_id), eos_id=jnp.int32(eos_id))
