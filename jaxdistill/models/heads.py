"""Heads that turn an encoder (BERT / MiniLM / DeBERTa) into a multi-task student.

`EncoderStudent` = encoder + `ClassificationHead` (the label) + `ExplanationDecoder` (a small
Transformer decoder with cross-attention over the encoder states that generates the explanation
or rationale), the NLI study's DeBERTa + explanation-generation student. It reads the same packed
seq2seq batch as T5 (data/pipeline.py BATCH_KEYS):
  encoder_input_ids / _segment_ids / _positions   the input text, packed records
  encoder_labels      1 + class index at the first token of a label record, else 0
  decoder_*           the explanation targets (teacher-forced), same segments as the encoder
and returns {"class_logits": [B, S, C], "logits": [B, T, V], "encoder_hidden", "decoder_hidden"}.

Classification pools per record: "first" (the record's first token, as BERT's [CLS] pooler) or
"mean" (the mean over the record's tokens, as sentence-transformers; computed for every token
from the segment mask, so packed rows need no gather). The head predicts at every encoder
position; the loss reads only positions that carry a label.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdistill.models import common, stack

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class HeadsConfig:
  num_classes: int
  vocab_size: int  # the explanation decoder's vocabulary (the tokenizer's)
  hidden_size: int  # the encoder's width
  pooling: str = "first"  # first | mean
  decoder_layers: int = 2
  decoder_heads: int = 4
  decoder_mlp: int = 0  # 0: 4 x hidden
  max_target_len: int = 512  # learned decoder positions
  dropout_rate: float = 0.0
  layer_norm_eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"  # the explanation decoder's blocks, as the encoder's layers (models/stack.py)
  scan_layers: bool = False

  def __post_init__(self):
    if self.pooling not in ("first", "mean"):
      raise ValueError(f"model.heads.pooling={self.pooling!r}: expected first | mean")
    if self.hidden_size % self.decoder_heads:
      raise ValueError(f"model.heads.decoder_heads={self.decoder_heads} does not divide the encoder "
                       f"width {self.hidden_size}")
    object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
    object.__setattr__(self, "param_dtype", jnp.dtype(self.param_dtype))
    stack.check_remat(self.remat)


def segment_mean(hidden: Array, segment_ids: Array) -> Array:
  """For every token, the mean of its record's hidden states ([B, L, D] float32)."""
  same = common.segment_mask(segment_ids, segment_ids)[:, 0].astype(jnp.float32)  # [B, L, L]
  total = jnp.einsum("bqk,bkd->bqd", same, hidden.astype(jnp.float32))
  return total / jnp.maximum(same.sum(-1, keepdims=True), 1.0)


class ClassificationHead(nnx.Module):
  """pool -> dense + tanh -> dropout -> classes (BERT's pooler + classifier)."""

  def __init__(self, config: HeadsConfig, *, rngs: nnx.Rngs):
    d, c, pd = config.hidden_size, config.num_classes, config.param_dtype
    self.pooling, self.dtype = config.pooling, config.dtype
    self.dense = common.param(rngs, common.normal(d ** -0.5), (d, d), ("embed", "mlp"), pd)
    self.dense_bias = common.param(rngs, nnx.initializers.zeros, (d,), ("mlp",), pd)
    self.out = common.param(rngs, common.normal(d ** -0.5), (d, c), ("mlp", "classes"), pd)
    self.out_bias = common.param(rngs, nnx.initializers.zeros, (c,), ("classes",), pd)
    self.dropout = nnx.Dropout(config.dropout_rate)

  def __call__(self, hidden: Array, segment_ids: Array, rngs: nnx.Rngs | None = None) -> Array:
    """hidden [B, L, D] -> float32 class logits [B, L, C] (valid at each record's first token)."""
    pooled = hidden if self.pooling == "first" else segment_mean(hidden, segment_ids).astype(self.dtype)
    h = jnp.tanh(pooled @ self.dense[...].astype(self.dtype) + self.dense_bias[...].astype(self.dtype))
    h = self.dropout(h, deterministic=rngs is None, rngs=rngs)
    return jnp.einsum("bld,dc->blc", h, self.out[...].astype(self.dtype),
                      preferred_element_type=jnp.float32) + self.out_bias[...].astype(jnp.float32)


class _Attention(nnx.Module):
  """Scaled multi-head attention with fused q / kv projections (pre-LN decoder block)."""

  def __init__(self, d: int, heads: int, dtype, pd, *, rngs: nnx.Rngs):
    self.heads, self.dtype = heads, dtype
    self.q = common.param(rngs, common.normal(d ** -0.5), (d, d), ("embed", "heads"), pd)
    self.kv = common.param(rngs, common.normal(d ** -0.5), (d, 2 * d), ("embed", "heads"), pd)
    self.o = common.param(rngs, common.normal(d ** -0.5), (d, d), ("heads", "embed"), pd)

  def __call__(self, x: Array, context: Array, mask: Array) -> Array:
    b, q_len, d = x.shape
    h = self.heads
    q = (x @ self.q[...].astype(self.dtype)).reshape(b, q_len, h, d // h)
    k, v = jnp.split(context @ self.kv[...].astype(self.dtype), 2, axis=-1)
    k = k.reshape(b, -1, h, d // h)
    v = v.reshape(b, -1, h, d // h)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * (d // h) ** -0.5
    probs = jax.nn.softmax(jnp.where(mask, scores, common.NEG), axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v).reshape(b, q_len, d)
    return out @ self.o[...].astype(self.dtype)


class _DecoderBlock(nnx.Module):

  def __init__(self, config: HeadsConfig, *, rngs: nnx.Rngs):
    d, pd, dt = config.hidden_size, config.param_dtype, config.dtype
    mlp = config.decoder_mlp or 4 * d

    def norm():
      return common.LayerNorm(d, config.layer_norm_eps, dt, pd, rngs=rngs)

    self.self_norm, self.cross_norm, self.mlp_norm = norm(), norm(), norm()
    self.self_attn = _Attention(d, config.decoder_heads, dt, pd, rngs=rngs)
    self.cross_attn = _Attention(d, config.decoder_heads, dt, pd, rngs=rngs)
    self.wi = common.param(rngs, common.normal(d ** -0.5), (d, mlp), ("embed", "mlp"), pd)
    self.wo = common.param(rngs, common.normal(mlp ** -0.5), (mlp, d), ("mlp", "embed"), pd)
    self.dtype = dt
    self.dropout = nnx.Dropout(config.dropout_rate)

  def __call__(self, x, encoded, self_mask, cross_mask, rngs):
    det = rngs is None
    h = self.self_norm(x)
    x = x + self.dropout(self.self_attn(h, h, self_mask), deterministic=det, rngs=rngs)
    x = x + self.dropout(self.cross_attn(self.cross_norm(x), encoded, cross_mask), deterministic=det, rngs=rngs)
    h = jax.nn.gelu(self.mlp_norm(x) @ self.wi[...].astype(self.dtype))
    return x + self.dropout(h @ self.wo[...].astype(self.dtype), deterministic=det, rngs=rngs)


class ExplanationDecoder(nnx.Module):
  """A small pre-LN Transformer decoder over the encoder states, with its own token and
  position embeddings and a tied output layer."""

  def __init__(self, config: HeadsConfig, *, rngs: nnx.Rngs):
    d, pd = config.hidden_size, config.param_dtype
    self.config = config
    self.embed = common.param(rngs, common.normal(1.0), (config.vocab_size, d), ("vocab", "embed"), pd)
    self.positions = common.param(rngs, common.normal(0.02), (config.max_target_len, d), ("length", "embed"), pd)
    self.blocks = stack.build(lambda: _DecoderBlock(config, rngs=rngs), config.decoder_layers,
                              scan=config.scan_layers)
    self.final_norm = common.LayerNorm(d, config.layer_norm_eps, config.dtype, pd, rngs=rngs)

  def __call__(self, input_ids: Array, segment_ids: Array, positions: Array, encoded: Array,
               encoder_segment_ids: Array, rngs: nnx.Rngs | None = None) -> tuple[Array, Array]:
    """-> (float32 logits [B, T, V], hidden [B, T, D])."""
    hidden = self.hidden(input_ids, segment_ids, positions, encoded, encoder_segment_ids, rngs)
    return self.logits(hidden), hidden

  def hidden(self, input_ids: Array, segment_ids: Array, positions: Array, encoded: Array,
             encoder_segment_ids: Array, rngs: nnx.Rngs | None = None) -> Array:
    """The final-norm hidden states [B, T, D]."""
    dt = self.config.dtype
    x = jnp.take(self.embed[...], input_ids, axis=0).astype(dt)
    x = x + jnp.take(self.positions[...], jnp.minimum(positions, self.config.max_target_len - 1), axis=0).astype(dt)
    self_mask = common.segment_mask(segment_ids, segment_ids, causal=True)
    cross_mask = common.segment_mask(segment_ids, encoder_segment_ids)
    encoded = encoded.astype(dt)
    x, _ = stack.run(self.blocks, lambda block, x, _, rngs: (block(x, encoded, self_mask, cross_mask, rngs), None),
                     x, remat=self.config.remat, rngs=rngs)
    return self.final_norm(x)

  def logits(self, hidden: Array) -> Array:
    """float32 logits [B, T, V] of hidden states [B, T, D] through the tied output layer."""
    dt = self.config.dtype
    # d**-0.5 keeps the tied output's logits at unit scale for the unit-variance embedding init.
    logits = jnp.einsum("btd,vd->btv", hidden * (self.config.hidden_size ** -0.5),
                        self.embed[...].astype(dt), preferred_element_type=jnp.float32)
    return common.constrain_logits(logits)


class EncoderStudent(nnx.Module):
  """encoder (a `bert` / `deberta` model) + classification head + explanation decoder."""

  def __init__(self, encoder: nnx.Module, config: HeadsConfig, *, rngs: nnx.Rngs):
    self.encoder = encoder
    self.config = config
    self.classifier = ClassificationHead(config, rngs=rngs)
    self.explainer = ExplanationDecoder(config, rngs=rngs)

  def encode(self, batch: Mapping[str, Array], rngs: nnx.Rngs | None = None) -> Array:
    return self.encoder(batch["encoder_input_ids"], batch["encoder_segment_ids"],
                        batch.get("encoder_positions"), rngs=rngs)

  def __call__(self, batch: Mapping[str, Array], *, rngs: nnx.Rngs | None = None) -> dict[str, Array]:
    encoded = self.encode(batch, rngs)
    out = {"encoder_hidden": encoded,
           "class_logits": self.classifier(encoded, batch["encoder_segment_ids"], rngs)}
    if "decoder_input_ids" in batch:
      out["logits"], out["decoder_hidden"] = self.explainer(
          batch["decoder_input_ids"], batch["decoder_segment_ids"], batch["decoder_positions"],
          encoded, batch["encoder_segment_ids"], rngs)
    return out

  def classify(self, input_ids: Array, segment_ids: Array) -> Array:
    """Class logits of unpacked rows (one record each, starting at index 0): [B, C]."""
    encoded = self.encoder(input_ids, segment_ids, None)
    return self.classifier(encoded, segment_ids)[:, 0]
