"""T5 v1.1 / Flan-T5 encoder-decoder in Flax NNX.

One file per model family: the architecture, presets, the KV-cache step API used by
`jaxdistill.models.decode`, and the mapping to and from Hugging Face PyTorch
`T5ForConditionalGeneration` weights (checked by golden-logit tests in tests/test_t5.py).

Architecture notes (all as in HF / t5x, so pretrained checkpoints load unchanged):
- RMSNorm without mean subtraction or bias, computed in float32.
- No 1/sqrt(d_kv) attention scaling (it is folded into the initialisation).
- Bucketed relative position bias, owned by each stack (encoder: bidirectional, decoder:
  unidirectional) and shared by all its layers. It is computed from per-token *positions*
  (relative position = key_pos - query_pos), so packed rows whose positions restart at 0
  behave exactly like separate rows.
- Gated-GELU feed-forward (tanh approximation, "gelu_new") for v1.1; "relu" (original T5)
  and other `[gated-]act` forms are accepted for HF compatibility.
- Untied LM head by default; when tied, the decoder output is scaled by d_model**-0.5.

Masks come from segment ids (0 = padding, 1.. = packed example index): encoder self-attn
attends where segments are equal and nonzero, decoder self-attn is additionally causal
(by index), cross-attn attends where decoder segment == encoder segment. Masking uses
`where(mask, scores, finfo.min)`, so all-padding query rows give a uniform softmax, never NaN.

Parameter layout and logical axes (every `nnx.Param` carries them as `out_sharding` metadata
set through `nnx.with_partitioning`; `nnx.get_partition_spec(nnx.state(model))` reads them):
    shared (token embedding)   [vocab, d_model]           ("vocab", "embed")
    lm_head                    [d_model, vocab]           ("embed", "vocab")
    attention q / k / v        [d_model, heads, d_kv]     ("embed", "heads", "kv")
    attention o                [heads, d_kv, d_model]     ("heads", "kv", "embed")
    ffn wi_0 / wi_1 (or wi)    [d_model, d_ff]            ("embed", "mlp")
    ffn wo                     [d_ff, d_model]            ("mlp", "embed")
    RMSNorm scale              [d_model]                  ("embed",)
    relative position bias     [num_buckets, heads]       ("relpos_buckets", "heads")
Heads are a separate axis so tensor parallelism shards "heads" (and "mlp"), FSDP shards "embed".
`config.scan_layers` stacks each stack's layers (their parameters get a leading "layers" axis, the
decoding cache's arrays too) and runs them with jax.lax.scan; `config.remat` rematerialises each layer
in the backward pass (models/stack.py). Neither changes the HF layout nor the outputs.

Eager sharding: flax shards a Variable at creation when `nnx.using_eager_sharding()` is on,
which needs a mesh (and logical-axis rules for these names). We only request it when a mesh
is active (`jax.set_mesh`), so building the model without a mesh (tests, CPU demo) just
records the names; with a mesh, create it under `nnx.logical_axis_rules(rules)`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdistill.models import common, hf, stack

Array = jax.Array
DType = Any


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Shapes and numerics of a T5 model. Frozen so it can be a static jit argument."""

  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 1024
  num_heads: int = 6
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-6
  tie_word_embeddings: bool = False
  dtype: DType = jnp.float32  # activations; softmax / norms / logits accumulate in float32
  param_dtype: DType = jnp.float32
  # HF's `feed_forward_proj`: "gated-gelu" (v1.1 / Flan), "relu" (original T5), "gated-silu", ...
  feed_forward_proj: str = "gated-gelu"
  remat: str = "none"  # per-layer rematerialisation: none | full | dots (models/stack.py)
  scan_layers: bool = False  # each stack's layers stacked and run by jax.lax.scan (models/stack.py)

  def __post_init__(self):
    # Accept strings ("bfloat16") from ml_collections configs / the command line.
    object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
    object.__setattr__(self, "param_dtype", jnp.dtype(self.param_dtype))
    _activation(self.feed_forward_proj)  # validate early
    stack.check_remat(self.remat)


PRESETS: dict[str, dict[str, Any]] = {
    # Shapes only; vocab_size comes from the tokenizer (override it).
    "t5-tiny": dict(d_model=64, d_kv=16, num_heads=4, d_ff=128,
                    num_encoder_layers=2, num_decoder_layers=2),
    "t5-mini": dict(d_model=128, d_kv=32, num_heads=4, d_ff=256,
                    num_encoder_layers=2, num_decoder_layers=2),
    # google/t5-v1_1-* and google/flan-t5-* shapes.
    "t5-small": dict(d_model=512, d_kv=64, num_heads=6, d_ff=1024,
                     num_encoder_layers=8, num_decoder_layers=8),
    "t5-base": dict(d_model=768, d_kv=64, num_heads=12, d_ff=2048,
                    num_encoder_layers=12, num_decoder_layers=12),
    "t5-large": dict(d_model=1024, d_kv=64, num_heads=16, d_ff=2816,
                     num_encoder_layers=24, num_decoder_layers=24),
}

# The family's description for the registry (models/families.py documents these names).
KIND = "seq2seq"
MODEL_TYPES = ("t5",)
DROPOUT_FIELDS = ("dropout_rate",)
STUDENT_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "t5-tiny": ("t5-tiny", {}),
    "t5-mini": ("t5-mini", {}),
    "t5-small": ("t5-small", {}),
    "t5-base": ("t5-base", {}),
    "t5-large": ("t5-large", {}),
    "flan-t5-base": ("t5-base", {}),  # google/flan-t5-base has the t5-v1_1-base shape
}


def get_config(preset: str, **overrides: Any) -> T5Config:
  """Returns the preset's T5Config with `overrides` (e.g. vocab_size, dtype) applied."""
  if preset not in PRESETS:
    raise ValueError(f"unknown T5 preset {preset!r}; known: {sorted(PRESETS)}")
  fields = {f.name for f in dataclasses.fields(T5Config)}
  unknown = set(overrides) - fields
  if unknown:
    raise ValueError(f"unknown T5Config fields: {sorted(unknown)}")
  return T5Config(**{**PRESETS[preset], **overrides})


def _activation(feed_forward_proj: str) -> tuple[Any, bool]:
  """Maps HF's `feed_forward_proj` to (activation, is_gated), with HF's gelu quirk."""
  parts = feed_forward_proj.split("-")
  gated = len(parts) == 2 and parts[0] == "gated"
  if len(parts) > 2 or (len(parts) == 2 and not gated):
    raise ValueError(f"bad feed_forward_proj {feed_forward_proj!r}")
  name = parts[-1]
  acts = {
      "relu": jax.nn.relu,
      # HF maps "gated-gelu" to gelu_new (tanh approximation) but plain "gelu" to exact gelu.
      "gelu": (lambda x: jax.nn.gelu(x, approximate=gated)),
      "gelu_new": (lambda x: jax.nn.gelu(x, approximate=True)),
      "silu": jax.nn.silu,
  }
  if name not in acts:
    raise ValueError(f"unsupported activation {name!r} in {feed_forward_proj!r}")
  return acts[name], gated


# --------------------------------------------------------------------------- layers


class RMSNorm(nnx.Module):
  """T5 LayerNorm: scale only, no mean subtraction, float32 statistics."""

  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    self.eps = config.layer_norm_epsilon
    self.dtype = config.dtype
    self.scale = common.param(rngs, nnx.initializers.ones, (config.d_model,), ("embed",),
                        config.param_dtype)

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = (x32 * jax.lax.rsqrt(var + self.eps)).astype(self.dtype)
    return y * self.scale[...].astype(self.dtype)


def dot_product_attention(q: Array, k: Array, v: Array, mask: Array, bias: Array | None,
                          dropout: nnx.Dropout, rngs: nnx.Rngs | None) -> Array:
  """Unscaled T5 attention. q [B,Q,H,D], k/v [B,H,K,D] (head-major: the KV cache keeps this
  layout, so decoding never transposes it), mask bool ~[B,1,Q,K], bias ~[B,H,Q,K]."""
  scores = jnp.einsum("bqhd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
  if bias is not None:
    scores = scores + bias
  scores = jnp.where(mask, scores, common.NEG)
  probs = jax.nn.softmax(scores, axis=-1)
  probs = dropout(probs, deterministic=rngs is None, rngs=rngs)
  return jnp.einsum("bhqk,bhkd->bqhd", probs.astype(v.dtype), v)


class Attention(nnx.Module):
  """Multi-head attention projections; the score computation is `dot_product_attention`.

  Split into `queries` / `keys_values` / `output` so full-sequence and one-step (KV cache)
  paths share the same parameters and code.
  """

  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    d, h, kv = config.d_model, config.num_heads, config.d_kv
    pd = config.param_dtype
    self.dtype = config.dtype
    # HF / Mesh-TF initialisation: the missing 1/sqrt(d_kv) scaling lives in q's init.
    self.q = common.param(rngs, common.normal((d * kv) ** -0.5), (d, h, kv), ("embed", "heads", "kv"), pd)
    self.k = common.param(rngs, common.normal(d ** -0.5), (d, h, kv), ("embed", "heads", "kv"), pd)
    self.v = common.param(rngs, common.normal(d ** -0.5), (d, h, kv), ("embed", "heads", "kv"), pd)
    self.o = common.param(rngs, common.normal((h * kv) ** -0.5), (h, kv, d), ("heads", "kv", "embed"), pd)
    self.dropout = nnx.Dropout(config.dropout_rate)

  # Projections are plain 2-D matmuls on flattened views (free reshapes of row-major arrays):
  # XLA:CPU differentiates a 3-D-kernel einsum with extra transposes (~1.3x slower backward).
  def _proj(self, x: Array, kernel: nnx.Param) -> Array:
    d, h, k = kernel.shape
    return (x @ kernel[...].astype(self.dtype).reshape(d, h * k)).reshape(*x.shape[:-1], h, k)

  def queries(self, x: Array) -> Array:
    return self._proj(x, self.q)

  def keys_values(self, x: Array) -> tuple[Array, Array]:
    """Keys and values of x [B,L,D], head-major [B,H,L,Dk]."""
    return self._proj(x, self.k).swapaxes(1, 2), self._proj(x, self.v).swapaxes(1, 2)

  def output(self, a: Array) -> Array:
    h, k, d = self.o.shape
    return a.reshape(*a.shape[:-2], h * k) @ self.o[...].astype(self.dtype).reshape(h * k, d)

  def __call__(self, x: Array, kv_input: Array, mask: Array, bias: Array | None,
               rngs: nnx.Rngs | None = None) -> Array:
    k, v = self.keys_values(kv_input)
    a = dot_product_attention(self.queries(x), k, v, mask, bias, self.dropout, rngs)
    return self.output(a)


class FeedForward(nnx.Module):
  """T5 dense block: act(x wi_0) * (x wi_1) -> wo (gated) or act(x wi) -> wo."""

  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    d, f, pd = config.d_model, config.d_ff, config.param_dtype
    self.dtype = config.dtype
    # Keep the (hashable) name, not a closure, so equal configs give equal graphdefs.
    self.feed_forward_proj = config.feed_forward_proj
    self.gated = _activation(config.feed_forward_proj)[1]
    if self.gated:
      self.wi_0 = common.param(rngs, common.normal(d ** -0.5), (d, f), ("embed", "mlp"), pd)
      self.wi_1 = common.param(rngs, common.normal(d ** -0.5), (d, f), ("embed", "mlp"), pd)
    else:
      self.wi = common.param(rngs, common.normal(d ** -0.5), (d, f), ("embed", "mlp"), pd)
    self.wo = common.param(rngs, common.normal(f ** -0.5), (f, d), ("mlp", "embed"), pd)
    self.dropout = nnx.Dropout(config.dropout_rate)

  def __call__(self, x: Array, rngs: nnx.Rngs | None = None) -> Array:
    act = _activation(self.feed_forward_proj)[0]

    def dense(kernel):
      return x @ kernel[...].astype(self.dtype)

    if self.gated:
      h = act(dense(self.wi_0)) * dense(self.wi_1)
    else:
      h = act(dense(self.wi))
    h = self.dropout(h, deterministic=rngs is None, rngs=rngs)
    return h @ self.wo[...].astype(self.dtype)


def relative_position_buckets(relative_position: np.ndarray, *, bidirectional: bool,
                              num_buckets: int, max_distance: int) -> np.ndarray:
  """Mesh-TF / HF bucketing of (key_pos - query_pos), in numpy float32 like HF's torch code."""
  rel = np.asarray(relative_position, dtype=np.int64)
  buckets = np.zeros_like(rel)
  n = num_buckets
  if bidirectional:
    n //= 2
    buckets += (rel > 0).astype(np.int64) * n
    rel = np.abs(rel)
  else:
    rel = -np.minimum(rel, 0)
  max_exact = n // 2
  is_small = rel < max_exact
  ratio = np.maximum(rel, 1).astype(np.float32) / np.float32(max_exact)
  large = max_exact + (np.log(ratio) / np.float32(math.log(max_distance / max_exact))
                       * np.float32(n - max_exact)).astype(np.int64)
  large = np.minimum(large, n - 1)
  return (buckets + np.where(is_small, rel, large)).astype(np.int32)


class RelativePositionBias(nnx.Module):
  """Per-stack bucketed relative position bias, computed once and shared by all layers."""

  def __init__(self, config: T5Config, *, bidirectional: bool, rngs: nnx.Rngs):
    self.bidirectional = bidirectional
    self.max_distance = config.relative_attention_max_distance
    self.num_buckets = config.relative_attention_num_buckets
    self.embedding = common.param(rngs, common.normal(config.d_model ** -0.5),
                            (self.num_buckets, config.num_heads),
                            ("relpos_buckets", "heads"), config.param_dtype)

  def __call__(self, query_positions: Array, key_positions: Array) -> Array:
    """positions [B|1, Q] and [B|1, K] -> float32 bias [B|1, H, Q, K]."""
    md = self.max_distance
    # Buckets saturate beyond +-max_distance, so a lookup table over [-md, md] is exact.
    table = jnp.asarray(relative_position_buckets(
        np.arange(-md, md + 1), bidirectional=self.bidirectional,
        num_buckets=self.num_buckets, max_distance=md))
    rel = key_positions[:, None, :] - query_positions[:, :, None]
    buckets = table[jnp.clip(rel, -md, md) + md]  # [B, Q, K]
    values = jnp.take(self.embedding[...].astype(jnp.float32), buckets, axis=0)  # [B,Q,K,H]
    return jnp.transpose(values, (0, 3, 1, 2))


class EncoderLayer(nnx.Module):

  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    self.self_attn_norm = RMSNorm(config, rngs=rngs)
    self.self_attn = Attention(config, rngs=rngs)
    self.ff_norm = RMSNorm(config, rngs=rngs)
    self.ff = FeedForward(config, rngs=rngs)
    self.dropout = nnx.Dropout(config.dropout_rate)

  def __call__(self, x: Array, mask: Array, bias: Array, rngs: nnx.Rngs | None) -> Array:
    det = rngs is None
    h = self.self_attn_norm(x)
    x = x + self.dropout(self.self_attn(h, h, mask, bias, rngs), deterministic=det, rngs=rngs)
    x = x + self.dropout(self.ff(self.ff_norm(x), rngs), deterministic=det, rngs=rngs)
    return x


class DecoderLayer(nnx.Module):

  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    self.self_attn_norm = RMSNorm(config, rngs=rngs)
    self.self_attn = Attention(config, rngs=rngs)
    self.cross_attn_norm = RMSNorm(config, rngs=rngs)
    self.cross_attn = Attention(config, rngs=rngs)
    self.ff_norm = RMSNorm(config, rngs=rngs)
    self.ff = FeedForward(config, rngs=rngs)
    self.dropout = nnx.Dropout(config.dropout_rate)

  def _cross_and_ff(self, x, cross_attend, rngs):
    det = rngs is None
    x = x + self.dropout(cross_attend(self.cross_attn_norm(x)), deterministic=det, rngs=rngs)
    x = x + self.dropout(self.ff(self.ff_norm(x), rngs), deterministic=det, rngs=rngs)
    return x

  def __call__(self, x: Array, encoded: Array, self_mask: Array, self_bias: Array,
               cross_mask: Array, rngs: nnx.Rngs | None) -> Array:
    h = self.self_attn_norm(x)
    x = x + self.dropout(self.self_attn(h, h, self_mask, self_bias, rngs),
                         deterministic=rngs is None, rngs=rngs)
    return self._cross_and_ff(
        x, lambda h: self.cross_attn(h, encoded, cross_mask, None, rngs), rngs)

  def step(self, x: Array, cache: dict[str, Array], position: Array, self_mask: Array,
           self_bias: Array, cross_mask: Array) -> tuple[Array, dict[str, Array]]:
    """One decoding step (x [B,1,D]) writing this step's K/V into the cache at `position`."""
    h = self.self_attn_norm(x)
    k, v = self.self_attn.keys_values(h)
    keys = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype),
                                               position, axis=2)
    values = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype),
                                                 position, axis=2)
    a = dot_product_attention(self.self_attn.queries(h), keys, values, self_mask, self_bias,
                              self.self_attn.dropout, None)
    x = x + self.self_attn.output(a)

    def cross_attend(h):
      a = dot_product_attention(self.cross_attn.queries(h), cache["cross_k"],
                                cache["cross_v"], cross_mask, None,
                                self.cross_attn.dropout, None)
      return self.cross_attn.output(a)

    x = self._cross_and_ff(x, cross_attend, None)
    return x, {**cache, "k": keys, "v": values}


class Encoder(nnx.Module):

  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    self.relative_bias = RelativePositionBias(config, bidirectional=True, rngs=rngs)
    self.layers = stack.build(lambda: EncoderLayer(config, rngs=rngs), config.num_encoder_layers,
                              scan=config.scan_layers)
    self.final_norm = RMSNorm(config, rngs=rngs)
    self.dropout = nnx.Dropout(config.dropout_rate)
    self.remat = config.remat

  def __call__(self, x: Array, segment_ids: Array, positions: Array,
               rngs: nnx.Rngs | None) -> Array:
    mask = common.segment_mask(segment_ids, segment_ids)
    bias = self.relative_bias(positions, positions)
    x, _ = stack.run(self.layers, lambda layer, x, _, rngs: (layer(x, mask, bias, rngs), None), x,
                     remat=self.remat, rngs=rngs)
    return self.dropout(self.final_norm(x), deterministic=rngs is None, rngs=rngs)


class Decoder(nnx.Module):

  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    self.relative_bias = RelativePositionBias(config, bidirectional=False, rngs=rngs)
    self.layers = stack.build(lambda: DecoderLayer(config, rngs=rngs), config.num_decoder_layers,
                              scan=config.scan_layers)
    self.final_norm = RMSNorm(config, rngs=rngs)
    self.dropout = nnx.Dropout(config.dropout_rate)


# --------------------------------------------------------------------------- model


class T5(nnx.Module):
  """T5 encoder-decoder. See the module docstring for layout, masks and sharding names."""

  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    self.config = config
    d, vocab, pd = config.d_model, config.vocab_size, config.param_dtype
    self.shared = common.param(rngs, common.normal(1.0), (vocab, d), ("vocab", "embed"), pd)
    self.encoder = Encoder(config, rngs=rngs)
    self.decoder = Decoder(config, rngs=rngs)
    if not config.tie_word_embeddings:
      # fan-in scaled, so initial logits have unit variance without HF's tied-head rescale.
      self.lm_head = common.param(rngs, common.normal(d ** -0.5), (d, vocab), ("embed", "vocab"), pd)
    self.dropout = nnx.Dropout(config.dropout_rate)

  # ---- pieces

  def _embed(self, ids: Array, rngs: nnx.Rngs | None) -> Array:
    x = jnp.take(self.shared[...], ids, axis=0).astype(self.config.dtype)
    return self.dropout(x, deterministic=rngs is None, rngs=rngs)

  def _logits(self, hidden: Array) -> Array:
    """Final decoder hidden -> float32 logits."""
    dtype = self.config.dtype
    if self.config.tie_word_embeddings:
      h = hidden * jnp.asarray(self.config.d_model ** -0.5, dtype)
      return jnp.einsum("...d,vd->...v", h, self.shared[...].astype(dtype),
                        preferred_element_type=jnp.float32)
    return jnp.einsum("...d,dv->...v", hidden, self.lm_head[...].astype(dtype),
                      preferred_element_type=jnp.float32)

  def encode(self, input_ids: Array, segment_ids: Array | None = None,
             positions: Array | None = None, *, rngs: nnx.Rngs | None = None) -> Array:
    """[B, Le] token ids -> encoder output [B, Le, D] (after final norm)."""
    if segment_ids is None:
      segment_ids = (input_ids != 0).astype(jnp.int32)
    if positions is None:
      positions = common.default_positions(input_ids)
    return self.encoder(self._embed(input_ids, rngs), segment_ids, positions, rngs)

  def decode(self, decoder_input_ids: Array, encoded: Array, encoder_segment_ids: Array,
             decoder_segment_ids: Array | None = None, decoder_positions: Array | None = None,
             *, rngs: nnx.Rngs | None = None) -> dict[str, Array]:
    """Teacher-forced decoder. Returns logits [B,Ld,V] (float32) and hidden [B,Ld,D].

    `decoder_segment_ids=None` means every position is valid (segment 1): the decoder input
    starts with the pad id 0, so it cannot be derived from the ids; causal masking keeps
    valid positions independent of trailing padding anyway.
    """
    if decoder_segment_ids is None:
      decoder_segment_ids = jnp.ones(decoder_input_ids.shape, jnp.int32)
    if decoder_positions is None:
      decoder_positions = common.default_positions(decoder_input_ids)
    dec = self.decoder
    length = decoder_input_ids.shape[-1]
    causal = jnp.tril(jnp.ones((length, length), bool))
    self_mask = common.segment_mask(decoder_segment_ids, decoder_segment_ids) & causal
    self_bias = dec.relative_bias(decoder_positions, decoder_positions)
    cross_mask = common.segment_mask(decoder_segment_ids, encoder_segment_ids)
    x = self._embed(decoder_input_ids, rngs)

    def layer_fn(layer, x, _, rngs):
      return layer(x, encoded, self_mask, self_bias, cross_mask, rngs), None

    x, _ = stack.run(dec.layers, layer_fn, x, remat=self.config.remat, rngs=rngs)
    hidden = dec.final_norm(x)
    logits = common.constrain_logits(self._logits(dec.dropout(hidden, deterministic=rngs is None, rngs=rngs)))
    return dict(logits=logits, hidden=hidden)

  def __call__(self, batch: Mapping[str, Array], *,
               rngs: nnx.Rngs | None = None) -> dict[str, Array]:
    """Forward on a Batch dict (INTERFACES.md). `rngs=None` disables dropout.

    Missing segment ids: encoder ones derive from `encoder_input_ids != 0`, decoder ones from
    `decoder_target_ids != 0` when targets are present (else all valid).
    """
    enc_ids = batch["encoder_input_ids"]
    enc_seg = batch.get("encoder_segment_ids")
    if enc_seg is None:
      enc_seg = (enc_ids != 0).astype(jnp.int32)
    dec_seg = batch.get("decoder_segment_ids")
    if dec_seg is None and batch.get("decoder_target_ids") is not None:
      dec_seg = (batch["decoder_target_ids"] != 0).astype(jnp.int32)
    encoded = self.encode(enc_ids, enc_seg, batch.get("encoder_positions"), rngs=rngs)
    out = self.decode(batch["decoder_input_ids"], encoded, enc_seg, dec_seg,
                      batch.get("decoder_positions"), rngs=rngs)
    return dict(logits=out["logits"], decoder_hidden=out["hidden"], encoder_hidden=encoded)

  # ---- KV-cache step API (used by jaxdistill.models.decode)

  def init_cache(self, encoded: Array, encoder_segment_ids: Array,
                 max_len: int) -> dict[str, Any]:
    """Preallocated decoding state for `decode_step`.

    Returns a pytree: {"layers": [per decoder layer {"k","v": [B,H,max_len,Dk] zeros,
    "cross_k","cross_v": [B,H,Le,Dk] projected once from `encoded`}] (scan_layers: one such dict
    whose arrays have a leading layer axis), "encoder_segment_ids": [B,Le]}. Each row is one
    example (segment 1); the decoder attends to the encoder tokens whose segment id is nonzero.
    """
    cfg = self.config
    batch = encoded.shape[0]
    zeros = jnp.zeros((batch, cfg.num_heads, max_len, cfg.d_kv), cfg.dtype)
    empty = stack.per_layer(self.decoder.layers, lambda: dict(k=zeros, v=zeros))
    cross = stack.each(self.decoder.layers,
                       lambda layer: layer.cross_attn.keys_values(encoded.astype(cfg.dtype)))
    if isinstance(self.decoder.layers, stack.Stacked):
      layers = dict(empty, cross_k=cross[0], cross_v=cross[1])
    else:
      layers = [dict(e, cross_k=ck, cross_v=cv) for e, (ck, cv) in zip(empty, cross)]
    return dict(layers=layers, encoder_segment_ids=encoder_segment_ids.astype(jnp.int32))

  def decode_step(self, token_ids: Array, position: Array,
                  cache: dict[str, Any]) -> tuple[Array, dict[str, Any]]:
    """Decodes one token per row: token_ids [B] at scalar `position` -> (logits [B,V] f32, cache).

    Self-attention sees cached keys at indices <= position (relative bias from
    key_pos - position); no dropout.
    """
    dec = self.decoder
    layers = cache["layers"]  # a dict of stacked arrays (scan_layers) or one dict per layer
    max_len = (layers if isinstance(layers, dict) else layers[0])["k"].shape[-2]
    position = jnp.asarray(position, jnp.int32)
    key_pos = jnp.arange(max_len, dtype=jnp.int32)[None]
    self_mask = (key_pos <= position)[:, None, None, :]  # [1,1,1,max_len]
    self_bias = dec.relative_bias(jnp.reshape(position, (1, 1)), key_pos)  # [1,H,1,max_len]
    cross_mask = (cache["encoder_segment_ids"] != 0)[:, None, None, :]  # [B,1,1,Le]
    x = self._embed(token_ids[:, None], None)

    def layer_fn(layer, x, layer_cache, _):
      return layer.step(x, layer_cache, position, self_mask, self_bias, cross_mask)

    x, new_layers = stack.run(dec.layers, layer_fn, x, cache["layers"])
    logits = self._logits(dec.final_norm(x))[:, 0]
    return logits, {**cache, "layers": new_layers}


def build(config: T5Config, rngs: nnx.Rngs) -> T5:
  return T5(config, rngs=rngs)


# --------------------------------------------------------------------------- HF mapping



def config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> T5Config:
  """HF `config.json` dict (or `T5Config.to_dict()`) -> T5Config; `overrides` e.g. dtype.

  transformers v5 forces `tie_word_embeddings=True` in memory and keeps the v1.1 "untied,
  unscaled" fact in `scale_decoder_outputs`; a raw config.json carries
  `tie_word_embeddings` (absent = True, the original T5).
  """
  c = dict(hf_config)
  if "scale_decoder_outputs" in c:
    tied = bool(c["scale_decoder_outputs"])
  else:
    tied = bool(c.get("tie_word_embeddings", True))
  num_layers = c.get("num_layers", 6)
  dec_layers = c.get("num_decoder_layers")
  kwargs = dict(
      vocab_size=c.get("vocab_size", 32128),
      d_model=c.get("d_model", 512),
      d_kv=c.get("d_kv", 64),
      d_ff=c.get("d_ff", 2048),
      num_heads=c.get("num_heads", 8),
      num_encoder_layers=num_layers,
      num_decoder_layers=num_layers if dec_layers is None else dec_layers,
      relative_attention_num_buckets=c.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=c.get("relative_attention_max_distance", 128),
      dropout_rate=c.get("dropout_rate", 0.1),
      layer_norm_epsilon=c.get("layer_norm_epsilon", 1e-6),
      tie_word_embeddings=tied,
      feed_forward_proj=c.get("feed_forward_proj", "relu"),
  )
  kwargs.update(overrides)
  return T5Config(**kwargs)


def hf_config(config: T5Config) -> dict[str, Any]:
  """config.json for transformers' T5ForConditionalGeneration (the inverse of `config_from_hf`)."""
  return dict(
      architectures=["T5ForConditionalGeneration"], model_type="t5", vocab_size=config.vocab_size,
      d_model=config.d_model, d_kv=config.d_kv, d_ff=config.d_ff, num_heads=config.num_heads,
      num_layers=config.num_encoder_layers, num_decoder_layers=config.num_decoder_layers,
      relative_attention_num_buckets=config.relative_attention_num_buckets,
      relative_attention_max_distance=config.relative_attention_max_distance,
      dropout_rate=config.dropout_rate, layer_norm_epsilon=config.layer_norm_epsilon,
      feed_forward_proj=config.feed_forward_proj, tie_word_embeddings=config.tie_word_embeddings,
      is_encoder_decoder=True, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def hf_mapping(model: T5) -> list[hf.Tensor]:
  """Every parameter of `model` with its name and layout in HF `T5ForConditionalGeneration`."""
  cfg = model.config
  h, kv, d = cfg.num_heads, cfg.d_kv, cfg.d_model
  rows: list[hf.Tensor] = []

  def attention(prefix, att):
    for n in "qkv":
      rows.append(hf.Tensor(f"{prefix}.{n}.weight", getattr(att, n),
                            lambda w: w.T.reshape(d, h, kv), lambda w: w.reshape(d, h * kv).T))
    rows.append(hf.Tensor(f"{prefix}.o.weight", att.o,
                          lambda w: w.T.reshape(h, kv, d), lambda w: w.reshape(h * kv, d).T))

  def ffn(prefix, ff):
    for n in (("wi_0", "wi_1", "wo") if ff.gated else ("wi", "wo")):
      rows.append(hf.linear(f"{prefix}.DenseReluDense.{n}.weight", getattr(ff, n)))

  rows.append(hf.Tensor("shared.weight", model.shared))
  for stack_name, stack in (("encoder", model.encoder), ("decoder", model.decoder)):
    rows.append(hf.Tensor(f"{stack_name}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                          stack.relative_bias.embedding))
    for i, layer in enumerate(stack.layers):
      p = f"{stack_name}.block.{i}.layer"
      attention(f"{p}.0.SelfAttention", layer.self_attn)
      rows.append(hf.Tensor(f"{p}.0.layer_norm.weight", layer.self_attn_norm.scale))
      ff_idx = 1
      if stack_name == "decoder":
        attention(f"{p}.1.EncDecAttention", layer.cross_attn)
        rows.append(hf.Tensor(f"{p}.1.layer_norm.weight", layer.cross_attn_norm.scale))
        ff_idx = 2
      ffn(f"{p}.{ff_idx}", layer.ff)
      rows.append(hf.Tensor(f"{p}.{ff_idx}.layer_norm.weight", layer.ff_norm.scale))
    rows.append(hf.Tensor(f"{stack_name}.final_layer_norm.weight", stack.final_norm.scale))
  if not cfg.tie_word_embeddings:
    rows.append(hf.linear("lm_head.weight", model.lm_head))
  return rows


# Tied copies of `shared.weight` HF writes (and lm_head when tied): read and dropped.
HF_IGNORED = (r"encoder\.embed_tokens\.weight", r"decoder\.embed_tokens\.weight", r"lm_head\.weight")


def hf_aliases(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Adds the tied copies HF's own state dict has, so an export mirrors `model.state_dict()`."""
  out = dict(tensors)
  for alias in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
    out[alias] = out["shared.weight"]
  out.setdefault("lm_head.weight", out["shared.weight"])
  return out
